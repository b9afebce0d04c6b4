"""stored features and probe specs (the probing data)."""
