"""`hiertrain data synth`: write the synthetic hierarchical image set (see hiertrain.taxonomy.synth)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output directory (empty, or an earlier synthetic set)")
    parser.add_argument("--images-per-leaf", type=int, default=6, help="images per leaf, >= 3 (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical files (default 0)")
    parser.add_argument("--image-size", type=int, default=448, help="square image side in pixels (default 448)")


def run(args: argparse.Namespace) -> int:
    from hiertrain.taxonomy.synth import make_synthetic

    paths = make_synthetic(args.out, images_per_leaf=args.images_per_leaf, seed=args.seed, image_size=args.image_size)
    meta = json.loads(paths["meta"].read_text())
    levels = ", ".join(f"{lvl['name']} {lvl['classes']}" for lvl in meta["levels"])
    splits = ", ".join(f"{name} {n}" for name, n in meta["splits"].items())
    print(f"{meta['images']} images of {meta['leaves']} leaves ({splits}); classes per level: {levels}")
    for key, path in paths.items():
        print(f"{key}: {path}")
    return 0
