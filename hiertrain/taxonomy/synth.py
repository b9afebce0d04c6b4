"""A procedurally drawn hierarchical image set: the study end to end without downloads.

Four levels whose classes are decidable by eye, so a model that fails here fails at the
hierarchy, not at perception: shape family (round / angular) -> shape (circle, ellipse /
triangle, square) -> colour ("red circle") -> texture ("red striped circle", the leaf).
Each image varies position, size, rotation, colour shade and background from its own seed,
so probes must generalise rather than memorise pixels. Same arguments -> byte-identical files.

Layout of `out` (paths inside the JSONL files are relative to `out`, i.e. resolved against
the directory of the file that names them):
  images/<leaf_slug>_<k>.png, taxonomy.json (+ taxonomy.levels.json, the level names),
  images.jsonl (image, label, split), questions_random.jsonl, meta.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hiertrain.base.errors import HierError
from hiertrain.taxonomy.taxonomy import Taxonomy, level_names_path

LEVEL_NAMES = ("family", "shape", "colour", "texture")
FAMILIES: dict[str, tuple[str, ...]] = {"round": ("circle", "ellipse"), "angular": ("triangle", "square")}
COLOURS: dict[str, tuple[int, int, int]] = {"red": (210, 40, 40), "green": (30, 170, 50), "blue": (40, 70, 210)}
TEXTURES: tuple[str, ...] = ("solid", "striped")
SPLITS: tuple[str, ...] = ("train", "val", "test")
GENERATOR = "hiertrain.taxonomy.synth/1"


def synthetic_taxonomy() -> Taxonomy:
    """24 leaves; names unique per level because each carries its ancestors' words."""
    paths = {}
    for family, shapes in FAMILIES.items():
        for shape in shapes:
            for colour in COLOURS:
                for texture in TEXTURES:
                    leaf = f"{colour} {texture} {shape}"
                    paths[leaf] = [family, shape, f"{colour} {shape}", leaf]
    return Taxonomy(paths, level_names=LEVEL_NAMES, source="<synthetic>")


def split_counts(images_per_leaf: int) -> dict[str, int]:
    """Images per leaf in each split: 20% val, 20% test (at least one each), rest train."""
    if images_per_leaf < len(SPLITS):
        raise HierError(f"images_per_leaf must be >= {len(SPLITS)} so every leaf is in train, val and test")
    held = max(1, round(images_per_leaf * 0.2))
    return {"train": images_per_leaf - 2 * held, "val": held, "test": held}


class ShapeDrawer:
    """Draws one image of a leaf; all randomness comes from the generator it is handed."""

    def __init__(self, size: int):
        self.size = size
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        self._xs, self._ys = xs, ys

    def draw(self, shape: str, colour: str, texture: str, rng: np.random.Generator) -> Image.Image:
        background = self._background(rng)
        mask = self._mask(shape, rng)
        fill = self._texture(colour, texture, rng)
        return Image.composite(fill, background, mask)

    def _background(self, rng: np.random.Generator) -> Image.Image:
        """A light grey with smooth blotches: noise that compresses well and carries no class."""
        base = rng.uniform(185, 240)
        coarse = rng.normal(0.0, 8.0, size=(6, 6, 3)).astype(np.float32)
        small = Image.fromarray(np.clip(base + coarse, 0, 255).astype(np.uint8), "RGB")
        return small.resize((self.size, self.size), Image.Resampling.BILINEAR)

    def _mask(self, shape: str, rng: np.random.Generator) -> Image.Image:
        s = self.size
        radius = rng.uniform(0.17, 0.3) * s
        cx, cy = (rng.uniform(radius + 2, s - radius - 2) for _ in range(2))
        angle = rng.uniform(0, 2 * math.pi)
        if shape in ("circle", "ellipse"):
            ratio = 1.0 if shape == "circle" else rng.uniform(0.45, 0.6)
            ts = np.linspace(0, 2 * math.pi, 96, endpoint=False)
            pts = np.stack([radius * np.cos(ts), radius * ratio * np.sin(ts)], axis=1)
        else:
            corners = 3 if shape == "triangle" else 4
            ts = np.arange(corners) * 2 * math.pi / corners
            pts = np.stack([radius * np.cos(ts), radius * np.sin(ts)], axis=1)
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        pts = pts @ rot.T + np.array([cx, cy])
        mask = Image.new("L", (s, s), 0)
        ImageDraw.Draw(mask).polygon([(float(x), float(y)) for x, y in pts], fill=255)
        return mask

    def _texture(self, colour: str, texture: str, rng: np.random.Generator) -> Image.Image:
        rgb = np.clip(np.array(COLOURS[colour], np.float32) + rng.uniform(-15, 15, 3), 0, 255)
        if texture == "solid":
            return Image.new("RGB", (self.size, self.size), tuple(int(c) for c in rgb))
        period = rng.uniform(0.04, 0.06) * self.size
        angle = rng.uniform(0, math.pi)
        phase = (self._xs * math.cos(angle) + self._ys * math.sin(angle)) / period
        stripe = (np.floor(phase) % 2 == 0)[..., None]
        light = rgb + (255 - rgb) * 0.8
        return Image.fromarray(np.where(stripe, rgb, light).astype(np.uint8), "RGB")


def _slug(label: str) -> str:
    return label.replace(" ", "_")


def _prepare_out(out: Path) -> None:
    """Write into an empty dir or over an earlier synthetic set (its images are replaced)."""
    if out.exists() and any(out.iterdir()):
        if not (out / "meta.json").is_file():
            raise HierError(f"{out}: not empty and not a synthetic set (no meta.json); choose an empty directory")
        for old in (out / "images").glob("*.png"):
            old.unlink()
    (out / "images").mkdir(parents=True, exist_ok=True)


def make_synthetic(out: str | Path, images_per_leaf: int = 6, seed: int = 0, image_size: int = 448) -> dict[str, Path]:
    """Draw the set into `out`; returns the paths of everything written (keys: images_dir,
    taxonomy, level_names, images, questions_random, meta)."""
    from tqdm.auto import tqdm

    from hiertrain.taxonomy.question_bank import build_questions, write_questions

    if image_size < 32:
        raise HierError(f"image_size must be >= 32 pixels, got {image_size}")
    counts = split_counts(images_per_leaf)
    out = Path(out)
    _prepare_out(out)
    taxonomy = synthetic_taxonomy()
    drawer = ShapeDrawer(image_size)
    split_of = [name for name in SPLITS for _ in range(counts[name])]

    images: list[dict] = []
    jobs = [(i, leaf, k) for i, leaf in enumerate(taxonomy.leaves) for k in range(images_per_leaf)]
    for i, leaf, k in tqdm(jobs, desc="synthetic images", unit="img", disable=None):
        _, shape, _, _ = taxonomy.paths[leaf]
        colour, texture, _ = leaf.split(" ")
        rng = np.random.default_rng([seed, i, k])
        rel = f"images/{_slug(leaf)}_{k}.png"
        drawer.draw(shape, colour, texture, rng).save(out / rel, format="PNG")
        images.append({"image": rel, "label": leaf, "split": split_of[k]})

    paths = {
        "images_dir": out / "images",
        "taxonomy": taxonomy.to_json(out / "taxonomy.json"),
        "level_names": level_names_path(out / "taxonomy.json"),
        "images": out / "images.jsonl",
        "questions_random": out / "questions_random.jsonl",
        "meta": out / "meta.json",
    }
    with paths["images"].open("w", encoding="utf-8", newline="\n") as f:
        for record in images:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    questions = build_questions(
        taxonomy, images, distractors="random", seed=seed, source=str(paths["images"]), image_root=out
    )
    write_questions(questions, paths["questions_random"])
    meta = {
        "generator": GENERATOR,
        "seed": seed,
        "images_per_leaf": images_per_leaf,
        "image_size": image_size,
        "leaves": len(taxonomy),
        "images": len(images),
        "splits": {name: counts[name] * len(taxonomy) for name in SPLITS},
        "levels": [
            {"name": name, "classes": n} for name, n in zip(taxonomy.level_names, taxonomy.classes_per_level())
        ],
        "paths_relative_to": "the directory of the file naming them (this directory)",
    }
    paths["meta"].write_text(json.dumps(meta, indent=2) + "\n")
    return paths
