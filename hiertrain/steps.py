"""Named, resumable steps for long multi-stage jobs (the demo, the paper's experiments).

A step writes into its own folder and is marked done only when it returns, so a rerun skips
finished steps and redoes an interrupted one; a failure is reported with the step's name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from hiertrain.errors import HierError


class StepRunner:
    """Runs steps in order under `root`, skipping those already done."""

    def __init__(self, root: str | Path, total: int | None = None, echo: Callable[[str], None] = print) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.total = total
        self.count = 0
        self.echo = echo

    def done(self, name: str) -> bool:
        return (self.root / name / ".done").is_file()

    def run(self, name: str, fn: Callable[[Path], object]) -> Path:
        """Run `fn(step_dir)` unless the step is already done; return the step's folder."""
        self.count += 1
        where = f"[{self.count}/{self.total}]" if self.total else f"[{self.count}]"
        step_dir = self.root / name
        if self.done(name):
            self.echo(f"{where} {name}: done before, reused ({step_dir})")
            return step_dir
        step_dir.mkdir(parents=True, exist_ok=True)
        self.echo(f"{where} {name} ...")
        start = time.perf_counter()
        try:
            fn(step_dir)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - re-raised with the step's name
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise HierError(f"step '{name}' failed: {type(err).__name__}: {first} (see {step_dir})") from err
        seconds = time.perf_counter() - start
        (step_dir / ".done").write_text(json.dumps({"seconds": round(seconds, 2)}))
        self.echo(f"{where} {name}: finished in {seconds:.1f}s")
        return step_dir
