"""Question bank records: the paper's JSONL format, reading, writing and building.

One record per image: `{"image", "label", "split", "level1", "choices_level1", ...}` where
`levelN` is the truth at depth N and `choices_levelN` holds it among distractors of the same
depth. The paper's files load unchanged and are written back byte for byte.

Built records carry the taxonomy's own spelling of labels (e.g. "Black-footed Albatross"),
not the lower-cased text of the shipped CUB files: the taxonomy is the source of truth, and
answers and metrics compare labels after normalisation anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, Sequence

from hiertrain.core.errors import HierError
from hiertrain.core.prompts import LETTERS

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from hiertrain.core.taxonomy import Taxonomy

_LEVEL_KEY = re.compile(r"level([1-9][0-9]*)")
_CHOICES_KEY = re.compile(r"choices_level([1-9][0-9]*)")
IMAGE_LIST_KEYS = ("image", "label", "split")
CLIP_TEXT_TEMPLATE = "a photo of a {label}."
# The paper's SigLIP so400m at 384 px (google/siglip-so400m-patch14-384; open_clip's copy of the same
# webli weights): the default encoder that picks "similar" distractors.
SIMILAR_CLIP = "hf-hub:timm/ViT-SO400M-14-SigLIP-384"

Distractors = Literal["random", "similar"]


def level_keys(d: dict) -> list[str]:
    """The `levelN` keys of a record, sorted by N as a number (level10 after level9)."""
    return sorted((k for k in d if _LEVEL_KEY.fullmatch(k)), key=lambda k: int(k[5:]))


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


def _read_jsonl(path: str | os.PathLike) -> list[tuple[str, dict]]:
    """(where, object) per line, `where` = "FILE:LINE". Blank or non-object lines are errors:
    skipping them would shift every later sample id."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HierError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise HierError(f"{path}: not UTF-8 ({err.reason} at byte {err.start})") from None
    out = []
    for lineno, line in enumerate(text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"), 1):
        where = f"{path}:{lineno}"
        if not line.strip():
            raise HierError(f"{where}: blank line (one JSON object per line expected)")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise HierError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(obj, dict):
            raise HierError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        out.append((where, obj))
    return out


def require_strings(obj: dict, keys: Sequence[str], where: str) -> None:
    for key in keys:
        if key not in obj:
            raise HierError(f"{where}: missing key {key!r}")
        if not isinstance(obj[key], str):
            raise HierError(f"{where}: {key!r} must be a string, got {json.dumps(obj[key])}")


def check_question(obj: dict, where: str) -> None:
    """A record must be answerable: every level has options, and the truth is one of them."""
    require_strings(obj, IMAGE_LIST_KEYS, where)
    levels = {int(k[5:]) for k in obj if _LEVEL_KEY.fullmatch(k)}
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
        if truth is not None and truth not in choices:
            raise HierError(f"{where}: 'level{n}' truth {truth!r} is not among 'choices_level{n}' {choices}")


def read_questions(path: str | os.PathLike) -> list[QuestionRecord]:
    """Load a question file (the paper's JSONL); HierError "FILE:LINE: ..." on a bad line."""
    records = []
    for sample_id, (where, obj) in enumerate(_read_jsonl(path)):
        check_question(obj, where)
        records.append(QuestionRecord(raw=obj, sample_id=sample_id))
    return records


def read_image_list(path: str | os.PathLike) -> list[dict]:
    """Load an image list (`image`, `label`, `split` per line); HierError "FILE:LINE: ..."."""
    images = []
    for where, obj in _read_jsonl(path):
        require_strings(obj, IMAGE_LIST_KEYS, where)
        images.append(obj)
    return images


def write_questions(records: Sequence[QuestionRecord], path: str | os.PathLike) -> None:
    """Write records one a line, in the serialisation of the paper's files (default
    `json.dumps` separators, UTF-8 kept as is), via a temporary file so a crash leaves no
    half-written bank."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record.raw, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------
# Building


class _Levels:
    """The classes of every level (depth) of a taxonomy and each class's position, built once.

    Positions are keyed by normalised name: a path may spell a node differently from the
    level's canonical spelling (which is what records get, so truth and options agree)."""

    def __init__(self, taxonomy: Taxonomy):
        from hiertrain.core.taxonomy import normalize_label

        self.normalize = normalize_label
        self.nodes = [list(taxonomy.nodes_at(i)) for i in range(taxonomy.depth)]
        self.position = [{normalize_label(node): j for j, node in enumerate(nodes)} for nodes in self.nodes]

    def positions(self, path: Sequence[str]) -> list[int]:
        return [self.position[i][self.normalize(node)] for i, node in enumerate(path)]


class ImageTextEncoder(Protocol):
    """What `similar` distractors need from a CLIP-like model: L2-normalised embeddings."""

    model_key: str

    def encode_images(self, images: list[Image.Image]) -> torch.Tensor: ...

    def encode_texts(self, texts: list[str]) -> torch.Tensor: ...


def _model_key(name_or_path: str) -> str:
    """Identity of a model for the disk cache: the name, or a local dir and its files' mtimes."""
    path = Path(name_or_path)
    if not path.is_dir():
        return name_or_path
    stamp = max((p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()), default=0)
    return f"{path.resolve()}@{stamp}"


class OpenClipEncoder:
    """An open_clip model (name or local dir, via `load_open_clip`) on the best device."""

    def __init__(self, name_or_path: str, batch_size: int = 64, device: str | None = None):
        import torch

        from hiertrain.vlm.openclip import load_open_clip

        self.model, self.preprocess, self.tokenizer = load_open_clip(name_or_path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.model_key = _model_key(name_or_path)

    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        import torch

        pixels = torch.stack([self.preprocess(image) for image in images]).to(self.device)
        with torch.inference_mode():
            return self.model.encode_image(pixels, normalize=True).float().cpu()

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        import torch
        from tqdm.auto import tqdm

        out = []
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="text embeddings", unit="batch", disable=len(starts) < 2):
            tokens = self.tokenizer(texts[start : start + self.batch_size]).to(self.device)
            with torch.inference_mode():
                out.append(self.model.encode_text(tokens, normalize=True).float().cpu())
        return torch.cat(out)


class TextEmbeddingCache:
    """Embeddings of label texts, computed once per run and optionally kept on disk keyed by
    model and texts (iNat's 5388 species take minutes to embed with SigLIP)."""

    def __init__(self, encoder: ImageTextEncoder, cache_dir: str | os.PathLike | None = None):
        self.encoder = encoder
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._memory: dict[tuple[str, ...], torch.Tensor] = {}

    def _file(self, texts: tuple[str, ...]) -> Path:
        digest = hashlib.sha256("\0".join((self.encoder.model_key, *texts)).encode()).hexdigest()
        return self.cache_dir / f"text-{digest[:24]}.pt"

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        import torch

        key = tuple(texts)
        if key in self._memory:
            return self._memory[key]
        file = self._file(key) if self.cache_dir is not None else None
        if file is not None and file.is_file():
            stored = torch.load(file, map_location="cpu", weights_only=True)
            embeddings = stored["embeddings"] if stored.get("texts") == list(key) else None
        else:
            embeddings = None
        if embeddings is None:
            embeddings = self.encoder.encode_texts(list(key))
            if file is not None:
                file.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"texts": list(key), "embeddings": embeddings}, file)
        self._memory[key] = embeddings
        return embeddings


class _ImageFiles:
    """Images of the list as a map-style dataset, so a DataLoader batches them."""

    def __init__(self, paths: list[Path], source: str):
        self.paths = paths
        self.source = source

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        try:
            with Image.open(self.paths[i]) as image:
                return image.convert("RGB")
        except OSError as err:
            raise HierError(f"{self.source}:{i + 1}: cannot read image {self.paths[i]} ({err})") from None


def _similar_distractors(
    encoder: ImageTextEncoder,
    texts: TextEmbeddingCache,
    levels: _Levels,
    image_paths: list[Path],
    truth_positions: list[list[int]],
    k: int,
    batch_size: int,
    workers: int = 0,
    source: str = "<memory>",
) -> list[list[list[int]]]:
    """Per sample and level, the positions of the k classes most similar to the image,
    the truth excluded, most similar first."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    # A level of one class has no distractor to rank; every other level is embedded once.
    level_embeddings = [
        texts([CLIP_TEXT_TEMPLATE.format(label=node) for node in nodes]) if len(nodes) > 1 and k else None
        for nodes in levels.nodes
    ]
    loader = DataLoader(
        _ImageFiles(image_paths, source), batch_size=batch_size, num_workers=workers, collate_fn=list
    )
    picks: list[list[list[int]]] = []
    start = 0
    for images in tqdm(loader, desc="similar distractors", unit="batch"):
        features = encoder.encode_images(images)
        batch = truth_positions[start : start + len(images)]
        batch_picks: list[list[list[int]]] = [[] for _ in batch]
        for level in range(max(len(t) for t in batch)):
            rows = [r for r, t in enumerate(batch) if len(t) > level]
            if level_embeddings[level] is None:
                for r in rows:
                    batch_picks[r].append([])
                continue
            similarity = features[rows] @ level_embeddings[level].T
            top = similarity.topk(min(k + 1, similarity.shape[1]), dim=1).indices.tolist()
            for r, ranked in zip(rows, top):
                batch_picks[r].append([j for j in ranked if j != batch[r][level]][:k])
        picks.extend(batch_picks)
        start += len(images)
    return picks


def _random_distractors(n: int, truth: int, k: int, rng: random.Random) -> list[int]:
    """k distinct positions in range(n) other than `truth`, uniformly, without building the
    candidate list (a species level can have thousands of classes)."""
    return [j + (j >= truth) for j in rng.sample(range(n - 1), min(k, n - 1))]


def _resolve_images(
    taxonomy: Taxonomy, images: Sequence[dict], source: str
) -> list[tuple[str, tuple[str, ...]]]:
    """(canonical leaf, path) per image; HierError naming the line and label when unknown."""
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
        out.append((leaf, tuple(taxonomy.path(leaf))))
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


def build_questions(
    taxonomy: Taxonomy,
    images: Sequence[dict],
    distractors: Distractors = "random",
    seed: int = 0,
    clip: str | None = None,
    num_choices: int = 4,
    *,
    source: str = "<memory>",
    image_root: str | os.PathLike | None = None,
    batch_size: int = 32,
    workers: int = 0,
    cache_dir: str | os.PathLike | None = None,
    encoder: ImageTextEncoder | None = None,
) -> list[QuestionRecord]:
    """One record per image: for every level of its path the truth and up to
    `num_choices - 1` distractors of the same level, in a seeded order.

    `random` draws distractors with a generator seeded by (seed, sample, level), so a sample's
    questions do not depend on the other images. `similar` takes the classes an open_clip model
    (`clip`, or an injected `encoder`) finds most similar to the image. A level with fewer
    classes than `num_choices` gets fewer options. `source` and `image_root` name the image
    list file (for error lines) and the folder its relative image paths start from.
    """
    if not 2 <= num_choices <= len(LETTERS):
        raise HierError(f"num_choices must be between 2 and {len(LETTERS)}, got {num_choices}")
    if distractors not in ("random", "similar"):
        raise HierError(f"unknown distractors {distractors!r} (use 'random' or 'similar')")
    resolved = _resolve_images(taxonomy, images, source)
    levels = _Levels(taxonomy)
    positions = [levels.positions(path) for _, path in resolved]
    k = num_choices - 1

    similar: list[list[list[int]]] | None = None
    if distractors == "similar":
        if encoder is None and clip is None:
            raise HierError("similar distractors need a CLIP model (--clip NAME_OR_PATH)")
        root = Path(image_root) if image_root is not None else Path.cwd()
        files = _image_files(images, root, source)
        encoder = encoder if encoder is not None else OpenClipEncoder(clip, batch_size=batch_size)
        similar = _similar_distractors(
            encoder, TextEmbeddingCache(encoder, cache_dir), levels, files, positions, k, batch_size, workers, source
        )

    from tqdm.auto import tqdm

    records = []
    rows = tqdm(zip(images, resolved), total=len(images), desc="questions", disable=len(images) < 1000)
    for sample_id, (image, (leaf, _)) in enumerate(rows):
        raw = {"image": image["image"], "label": leaf, "split": image["split"]}
        for level, t in enumerate(positions[sample_id]):
            rng = random.Random(f"{seed}:{sample_id}:{level}:choices")
            nodes = levels.nodes[level]
            picked = similar[sample_id][level] if similar is not None else _random_distractors(len(nodes), t, k, rng)
            truth = nodes[t]
            choices = [truth] + [nodes[j] for j in picked]
            rng.shuffle(choices)
            raw[f"level{level + 1}"] = truth
            raw[f"choices_level{level + 1}"] = choices
        records.append(QuestionRecord(raw=raw, sample_id=sample_id))
    return records
