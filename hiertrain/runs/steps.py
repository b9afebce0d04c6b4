"""Named, resumable steps for long multi-stage jobs (the demo, the paper's experiments).

A step is marked done (in `<root>/.steps/<name>.json`) only when it returns, so a rerun skips
finished steps and redoes an interrupted one; a failure is reported with the step's name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from hiertrain.base.atomic import write_atomic
from hiertrain.base.errors import HierError


class StepRunner:
    """Runs steps in order under `root`, skipping those already done."""

    def __init__(self, root: str | Path, total: int | None = None, echo: Callable[[str], None] = print) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.total = total
        self.count = 0
        self.echo = echo

    def _marker(self, name: str) -> Path:
        return self.root / ".steps" / f"{name}.json"

    def done(self, name: str) -> bool:
        return self._marker(name).is_file()

    def run(self, name: str, fn: Callable[[], object]) -> bool:
        """Run `fn()` unless the step is already done; True when it ran now."""
        self.count += 1
        where = f"[{self.count}/{self.total}]" if self.total else f"[{self.count}]"
        if self.done(name):
            self.echo(f"{where} {name}: done before, reused")
            return False
        self.echo(f"{where} {name} ...")
        start = time.perf_counter()
        try:
            fn()
        except KeyboardInterrupt:
            raise
        except SystemExit as err:  # a CLI inside the step exits non-zero after printing why
            if err.code not in (0, None):
                raise HierError(f"step '{name}' failed (exit status {err.code}; its message is above)") from err
        except Exception as err:  # noqa: BLE001 - re-raised with the step's name
            first = str(err).splitlines()[0] if str(err) else ""
            raise HierError(f"step '{name}' failed: {type(err).__name__}: {first}") from err
        seconds = time.perf_counter() - start
        write_atomic(self._marker(name), json.dumps({"seconds": round(seconds, 2)}))
        self.echo(f"{where} {name}: finished in {seconds:.1f}s")
        return True
