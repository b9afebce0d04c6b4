"""errors, atomic writes, package resources: what every package stands on."""
