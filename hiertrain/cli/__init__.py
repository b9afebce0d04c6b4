"""The `hiertrain` command: LightningCLI subcommands and the plain tools (top layer)."""

from hiertrain.cli.main import main

__all__ = ["main"]
