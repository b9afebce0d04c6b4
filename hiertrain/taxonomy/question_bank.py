"""Question bank records: the paper's JSONL format, reading, writing and building.

Distractor mining (random, and CLIP-similar with an injected encoder) is in
`hiertrain.taxonomy.distractors`; the open_clip encoder itself is model code (`hiertrain.vlm.openclip`).

One record per image: `{"image", "label", "split", "level1", "choices_level1", ...}` where
`levelN` is the truth at depth N and `choices_levelN` holds it among distractors of the same
depth. The paper's files load unchanged and are written back byte for byte.

Built records carry the taxonomy's own spelling of labels (e.g. "Black-footed Albatross"),
not the lower-cased text of the shipped CUB files: the taxonomy is the source of truth, and
answers and metrics compare labels after normalisation anyway.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Literal, Sequence

from hiertrain.base.errors import HierError
from hiertrain.protocol.prompts import LETTERS
from hiertrain.base.resources import read_data_text, resolve_data_path
from hiertrain.taxonomy.taxonomy import normalize_label

from hiertrain.taxonomy.distractors import ImageTextEncoder, Levels, TextEmbeddingCache, random_distractors, similar_distractors

if TYPE_CHECKING:
    from hiertrain.taxonomy.taxonomy import Taxonomy

LEVEL_KEY = re.compile(r"level([1-9][0-9]*)")
_CHOICES_KEY = re.compile(r"choices_level([1-9][0-9]*)")
IMAGE_LIST_KEYS = ("image", "label", "split")

Distractors = Literal["random", "similar"]
SAME_AFTER_NORMALISATION = "repeats an option after normalisation"  # `hiertrain data check` counts these by kind


def level_keys(d: dict) -> list[str]:
    """The `levelN` keys of a record, sorted by N as a number (level10 after level9)."""
    return sorted((k for k in d if LEVEL_KEY.fullmatch(k)), key=lambda k: int(k[5:]))


@dataclass
class QuestionRecord:
    """One image's questions. `raw` is the line's object with its key order kept."""

    raw: dict
    sample_id: int

    @property
    def image(self) -> str:
        return self.raw["image"]

    @property
    def label(self) -> str:
        return self.raw["label"]

    @property
    def split(self) -> str:
        return self.raw["split"]

    @property
    def truths(self) -> list[str | None]:
        """Truth per level index (0-based); None for a level the record lacks or leaves null."""
        keys = level_keys(self.raw)
        out: list[str | None] = [None] * (int(keys[-1][5:]) if keys else 0)
        for key in keys:
            out[int(key[5:]) - 1] = self.raw[key]
        return out

    @property
    def choices(self) -> list[list[str]]:
        """Options per level index, in file order; [] for a level the record lacks."""
        return [list(self.raw.get(f"choices_level{i + 1}") or []) for i in range(len(self.truths))]


# ---------------------------------------------------------------------------------------
# Reading and writing


def _jsonl_lines(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """(where, line) per line of a JSONL file, `where` = "FILE:LINE"; the whole file is decoded
    first (a bad byte anywhere is the error). Gzipped files and packaged `hiertrain://` names are
    read transparently (hiertrain.base.resources)."""
    path = resolve_data_path(path)
    if not path.exists():
        raise HierError(f"{path}: file not found")
    text = read_data_text(path)
    for lineno, line in enumerate(text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"), 1):
        yield f"{path}:{lineno}", line


def _read_jsonl(path: str | os.PathLike) -> list[tuple[str, dict]]:
    """(where, object) per line. Blank or non-object lines are errors: skipping them would shift
    every later sample id."""
    return [(where, parse_line(line, where)) for where, line in _jsonl_lines(path)]


def parse_line(line: str, where: str) -> dict:
    """One line of a JSONL file as an object (`where` = "FILE:LINE" for the one-line error)."""
    if not line.strip():
        raise HierError(f"{where}: blank line (one JSON object per line expected)")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise HierError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(obj, dict):
        raise HierError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def require_strings(obj: dict, keys: Sequence[str], where: str) -> None:
    for key in keys:
        if key not in obj:
            raise HierError(f"{where}: missing key {key!r}")
        if not isinstance(obj[key], str):
            raise HierError(f"{where}: {key!r} must be a string, got {json.dumps(obj[key])}")


def check_question(obj: dict, where: str) -> None:
    """A record must be answerable: it names an image, every level has options that read as
    different answers, and the truth is one of them."""
    require_strings(obj, IMAGE_LIST_KEYS, where)
    if not obj["image"].strip():
        raise HierError(f"{where}: empty 'image' field (a record names its image file)")
    levels = {int(k[5:]) for k in obj if LEVEL_KEY.fullmatch(k)}
    choice_levels = {int(m.group(1)) for k in obj if (m := _CHOICES_KEY.fullmatch(k))}
    if not levels:
        raise HierError(f"{where}: no level1..levelN keys")
    orphans = sorted(choice_levels - levels)
    if orphans:
        raise HierError(f"{where}: 'choices_level{orphans[0]}' without 'level{orphans[0]}'")
    for n in sorted(levels):
        truth, choices = obj[f"level{n}"], obj.get(f"choices_level{n}")
        if truth is not None and not isinstance(truth, str):
            raise HierError(f"{where}: 'level{n}' must be a string or null, got {json.dumps(truth)}")
        if choices is None:
            if truth is None:
                continue
            raise HierError(f"{where}: missing key 'choices_level{n}'")
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            raise HierError(f"{where}: 'choices_level{n}' must be a non-empty list of strings")
        if len(choices) > len(LETTERS):
            raise HierError(f"{where}: 'choices_level{n}' has {len(choices)} options, at most {len(LETTERS)}")
        if len(set(choices)) != len(choices):
            raise HierError(f"{where}: 'choices_level{n}' repeats an option: {choices}")
        normed = [normalize_label(c) for c in choices]
        same = sorted({c for c, m in zip(choices, normed) if normed.count(m) > 1})
        if same:  # answers are matched after normalisation: the model could not tell these apart
            raise HierError(f"{where}: 'choices_level{n}' {SAME_AFTER_NORMALISATION} (case, spaces, -/_): {same}")
        if truth is not None and truth not in choices:
            raise HierError(f"{where}: 'level{n}' truth {truth!r} is not among 'choices_level{n}' {choices}")


def record_id(obj: dict) -> str:
    """What names a record: its image (one record per image; `id` when a record carries one)."""
    return str(obj["id"]) if "id" in obj else obj["image"]


def repeated_ids(ids: Iterable[str | None]) -> list[tuple[int, int, str]]:
    """(first line, repeating line, id) for every id met before; `ids` in file order, one per
    line (None: a line without a record), lines 1-based.

    Works from ids alone (a lazy reader can stream them; `hiertrain data check` lists them all):
    a record listed twice would be asked and scored twice, so a repeat is an error, not a sample."""
    first: dict[str, int] = {}
    out = []
    for lineno, key in enumerate(ids, 1):
        if key is None:
            continue
        if key in first:
            out.append((first[key], lineno, key))
        else:
            first[key] = lineno
    return out


def repeat_message(first: int, key: str) -> str:
    return f"record {key!r} repeats line {first} (one record per image: it would be scored twice)"


def read_questions(path: str | os.PathLike) -> list[QuestionRecord]:
    """Load a question file (the paper's JSONL); HierError "FILE:LINE: ..." on the first bad line
    (`check_question`) or repeated record (`record_id`, naming both lines)."""
    records = []
    seen: dict[str, int] = {}
    for sample_id, (where, line) in enumerate(_jsonl_lines(path)):  # line by line, as the lazy index
        obj = parse_line(line, where)
        check_question(obj, where)
        key = record_id(obj)
        if key in seen:
            raise HierError(f"{where}: {repeat_message(seen[key], key)}")
        seen[key] = sample_id + 1
        records.append(QuestionRecord(raw=obj, sample_id=sample_id))
    return records


def read_image_list(path: str | os.PathLike) -> list[dict]:
    """Load an image list (`image`, `label`, `split` per line); HierError "FILE:LINE: ...".

    A file holding one JSON list of such objects (the paper's `Inat21_Plant_all.json`) is
    read too; its errors name "FILE:item N"."""
    images = []
    real = resolve_data_path(path)
    text = read_data_text(real) if real.is_file() else ""
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise HierError(f"{real}:{err.lineno}: not valid JSON ({err.msg})") from None
        entries = [(f"{real}:item {n}", obj) for n, obj in enumerate(items, 1)]
        for where, obj in entries:
            if not isinstance(obj, dict):
                raise HierError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    else:
        entries = _read_jsonl(path)
    for where, obj in entries:
        require_strings(obj, IMAGE_LIST_KEYS, where)
        images.append(obj)
    return images


def write_questions(records: Iterable[QuestionRecord], path: str | os.PathLike) -> int:
    """Write records one a line, in the serialisation of the paper's files (default
    `json.dumps` separators, UTF-8 kept as is), via a temporary file so a crash leaves no
    half-written bank. `records` may be a generator (`iter_questions`): each is written as it
    is built. Returns how many were written."""
    from hiertrain.base.atomic import atomic_path

    written = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record.raw, ensure_ascii=False) + "\n")
            written += 1
    return written


# ---------------------------------------------------------------------------------------
# Building


def _resolve_images(taxonomy: Taxonomy, images: Sequence[dict], source: str) -> list[str]:
    """The canonical leaf of every image; HierError naming the line and label when unknown."""
    out = []
    for i, image in enumerate(images):
        where = f"{source}:{i + 1}"
        require_strings(image, IMAGE_LIST_KEYS, where)
        try:
            leaf = taxonomy.resolve(image["label"])
        except HierError:
            raise HierError(
                f"{where}: label {image['label']!r} is not a leaf of taxonomy {taxonomy.source}"
            ) from None
        out.append(leaf)
    return out


def _image_files(images: Sequence[dict], root: Path, source: str) -> list[Path]:
    """Absolute image files (relative ones resolved against `root`); all must exist before
    any model time is spent."""
    files = []
    for i, image in enumerate(images):
        file = Path(image["image"])
        file = file if file.is_absolute() else root / file
        if not file.is_file():
            raise HierError(f"{source}:{i + 1}: image not found: {file}")
        files.append(file)
    return files


def build_questions(taxonomy: Taxonomy, images: Sequence[dict], *args, **kwargs) -> list[QuestionRecord]:
    """`iter_questions` as a list (arguments as there)."""
    return list(iter_questions(taxonomy, images, *args, **kwargs))


def iter_questions(
    taxonomy: Taxonomy,
    images: Sequence[dict],
    distractors: Distractors = "random",
    seed: int = 0,
    num_choices: int = 4,
    *,
    source: str = "<memory>",
    image_root: str | os.PathLike | None = None,
    batch_size: int = 32,
    workers: int = 0,
    cache_dir: str | os.PathLike | None = None,
    encoder: ImageTextEncoder | None = None,
    skipped: list[str] | None = None,
) -> Iterator[QuestionRecord]:
    """One record per image, yielded as built (a million-image bank is written, not held): for
    every level of its path the truth and up to
    `num_choices - 1` distractors of the same level, in a seeded order.

    `random` draws distractors with a generator seeded by (seed, sample, level), so a sample's
    questions do not depend on the other images. `similar` takes the classes the image-text
    `encoder` (e.g. `hiertrain.vlm.openclip.OpenClipEncoder`) finds most similar to the image. A level with fewer
    classes than `num_choices` gets fewer options. `source` and `image_root` name the image
    list file (for error lines) and the folder its relative image paths start from. With
    `similar`, an unreadable image (truncated, decompression bomb, ...) leaves its record out;
    its reason (naming the file) is appended to `skipped` when the iteration reaches it.
    Every image's label is checked (and, for `similar`, every image scored) before this returns.
    """
    if not 2 <= num_choices <= len(LETTERS):
        raise HierError(f"num_choices must be between 2 and {len(LETTERS)}, got {num_choices}")
    if distractors not in ("random", "similar"):
        raise HierError(f"unknown distractors {distractors!r} (use 'random' or 'similar')")
    leaves = _resolve_images(taxonomy, images, source)
    levels = Levels(taxonomy)
    k = num_choices - 1

    similar: list[list[list[int]] | str] | None = None
    if distractors == "similar":
        if encoder is None:
            raise HierError("similar distractors need a CLIP model (--clip NAME_OR_PATH)")
        root = Path(image_root) if image_root is not None else Path.cwd()
        files = _image_files(images, root, source)
        positions = [levels.positions(taxonomy.path(leaf)) for leaf in leaves]
        similar = similar_distractors(
            encoder, TextEmbeddingCache(encoder, cache_dir), levels, files, positions, k, batch_size, workers, source
        )

    return _records(taxonomy, images, leaves, levels, similar, seed, k, skipped)


def _records(
    taxonomy: Taxonomy,
    images: Sequence[dict],
    leaves: list[str],
    levels: Levels,
    similar: list[list[list[int]] | str] | None,
    seed: int,
    k: int,
    skipped: list[str] | None,
) -> Iterator[QuestionRecord]:
    from tqdm.auto import tqdm

    sample_id = 0  # the record's line in the written bank
    rows = tqdm(zip(images, leaves), total=len(images), desc="questions", disable=len(images) < 1000)
    for index, (image, leaf) in enumerate(rows):
        if similar is not None and isinstance(similar[index], str):
            if skipped is not None:
                skipped.append(similar[index])
            continue
        raw = {"image": image["image"], "label": leaf, "split": image["split"]}
        for level, t in enumerate(levels.positions(taxonomy.path(leaf))):
            rng = random.Random(f"{seed}:{sample_id}:{level}:choices")
            nodes = levels.nodes[level]
            picked = similar[index][level] if similar is not None else random_distractors(len(nodes), t, k, rng)
            truth = nodes[t]
            choices = [truth] + [nodes[j] for j in picked]
            rng.shuffle(choices)
            raw[f"level{level + 1}"] = truth
            raw[f"choices_level{level + 1}"] = choices
        yield QuestionRecord(raw=raw, sample_id=sample_id)
        sample_id += 1
