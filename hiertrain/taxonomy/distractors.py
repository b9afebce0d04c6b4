"""Distractor mining: which wrong classes of a level go next to the truth.

`random`: uniform over the level's other classes, seeded per (seed, sample, level).
`similar`: the classes an image-text encoder finds closest to the image (the paper's "similar
choices"). The encoder is injected (any `ImageTextEncoder`, e.g. open_clip in
`hiertrain.vlm.openclip.OpenClipEncoder`), so this module needs no model code.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

from hiertrain.protocol.prompts import CLIP_TEXT_TEMPLATE

# The paper's SigLIP so400m at 384 px (google/siglip-so400m-patch14-384; open_clip's copy of the same
# webli weights): the default encoder that picks "similar" distractors (`hiertrain data questions`).
SIMILAR_CLIP = "hf-hub:timm/ViT-SO400M-14-SigLIP-384"

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from hiertrain.taxonomy.taxonomy import Taxonomy


class Levels:
    """The classes of every level (depth) of a taxonomy and each class's position, built once.

    Positions are keyed by normalised name: a path may spell a node differently from the
    level's canonical spelling (which is what records get, so truth and options agree)."""

    def __init__(self, taxonomy: Taxonomy):
        from hiertrain.taxonomy.taxonomy import normalize_label

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
        """The RGB image, or the one-line reason it cannot be read (the sample is then skipped)."""
        from hiertrain.taxonomy.images import BAD_IMAGE_ERRORS, open_rgb

        try:
            return open_rgb(self.paths[i])
        except BAD_IMAGE_ERRORS as err:
            return f"{self.source}:{i + 1}: cannot read image {self.paths[i]} ({type(err).__name__}: {err})"


def similar_distractors(
    encoder: ImageTextEncoder,
    texts: TextEmbeddingCache,
    levels: Levels,
    image_paths: list[Path],
    truth_positions: list[list[int]],
    k: int,
    batch_size: int,
    workers: int = 0,
    source: str = "<memory>",
) -> list[list[list[int]] | str]:
    """Per sample and level, the positions of the k classes most similar to the image,
    the truth excluded, most similar first; for an unreadable image, the reason (a string)."""
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
    picks: list[list[list[int]] | str] = []
    start = 0
    for loaded in tqdm(loader, desc="similar distractors", unit="batch"):
        good = [j for j, image in enumerate(loaded) if not isinstance(image, str)]
        images = [loaded[j] for j in good]
        out: list[list[list[int]] | str] = list(loaded)  # reasons stay, picks fill the good slots
        start += len(loaded)
        if not images:
            picks.extend(out)
            continue
        features = encoder.encode_images(images)
        batch = [truth_positions[start - len(loaded) + j] for j in good]
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
        for j, chosen in zip(good, batch_picks):
            out[j] = chosen
        picks.extend(out)
    return picks


def random_distractors(n: int, truth: int, k: int, rng: random.Random) -> list[int]:
    """k distinct positions in range(n) other than `truth`, uniformly, without building the
    candidate list (a species level can have thousands of classes)."""
    return [j + (j >= truth) for j in rng.sample(range(n - 1), min(k, n - 1))]
