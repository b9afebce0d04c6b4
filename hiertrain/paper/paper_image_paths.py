"""Map the absolute image paths in the paper's files to the user's own dataset download.

Every image path in the paper's question and training files starts with the authors' dataset
folder `AUTHORS_PREFIX` (the default `--old_prefix` of the paper's utils/replace_image_path.py;
e.g. `/projectnb/ivc-ml/yuwentan/dataset/CUB_200_2011/images/001.Black_footed_Albatross/...`).
Below it each dataset has its own sub-folders, which need not match the user's layout (the CUB
files use `CUB_200_2011/images/...`; users may point at `CUB_200_2011` itself or at its
parent). So `image_root_map` finds, from the files themselves, how many leading folders of the
remainder to drop: the fewest for which the sampled images exist under the user's root. The
result is an ordinary `{old prefix: new prefix}` map (what the data modules' `image_root_map`
takes), chosen once for the whole file, never per image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hiertrain.base.errors import HierError

AUTHORS_PREFIX = "/projectnb/ivc-ml/yuwentan/dataset/"
SAMPLE = 20  # images checked to choose the mapping


def image_root_map(images: Sequence[str], root: str | os.PathLike, source: str = "<images>") -> dict[str, str]:
    """`{authors' folder: root}` such that the paper's image paths land in `root`.

    Tries dropping 0, 1, 2, ... leading folders after `AUTHORS_PREFIX` and keeps the first
    choice under which at least one sampled image exists. HierError when the paths do not use
    the authors' prefix or no choice finds an image (the message names the first path tried)."""
    root = Path(root)
    if not root.is_dir():
        raise HierError(f"image_root {root}: no such folder")
    tails = [p[len(AUTHORS_PREFIX) :].split("/") for p in images if p.startswith(AUTHORS_PREFIX)]
    if not tails:
        first = images[0] if images else "(no images)"
        raise HierError(f"{source}: image paths do not start with the authors' folder {AUTHORS_PREFIX} (first: {first})")
    step = max(1, len(tails) // SAMPLE)
    sample = tails[::step][:SAMPLE]
    depth = min(len(t) for t in sample) - 1  # never drop the file name itself
    for drop in range(depth + 1):
        if any(root.joinpath(*t[drop:]).is_file() for t in sample):
            old = AUTHORS_PREFIX + "/".join(sample[0][:drop])
            return {old.rstrip("/"): str(root)}
    tried = root.joinpath(*sample[0])
    raise HierError(
        f"{source}: none of {len(sample)} sampled images found under image_root {root} "
        f"(for {AUTHORS_PREFIX}{'/'.join(sample[0])} tried {tried} and its shorter tails)"
    )
