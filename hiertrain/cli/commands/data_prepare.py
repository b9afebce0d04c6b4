"""`hiertrain data prepare cub|inat21|food101|imagenet`: an official dataset download -> an image
list (image, label, split) whose labels are leaves of a taxonomy (hiertrain.taxonomy.dataset_layouts).
Classes without a leaf are listed and counted, so are listed images whose file is missing (the
first few named); `--strict` makes either an error."""

from __future__ import annotations

import argparse
from pathlib import Path

# the packaged taxonomy each dataset's labels are matched to unless --taxonomy is given
DEFAULT_TAXONOMY = {
    "cub": "hiertrain://taxonomies/hierarchy_CUB200.json",
    "food101": "hiertrain://taxonomies/hierarchy_Food.json",
}
CHOICES = {
    "inat21": "hiertrain://taxonomies/hierarchy_Inat_plantae.json or hierarchy_Inat_animal.json",
    "imagenet": "hiertrain://taxonomies/hierarchy_imagenet_animal.json or hierarchy_imagenet_artifact.json",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=("cub", "inat21", "food101", "imagenet"))
    parser.add_argument("--root", required=True, type=Path, help="the unpacked official download")
    parser.add_argument("--out", required=True, type=Path, help="image list JSONL to write")
    parser.add_argument(
        "--taxonomy",
        help="taxonomy whose leaves are the labels (default: cub -> CUB200, food101 -> Food; "
        "inat21 and imagenet need one: " + "; ".join(CHOICES.values()) + ")",
    )
    parser.add_argument("--on-multi-parent", choices=("error", "first"), default="first")
    parser.add_argument("--strict", action="store_true", help="fail when any class has no taxonomy leaf or any listed image file is missing")


def run(args: argparse.Namespace) -> int:
    from hiertrain.taxonomy.dataset_layouts import MISSING_SHOWN, prepare, write_image_list
    from hiertrain.base.errors import HierError
    from hiertrain.taxonomy.taxonomy import Taxonomy

    taxonomy_name = args.taxonomy or DEFAULT_TAXONOMY.get(args.dataset)
    if taxonomy_name is None:
        raise HierError(f"{args.dataset}: give --taxonomy ({CHOICES[args.dataset]})")
    taxonomy = Taxonomy.from_json(taxonomy_name, on_multi_parent=args.on_multi_parent)
    result = prepare(args.dataset, args.root, taxonomy)
    lost = sum(result.unmatched.values())
    for name, count in result.unmatched.items():
        print(f"unmatched: {name} ({count} images)")
    missing = result.missing
    if missing:
        shown = ", ".join(missing[:MISSING_SHOWN]) + (f" and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else "")
        print(f"missing: {len(missing)} listed image files do not exist (left out): {shown}")
    if result.unmatched and args.strict:
        raise HierError(
            f"{len(result.unmatched)} of {result.classes} classes ({lost} images) have no leaf in {taxonomy.source} "
            "(--strict); they are listed above"
        )
    if missing and args.strict:
        raise HierError(f"{args.root}: {len(missing)} listed image files do not exist (--strict); the first is {missing[0]}")
    if not result.images:
        raise HierError(f"{args.root}: no image of any class matched {taxonomy.source}")
    write_image_list(result.images, args.out)
    splits = ", ".join(f"{k} {v}" for k, v in result.splits.items())
    print(
        f"{args.out}: {len(result.images)} images ({splits}) of {result.classes - len(result.unmatched)} classes; "
        f"{len(result.unmatched)} classes unmatched ({lost} images left out) against {taxonomy.source}"
        + (f"; {len(missing)} missing image files left out" if missing else "")
    )
    return 0
