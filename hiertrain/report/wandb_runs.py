"""The report's W&B summary: which W&B run holds each evaluation's sample table.

An evaluation that logged to W&B writes `wandb.json` into its run directory (hiertrain.runs.meta
`WANDB_JSON`: project, run id, name, mode, the run's URL when online or its local folder when
offline, and the logged tables with their row counts). The report links them, so a reader goes
from a number to the samples behind it.
"""

from __future__ import annotations

import json
from typing import Any

from hiertrain.base.errors import HierError
from hiertrain.runs.meta import WANDB_JSON


def links(runs: list[Any]) -> list[dict[str, Any]]:
    """One entry per run with a `wandb.json` (sorted by run name); HierError naming a bad file."""
    out = []
    for run in sorted(runs, key=lambda r: r.name):
        path = run.path / WANDB_JSON
        if not path.is_file():
            continue
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise HierError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        out.append({"run": run.name, **{k: info.get(k) for k in ("project", "run_id", "mode", "url", "dir", "tables")}})
    return out


def markdown(entries: list[dict[str, Any]]) -> list[str]:
    """The "W&B runs" section of report.md (nothing when no run logged to W&B)."""
    if not entries:
        return []
    md = [
        "## W&B runs and sample tables",
        "",
        "| run | W&B run | mode | tables (rows) |",
        "| --- | --- | --- | --- |",
    ]
    for e in entries:
        where = f"[{e['run_id']}]({e['url']})" if e.get("url") else f"{e['run_id']} (offline: `wandb sync {e.get('dir')}`)"
        tables = ", ".join(f"`{k}` ({v})" for k, v in (e.get("tables") or {}).items()) or "–"
        md.append(f"| {e['run']} | {where} | {e.get('mode')} | {tables} |")
    md += ["", "`samples`: one row per image (thumbnail, id, each level's truth, pick and correct; the reply "
           "for `answer: generate`), the first `--wandb_log_samples` images by id.", ""]
    return md
