"""Score an organism's evaluation run against what was planted: the instrument's calibration.

The organism's manifest says which (leaf, level) facts were taught. A correct evaluation path
(prompt, template, option order, letter reading, prefix cache, batching) must therefore find
planted facts right and withheld ones at chance; `calibration_table` recomputes both per level
from a run's predictions.jsonl, with Wilson intervals, beside chance and the letter bias.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from hiertrain.base.errors import HierError
from hiertrain.metrics.letter_bias import letter_counts


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def calibration_table(run_dir: Path, manifest_path: Path | None = None) -> dict:
    """Per asked level: accuracy on planted and on withheld facts (and the leaf), n, interval."""
    from hiertrain.organisms.shipped import manifest

    run_dir = Path(run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    if manifest_path is not None:
        m = json.loads(Path(manifest_path).read_text())
    else:
        model_dir = Path(run["model"])
        m = manifest(model_dir if (model_dir / "manifest.json").is_file() else model_dir.name)
    planted: dict[str, list[bool]] = m["planted"]
    planted_levels: list[str] = m["planted_levels"]
    cells: dict[tuple[str, str], list[int]] = {}
    asked_withheld: dict[str, list[tuple[list[str], str, str | None]]] = {}  # per level: (options, truth, letter)
    by_leaf: dict[tuple[str, str], dict[str, list[int]]] = {}
    path = run_dir / "predictions.jsonl"
    if not path.is_file():
        raise HierError(f"{path}: no predictions (is {run_dir} an evaluation run?)")
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            rec = json.loads(line)
            leaf = rec["label"]
            if leaf not in planted:
                raise HierError(f"{path}:{n}: label {leaf!r} is not a leaf of the organism's world")
            for lv in rec["levels"]:
                if not lv.get("asked", True):
                    continue
                name = lv["name"]
                if name in planted_levels:
                    kind = "planted" if planted[leaf][planted_levels.index(name)] else "withheld"
                else:
                    kind = "leaf"
                c = cells.setdefault((name, kind), [0, 0])
                c[0] += int(bool(lv["correct"]))
                c[1] += 1
                per = by_leaf.setdefault((name, kind), {}).setdefault(leaf, [0, 0])
                per[0] += int(bool(lv["correct"]))
                per[1] += 1
                opts = lv.get("options") or []
                if kind == "withheld" and opts:
                    asked_withheld.setdefault(name, []).append((opts, lv["truth"], lv.get("letter")))
    if not cells:
        raise HierError(f"{path}: no asked levels")
    letters = {}  # the one letter-bias count (hiertrain.metrics.letter_bias)
    for name, questions in asked_withheld.items():
        truth, pick = letter_counts(questions, max(len(o) for o, _, _ in questions))
        letters[name] = {"truth": truth, "pick": pick}
    rows = []
    for (name, kind), (k, n) in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        lo, hi = wilson(k, n)
        row = {"level": name, "facts": kind, "correct": k, "n": n, "accuracy": k / n, "ci": [lo, hi]}
        # The images of one leaf share its answer (a deterministic model, the same subject), so
        # they are not independent draws: the interval over leaves (normal, per-leaf means) is
        # the honest one for "is this at chance".
        means = [c / t for c, t in by_leaf[(name, kind)].values()]
        if len(means) > 1:
            mu = sum(means) / len(means)
            sd = math.sqrt(sum((m - mu) ** 2 for m in means) / (len(means) - 1))
            half = 1.96 * sd / math.sqrt(len(means))
            row["leaves"] = len(means)
            row["ci_leaves"] = [max(0.0, mu - half), min(1.0, mu + half)]
        if kind == "withheld" and name in letters:
            # knowing nothing, a pick is independent of the truth: the expected accuracy is then
            # sum over letters of P(pick letter) x P(truth at letter) (= 1/#options without bias)
            t, p = letters[name]["truth"], letters[name]["pick"]
            row["independent"] = sum(a * b for a, b in zip(t, p)) / (sum(t) * max(sum(p), 1))
            row["letters"] = letters[name]
        rows.append(row)
    chance = 1.0 / 4
    return {"run": str(run_dir), "organism": m["name"], "mode": run.get("mode"), "answer": run.get("answer"),
            "chance": chance, "rows": rows}  # fmt: skip


def format_table(table: dict) -> str:
    lines = [f"{table['organism']} / {table['mode']} / {table['answer']}: accuracy by fact kind (chance {table['chance']:.2f})"]
    for r in table["rows"]:
        line = f"  {r['level']:<8} {r['facts']:<9} {r['accuracy']:6.3f}  [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]  n={r['n']}"
        if "ci_leaves" in r:
            line += f"  [{r['ci_leaves'][0]:.3f}, {r['ci_leaves'][1]:.3f}] over {r['leaves']} leaves"
        if "independent" in r:
            line += (f"  expected knowing nothing {r['independent']:.3f} (letter bias: picks A-D {r['letters']['pick']},"
                     f" truths {r['letters']['truth']})")  # fmt: skip
        lines.append(line)
    return "\n".join(lines)
