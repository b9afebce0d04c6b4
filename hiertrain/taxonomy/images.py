"""Reading images: the one image-path rule and the one way a file becomes an RGB image.

Image-path rule (docs/data.md, "Image paths"), used by every command that reads a question file:
1. a leading prefix listed in `image_root_map` is replaced by its target; a relative target
   is taken from the working directory (as any path on the command line or in a config);
2. otherwise a relative path is taken from the question file's folder (or `image_dir`);
3. absolute paths are used as they are.
`hiertrain data questions` writes paths relative to the question file it writes, so the
bank it makes is read back by the same rule wherever `--out` puts it.

`open_rgb` keeps PIL's decompression-bomb guard (such images are refused, counted as skipped
by the caller), decodes fully now (a truncated file fails here, naming the file), and scales
16-bit and float greyscale to 8 bits instead of clipping them to white.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image

# What a bad image file raises: missing/truncated/not an image (OSError), odd modes
# (ValueError), more pixels than PIL's guard allows (DecompressionBombError).
BAD_IMAGE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, Image.DecompressionBombError)


def resolve_image(image: str, base: str | os.PathLike, root_map: dict[str, str] | None = None) -> Path:
    """Where `image` (a path as written in a question file) is, by the rule above."""
    for old, new in (root_map or {}).items():
        if image.startswith(old):
            return Path(new + image[len(old) :])
    path = Path(image)
    return path if path.is_absolute() else Path(base) / path


def relative_image_path(path: str | os.PathLike, question_file: str | os.PathLike) -> str:
    """`path` written so that `resolve_image(.., question_file's folder)` finds it again:
    relative to that folder (absolute when no relative path exists, e.g. another drive)."""
    target = Path(path).absolute()
    try:
        return os.path.relpath(target, Path(question_file).absolute().parent)
    except ValueError:
        return str(target)


def _to_8bit(img: Any) -> Any:
    """16-bit / 32-bit integer or float greyscale as 8-bit "L", scaled (not clipped)."""
    import numpy as np

    values = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16"):
        values = values / 257.0  # 0..65535 -> 0..255
    elif img.mode == "F" and values.size and float(np.nanmax(values)) <= 1.0:
        values = values * 255.0  # float images in [0, 1]
    elif values.size and float(np.nanmax(values)) > 255.0:
        values = values / 257.0  # "I"/"F" holding 16-bit data (how PIL opens some 16-bit PNGs)
    values = np.nan_to_num(np.clip(values, 0.0, 255.0))
    return Image.fromarray(np.rint(values).astype(np.uint8), mode="L")


def open_rgb(path: str | os.PathLike) -> Any:
    """The image as RGB, fully decoded now; raises one of BAD_IMAGE_ERRORS for a bad file."""
    with Image.open(path) as img:
        img.load()
        if img.mode.startswith("I") or img.mode == "F":
            img = _to_8bit(img)
        return img.convert("RGB")


def shrink_longest_side(image: Any, max_side: int | None) -> Any:
    """The paper's Qwen pre-step: an image whose longest side exceeds `max_side` is scaled by
    `max_side / longest` to (int(w * s), int(h * s)) with LANCZOS; smaller images are unchanged."""
    if image is None or max_side is None or max(image.size) <= max_side:
        return image
    from PIL import Image

    scale = max_side / max(image.size)
    width, height = image.size
    return image.resize((int(width * scale), int(height * scale)), Image.LANCZOS)
