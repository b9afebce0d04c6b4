"""A served run's answered requests, so a resumed or repeated run resends none of them.

`<run dir>/requests.rank<R>.jsonl`: one line per answered request, appended and flushed as the
answer arrives: `{"key": <sha256 of the request body>, "response": <the server's JSON reply>}`.
The key is the SHA-256 of the body as canonical JSON (sorted keys, no spaces), so it covers the
model id, every message (image bytes included) and every sampling setting: a changed request is
a new key, never a stale answer. Every rank's file is read at start; a cut-off last line (a kill
mid-write) is dropped, so that request is simply sent again. Only answers are stored: requests
that failed are retried by the next run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hiertrain.base.errors import HierError

USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


def request_key(body: dict[str, Any]) -> str:
    """SHA-256 of the request body as canonical JSON."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class RequestCache:
    """Answered requests of one run directory, keyed by `request_key`."""

    def __init__(self, run_dir: str | Path, rank: int = 0) -> None:
        self.run_dir, self.rank = Path(run_dir), rank
        self.answers: dict[str, dict[str, Any]] = {}
        for path in sorted(self.run_dir.glob("requests.rank*.jsonl")):
            lines = path.read_text(encoding="utf-8").split("\n")
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    if number == len(lines):  # cut off by a kill: send it again
                        continue
                    raise HierError(f"{path}:{number}: not a JSON line") from None
                self.answers[entry["key"]] = entry["response"]
        if self.path.is_file():  # drop a line cut off by a kill, so appends start on a clean line
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(self.path, "rb+") as f:
                    f.truncate(data.rfind(b"\n") + 1)

    @property
    def path(self) -> Path:
        return self.run_dir / f"requests.rank{self.rank}.jsonl"

    def get(self, key: str) -> dict[str, Any] | None:
        return self.answers.get(key)

    def put(self, key: str, response: dict[str, Any]) -> None:
        """Record an answer as one flushed line."""
        self.answers[key] = response
        line = json.dumps({"key": key, "response": response}, ensure_ascii=False) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
        except OSError as err:  # full disk: one line naming the file; a cut-off line is resent next run
            from hiertrain.base.atomic import write_error

            raise write_error(self.path, err) from None

    def usage(self) -> dict[str, int]:
        """Token usage summed over every answered request of the run (as the server reported it)."""
        totals = {"requests": len(self.answers), **{name: 0 for name in USAGE_FIELDS}}
        for response in self.answers.values():
            usage = response.get("usage") or {}
            for name in USAGE_FIELDS:
                totals[name] += int(usage.get(name) or 0)
        return totals

    def served_models(self) -> list[str]:
        """Model ids the server named in its answers (e.g. `gpt-4o-2024-08-06` for `gpt-4o`)."""
        return sorted({str(r["model"]) for r in self.answers.values() if r.get("model")})
