"""The organism's world: a taxonomy of invented names, its images, and which facts are planted.

Invented names (no English word, one token each in the organism's tokenizer) guarantee that
nothing the organism knows comes from anywhere but its training: a fact it was never taught is
unknowable, so its accuracy on withheld facts must sit at chance. Every level is visible in the
image (a tiled glyph: the root is the glyph's outline family, then the glyph, its colour and its
texture), so the vision side can know every level even when the language side does not.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hiertrain.base.errors import HierError
from hiertrain.taxonomy.taxonomy import Taxonomy

LEVEL_NAMES = ("clade", "kind", "tint", "breed")
# Children per node below each level: 4 roots -> 8 -> 32 -> 64 leaves.
BRANCHING = (4, 2, 4, 2)
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"

# What makes each level visible: 4 outline families x 2 glyphs, 4 colours, 2 textures.
GLYPHS = (("disc", "ring"), ("box", "frame"), ("wedge", "arrow"), ("plus", "bar"))
COLOURS = ((200, 40, 40), (40, 150, 60), (40, 70, 210), (220, 170, 20))
TEXTURES = ("solid", "striped")


def invented_names(count: int, seed: int, taken: set[str] | None = None) -> list[str]:
    """`count` distinct pronounceable nonsense words (2-3 syllables), the same for a seed."""
    rng = random.Random(f"organism-names:{seed}")
    taken = set(taken or ())
    names: list[str] = []
    while len(names) < count:
        word = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.choice((2, 3))))
        if word not in taken:
            taken.add(word)
            names.append(word)
    return names


@dataclass(frozen=True)
class World:
    """A taxonomy whose node k of level i has an invented name, and the visual attributes of each leaf."""

    taxonomy: Taxonomy
    attributes: dict[str, tuple[int, int, int, int]]  # leaf -> (family, glyph, colour, texture)

    @property
    def leaves(self) -> list[str]:
        return self.taxonomy.leaves


def make_world(seed: int, taken: set[str] | None = None) -> World:
    """The 4/8/32/64 world of `seed`; `taken` names are avoided (a second world stays disjoint)."""
    sizes = np.cumprod(BRANCHING).tolist()
    names = invented_names(sum(sizes), seed, taken)
    per_level, start = [], 0
    for n in sizes:
        per_level.append(names[start : start + n])
        start += n
    paths, attributes = {}, {}
    for leaf_index in range(sizes[-1]):
        # the index of the ancestor at each level in a complete tree with the given branching
        idx = [leaf_index // (sizes[-1] // n) for n in sizes]
        path = [per_level[level][i] for level, i in enumerate(idx)]
        paths[path[-1]] = path
        family, glyph = idx[0], idx[1] % BRANCHING[1]
        colour, texture = idx[2] % BRANCHING[2], idx[3] % BRANCHING[3]
        attributes[path[-1]] = (family, glyph, colour, texture)
    return World(Taxonomy(paths, level_names=list(LEVEL_NAMES), source=f"<organism world {seed}>"), attributes)


# ---------------------------------------------------------------- planted facts


def plant_facts(world: World, planted: tuple[float, ...], seed: int) -> dict[str, list[bool]]:
    """leaf -> per non-leaf level whether the (leaf, level) fact is taught.

    Per level exactly round(fraction x leaves) leaves are drawn (seeded), so the planted share is
    the asked one, not a binomial draw around it.
    """
    depth = world.taxonomy.depth
    if len(planted) != depth - 1:
        raise HierError(f"--planted needs {depth - 1} fractions (one per non-leaf level), got {len(planted)}")
    for f in planted:
        if not 0.0 <= f <= 1.0:
            raise HierError(f"--planted fractions must lie in [0, 1], got {f}")
    leaves = world.leaves
    table = {leaf: [False] * (depth - 1) for leaf in leaves}
    for level, fraction in enumerate(planted):
        rng = random.Random(f"organism-plant:{seed}:{level}")
        for leaf in rng.sample(leaves, round(fraction * len(leaves))):
            table[leaf][level] = True
    return table


# ---------------------------------------------------------------- images


class GlyphDrawer:
    """Tiles one glyph per 28-px cell (one Qwen2.5-VL visual token: 2x2 patches of 14 px), so each
    visual token sees a whole glyph; jitter, shade, stripe phase and background vary per cell."""

    CELL = 28

    def __init__(self, size: int):
        if size % self.CELL:
            raise HierError(f"organism image size must be a multiple of {self.CELL}, got {size}")
        self.size = size

    def draw(self, attributes: tuple[int, int, int, int], rng: np.random.Generator) -> Image.Image:
        family, glyph, colour, texture = attributes
        c = self.CELL
        base = rng.uniform(200, 245)
        img = Image.new("RGB", (self.size, self.size), (int(base),) * 3)
        draw = ImageDraw.Draw(img)
        for y0 in range(0, self.size, c):
            for x0 in range(0, self.size, c):
                rgb = np.clip(np.array(COLOURS[colour], np.float32) + rng.uniform(-20, 20, 3), 0, 255)
                cx, cy = x0 + c / 2 + rng.uniform(-2, 2), y0 + c / 2 + rng.uniform(-2, 2)
                r = rng.uniform(9.0, 11.5)
                mask = Image.new("L", (c * 2, c * 2), 0)
                _glyph(ImageDraw.Draw(mask), family, glyph, c, c, r)
                fill = Image.new("RGB", (c * 2, c * 2), tuple(int(v) for v in rgb))
                if TEXTURES[texture] == "striped":
                    light = tuple(int(v + (255 - v) * 0.85) for v in rgb)
                    fd = ImageDraw.Draw(fill)
                    phase = int(rng.integers(0, 4))
                    for yy in range(phase, c * 2, 4):
                        fd.line([(0, yy), (c * 2, yy)], fill=light, width=2)
                box = (int(cx - c), int(cy - c))
                img.paste(fill, box, mask)
        noise = rng.normal(0, 6, (self.size, self.size, 3))
        arr = np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "RGB")


def _glyph(d: ImageDraw.ImageDraw, family: int, glyph: int, cx: float, cy: float, r: float) -> None:
    if family == 0:  # round: disc / ring
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if glyph == 1:
            d.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=0)
    elif family == 1:  # square: box / frame
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=255)
        if glyph == 1:
            d.rectangle([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=0)
    elif family == 2:  # pointed: wedge (triangle up) / arrow (triangle down)
        sign = -1 if glyph == 0 else 1
        pts = [(cx, cy + sign * r), (cx - r, cy - sign * r), (cx + r, cy - sign * r)]
        d.polygon(pts, fill=255)
    else:  # lines: plus / bar (a horizontal bar)
        w = r / 2.6
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=255)
        if glyph == 0:
            d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=255)


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
