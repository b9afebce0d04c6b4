"""The `hiertrain` command.

`fit|validate|test|predict` are LightningCLI's (a config per experiment, composable with
repeated `--config`). The other subcommands are plain tools around that flow (data, scoring,
tiny models, LoRA merge, report, demo); each lives in `hiertrain/cli/commands/<name>.py` and
exposes `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hiertrain.cli.malloc import retain_freed_memory
from hiertrain.base.errors import HierError

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")

# name -> (module, help). Modules are imported lazily so `hiertrain score` stays fast.
TOOLS: dict[str, tuple[str, str]] = {
    "data check": ("hiertrain.cli.commands.data_check", "validate a taxonomy (and a question file)"),
    "data questions": ("hiertrain.cli.commands.data_questions", "build a question bank"),
    "data synth": ("hiertrain.cli.commands.data_synth", "write the synthetic hierarchical image set"),
    "data fetch": ("hiertrain.cli.commands.data_fetch", "download the paper's files, verified by git blob id"),
    "data prepare": ("hiertrain.cli.commands.data_prepare", "image list (image, label, split) from an official dataset download"),
    "score": ("hiertrain.cli.commands.score", "recompute every metric from a predictions file"),
    "tiny": ("hiertrain.cli.commands.tiny", "save a tiny random-init model of a real architecture"),
    "organism": ("hiertrain.cli.commands.organism", "calibration organisms: small trained VLLMs with planted facts"),
    "lora merge": ("hiertrain.cli.commands.lora_merge", "merge a LoRA adapter into its base model"),
    "compare": ("hiertrain.cli.commands.compare", "paired comparison of two runs over the same questions"),
    "report": ("hiertrain.cli.commands.report", "tables and plots comparing run directories"),
    "demo": ("hiertrain.cli.commands.demo", "the whole study on the synthetic set and tiny models"),
}


def _tool_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hiertrain",
        description="Hierarchical visual understanding of vision LLMs. "
        "Lightning subcommands: fit, validate, test, predict (see `hiertrain fit --help`).",
    )
    groups: dict[str, argparse._SubParsersAction] = {}
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in TOOLS.items():
        words = name.split()
        if len(words) == 1:
            sub = top.add_parser(words[0], help=help_text)
        else:
            if words[0] not in groups:
                grp = top.add_parser(words[0], help=f"{words[0]} tools")
                groups[words[0]] = grp.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
            sub = groups[words[0]].add_parser(words[1], help=help_text)
        sub.set_defaults(_module=module_name)
        try:
            importlib.import_module(module_name).add_arguments(sub)
        except ModuleNotFoundError as err:  # a tool not built yet must not break the others
            if err.name != module_name:
                raise
            sub.set_defaults(_missing=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a closed pipe (`hiertrain score x | head`) ends quietly."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # Python's recipe: point stdout at devnull so the interpreter's final flush is silent.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    retain_freed_memory()  # steps reuse their large host buffers instead of page-faulting them again
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        from hiertrain.cli.lightning import run_lightning_cli

        run_lightning_cli(argv)
        return 0
    args = _tool_parser().parse_args(argv)
    if getattr(args, "_missing", False):
        print(f"hiertrain: '{args._module}' is not available in this build", file=sys.stderr)
        return 2
    # Commands that run other commands (the demo) get this dispatcher instead of importing
    # this module, which would be a cycle.
    args.dispatch = main
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except HierError as err:
        print(f"hiertrain: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # unwritable folder, full disk: one line, not a traceback
        from hiertrain.base.atomic import file_error

        cause = file_error(err)
        if cause is None:
            raise
        print(f"hiertrain: {cause}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
