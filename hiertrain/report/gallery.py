"""The failure gallery: the images behind an image run's numbers, as pictures.

The paper's question is "the model named the species but got the genus wrong": per image run
(`kind: eval`, `mode: image`, a `predictions.jsonl`) this draws a contact sheet with up to N
images of each category — the leaf right but a higher level wrong, every level right, the leaf
wrong — each tile captioned with every asked level's truth and pick (✓/✗), and a confusion
heatmap of the level with the most errors. Generic over any image run: it reads only run.json
and predictions.jsonl (never model code), so CLIP, served and open-set runs draw the same way.

Images are found by the evaluation's own rule (`hiertrain.taxonomy.images.resolve_image`) from
run.json's `image_dir` and `image_root_map` (runs written before those fields: the question
file's folder); an image that cannot be read is drawn as a named placeholder and counted
(`missing_images`), never dropped.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hiertrain.base.atomic import atomic_path  # noqa: E402
from hiertrain.taxonomy.images import BAD_IMAGE_ERRORS, open_rgb, resolve_image  # noqa: E402
from hiertrain.metrics.predictions import LevelPrediction, SamplePrediction, read_predictions  # noqa: E402

# (key, heading): the categories a reader of the paper asks for first.
CATEGORIES = (
    ("leaf_right_ancestor_wrong", "leaf right, a higher level wrong"),
    ("all_right", "every level right"),
    ("leaf_wrong", "leaf wrong"),
)
DEFAULT_PER_CATEGORY = 6
MAX_CONFUSION_CLASSES = 20  # more classes than this: the most frequent truths, the rest as "other"
NO_ANSWER = "(no answer)"
OTHER = "(other)"
_TILE_IN = 1.9  # tile width and image height, inches
_LINE_PT = 7.0  # caption font size, points


def category(sample: SamplePrediction) -> str | None:
    """The sample's category key (CATEGORIES), from its asked levels; None when nothing was asked."""
    asked = [lv for lv in sample.levels if lv.asked]
    if not asked:
        return None
    leaf = max(asked, key=lambda lv: lv.level)
    if not leaf.correct:
        return "leaf_wrong"
    return "all_right" if all(lv.correct for lv in asked) else "leaf_right_ancestor_wrong"


def pick_samples(samples: list[SamplePrediction], per_category: int) -> dict[str, list[SamplePrediction]]:
    """Up to `per_category` samples per category, in sample-id order (the same picks every run)."""
    picked: dict[str, list[SamplePrediction]] = {key: [] for key, _ in CATEGORIES}
    for sample in sorted(samples, key=lambda s: s.id):
        key = category(sample)
        if key is not None and len(picked[key]) < per_category:
            picked[key].append(sample)
    return picked


def caption_lines(sample: SamplePrediction) -> list[tuple[str, bool]]:
    """(text, correct) lines per asked level: `name: truth ✓`, or for a wrong one `name: truth ✗`
    and below it `  → pick` (two lines, so long class names fit a tile)."""
    lines = []
    for lv in sample.levels:
        if not lv.asked:
            continue
        name = lv.name or f"level{lv.level}"
        if lv.correct:
            lines.append((f"{name}: {_short(lv.truth)} ✓", True))
        else:
            lines += [(f"{name}: {_short(lv.truth)} ✗", False), (f"   → {_short(_pick(lv))}", False)]
    return lines


def _pick(lv: LevelPrediction) -> str:
    return lv.predicted if lv.predicted is not None else NO_ANSWER


def _short(text: str, width: int = 24) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def image_locator(meta: dict[str, Any], run_dir: Path):
    """`image -> Path` by the evaluation's image rule, from run.json (see the module docstring)."""
    base = meta.get("image_dir")
    if not base:
        questions = str(meta.get("questions") or "")
        base = str(Path(questions).parent) if questions and not questions.startswith("hiertrain://") else str(run_dir)
    root_map = meta.get("image_root_map") or {}
    return lambda image: resolve_image(image, base, root_map)


def _thumbnail(path: Path, side: int = 192) -> Any:
    img = open_rgb(path)
    img.thumbnail((side, side))
    return img


def contact_sheet(
    samples: dict[str, list[SamplePrediction]], locate, out: Path, name: str, title: str, counts: dict[str, int]
) -> tuple[str, int]:
    """Draw the sheet (one row per category) into `out/name`; return (name, images not readable)."""
    cols = max(1, max((len(v) for v in samples.values()), default=1))
    depth = max((len(caption_lines(s)) + 1 for v in samples.values() for s in v), default=1)  # + the id line
    caption_in = (depth + 0.6) * _LINE_PT * 1.35 / 72
    row_in = _TILE_IN + caption_in + 0.35
    fig, axes = plt.subplots(len(CATEGORIES), cols, figsize=(cols * (_TILE_IN + 0.5), len(CATEGORIES) * row_in + 0.5), squeeze=False)
    missing = 0
    for r, (key, heading) in enumerate(CATEGORIES):
        row = samples.get(key, [])
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_title(f"{heading}: {counts.get(key, 0)} images" + ("" if row else " (none)"), loc="left", fontsize=9, fontweight="bold")
            if c >= len(row):
                ax.axis("off")
                continue
            sample = row[c]
            try:
                ax.imshow(_thumbnail(locate(sample.image or "")))
            except BAD_IMAGE_ERRORS:
                missing += 1
                ax.text(0.5, 0.5, f"image not readable:\n{_short(str(sample.image), 30)}", ha="center", va="center", fontsize=6, transform=ax.transAxes)
            lines = [(f"id {sample.id}", None), *caption_lines(sample)]
            for k, (text, ok) in enumerate(lines):  # offsets in points: the same spacing under any tile shape
                ax.annotate(text, xy=(0, 0), xycoords="axes fraction", xytext=(0, -2 - k * _LINE_PT * 1.35),
                            textcoords="offset points", va="top", fontsize=_LINE_PT,
                            color="#444" if ok is None else "#1a7f37" if ok else "#cf222e")
    height = len(CATEGORIES) * row_in + 0.5
    fig.suptitle(title, fontsize=10, x=0.01, y=1 - 0.08 / height, ha="left", va="top")
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.6 / height, bottom=caption_in / height,
                        hspace=(caption_in + 0.35) / _TILE_IN, wspace=0.3)
    return _save(fig, out, name), missing


def worst_level(samples: list[SamplePrediction]) -> tuple[str, int] | None:
    """(level name, errors) of the asked level with the most wrong answers; None if none is wrong."""
    errors: Counter[str] = Counter()
    order: dict[str, int] = {}
    for s in samples:
        for lv in s.levels:
            if lv.asked:
                name = lv.name or f"level{lv.level}"
                order.setdefault(name, lv.level)
                if not lv.correct:
                    errors[name] += 1
    if not errors:
        return None
    name = max(errors, key=lambda n: (errors[n], -order[n]))  # ties: the higher (shallower) level
    return name, errors[name]


def confusion(samples: list[SamplePrediction], level: str, max_classes: int = MAX_CONFUSION_CLASSES) -> tuple[list[str], list[str], list[list[int]]]:
    """(truth classes, pick classes, counts[truth][pick]) of one level. Past `max_classes` truths the
    most frequent are kept and every other pick is `(other)`; unparsed replies are `(no answer)`."""
    pairs = [
        (lv.truth, _pick(lv))
        for s in samples
        for lv in s.levels
        if lv.asked and (lv.name or f"level{lv.level}") == level
    ]
    freq = Counter(t for t, _ in pairs)
    rows = sorted(freq, key=lambda t: (-freq[t], t))[:max_classes]
    rows.sort()
    kept = set(rows)
    cols = list(rows)
    counts_by: Counter[tuple[str, str]] = Counter()
    for truth, pick in pairs:
        if truth not in kept:
            continue
        col = pick if pick in kept else (NO_ANSWER if pick == NO_ANSWER else OTHER)
        counts_by[(truth, col)] += 1
    for extra in (OTHER, NO_ANSWER):
        if any(c == extra for _, c in counts_by):
            cols.append(extra)
    return rows, cols, [[counts_by[(t, c)] for c in cols] for t in rows]


def confusion_heatmap(samples: list[SamplePrediction], level: str, out: Path, name: str, title: str) -> str:
    """Rows = truth, columns = pick, cells = counts (annotated when the matrix is small)."""
    rows, cols, counts = confusion(samples, level)
    side_w, side_h = max(4.0, 0.32 * len(cols) + 2.5), max(3.0, 0.3 * len(rows) + 2.0)
    fig, ax = plt.subplots(figsize=(side_w, side_h))
    image = ax.imshow(counts, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(cols)), [_short(c, 18) for c in cols], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), [_short(r, 18) for r in rows], fontsize=7)
    ax.set_xlabel("pick")
    ax.set_ylabel("truth")
    if len(rows) * len(cols) <= 400:
        top = max((v for line in counts for v in line), default=0)
        for i, line in enumerate(counts):
            for j, v in enumerate(line):
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=6, color="white" if v > top / 2 else "#222")
    from matplotlib.ticker import MaxNLocator

    fig.colorbar(image, ax=ax, fraction=0.04, ticks=MaxNLocator(integer=True))
    ax.set_title(title, fontsize=9, loc="left")
    return _save(fig, out, name)


def _save(fig, out: Path, name: str) -> str:
    with atomic_path(out / name) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight", pad_inches=0.15)  # rotated ticks, captions kept
    plt.close(fig)
    return name


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def draw_run(run_dir: Path, meta: dict[str, Any], run_name: str, out: Path, per_category: int = DEFAULT_PER_CATEGORY) -> dict[str, Any] | None:
    """The gallery and heatmap of one image run: a dict for report.json (PNG names, counts), or
    None when the run is not an image evaluation with predictions."""
    preds = run_dir / "predictions.jsonl"
    if meta.get("kind", "eval") != "eval" or meta.get("mode", "image") != "image" or not preds.is_file():
        return None
    samples = read_predictions(preds).samples
    counts = Counter(k for k in (category(s) for s in samples) if k is not None)
    slug = _slug(run_name)
    sheet, missing = contact_sheet(
        pick_samples(samples, per_category), image_locator(meta, run_dir), out, f"gallery_{slug}.png",
        f"{run_name}: {len(samples)} images (up to {per_category} per category, in id order)", dict(counts),
    )
    entry: dict[str, Any] = {
        "run": run_name,
        "samples": len(samples),
        "counts": {key: counts.get(key, 0) for key, _ in CATEGORIES},
        "gallery": sheet,
        "missing_images": missing,
        "confusion": None,
        "confusion_level": None,
        "confusion_errors": 0,
    }
    worst = worst_level(samples)
    if worst is not None:
        level, errors = worst
        entry["confusion_level"], entry["confusion_errors"] = level, errors
        entry["confusion"] = confusion_heatmap(samples, level, out, f"confusion_{slug}.png", f"{run_name}\n{level}: {errors} errors (rows truth, columns pick)")
    return entry


def markdown(entries: list[dict[str, Any]]) -> list[str]:
    """The report.md section for the drawn runs."""
    if not entries:
        return []
    md = [
        "## Failure gallery (image runs)",
        "",
        "Per image run: up to N images per category (" + "; ".join(h for _, h in CATEGORIES) + "), each captioned with "
        "every asked level's truth, and the pick where it is wrong (✓ right, ✗ wrong); then the confusion "
        "matrix of the level with the most errors.",
        "",
    ]
    for e in entries:
        c = e["counts"]
        md += [
            f"### {e['run']}",
            "",
            f"{e['samples']} images: leaf right but a higher level wrong {c['leaf_right_ancestor_wrong']}, "
            f"every level right {c['all_right']}, leaf wrong {c['leaf_wrong']}"
            + (f"; {e['missing_images']} shown images not readable (named in their tiles)" if e["missing_images"] else "") + ".",
            "",
            f"![gallery {e['run']}]({e['gallery']})",
            "",
        ]
        if e["confusion"]:
            md += [f"Most errors at `{e['confusion_level']}` ({e['confusion_errors']}):", "", f"![confusion {e['run']}]({e['confusion']})", ""]
        else:
            md += ["No wrong answer at any level: no confusion matrix.", ""]
    return md
