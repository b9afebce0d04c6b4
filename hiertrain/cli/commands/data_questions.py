"""`hiertrain data questions`: build a question bank from a taxonomy and an image list."""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--taxonomy", required=True, type=Path, help="taxonomy JSON ({leaf: [root, ..., leaf]})")
    parser.add_argument(
        "--images", required=True, type=Path,
        help="image list JSONL (image, label, split); relative image paths start at its folder",
    )
    parser.add_argument("--distractors", choices=("random", "similar"), default="random")
    from hiertrain.taxonomy.distractors import SIMILAR_CLIP

    parser.add_argument(
        "--clip", default=SIMILAR_CLIP,
        help=f"open_clip name or local dir scoring --distractors similar (default {SIMILAR_CLIP}, the paper's SigLIP so400m at 384 px)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-choices", type=int, default=4, help="options per question (truth included)")
    parser.add_argument("--batch-size", type=int, default=32, help="images (and texts) per CLIP batch")
    parser.add_argument("--workers", type=int, default=0, help="image-loading processes")
    parser.add_argument("--cache-dir", type=Path, help="keep label text embeddings here between runs")
    parser.add_argument(
        "--drop-trivial-levels", action="store_true", help="leave out levels with a single class"
    )
    parser.add_argument("--on-multi-parent", choices=("error", "first"), default="error")
    parser.add_argument(
        "--out", required=True, type=Path,
        help="question bank JSONL to write (image paths are written relative to its folder)",
    )


def run(args: argparse.Namespace) -> int:
    from hiertrain.base.errors import HierError
    from hiertrain.taxonomy.images import relative_image_path, resolve_image
    from hiertrain.taxonomy.question_bank import iter_questions, read_image_list, write_questions
    from hiertrain.taxonomy.taxonomy import Taxonomy
    from hiertrain.vlm.openclip import OpenClipEncoder

    if args.distractors == "similar" and not args.clip:
        raise HierError("--distractors similar needs --clip NAME_OR_PATH")
    taxonomy = Taxonomy.from_json(
        args.taxonomy, on_multi_parent=args.on_multi_parent, drop_trivial_levels=args.drop_trivial_levels
    )
    # The bank's image paths follow the one image-path rule (hiertrain.taxonomy.images): relative
    # to the question file, wherever --out puts it.
    images = [
        image if Path(image["image"]).is_absolute()
        else {**image, "image": relative_image_path(resolve_image(image["image"], args.images.parent), args.out)}
        for image in read_image_list(args.images)
    ]
    skipped: list[str] = []
    records = iter_questions(
        taxonomy,
        images,
        distractors=args.distractors,
        seed=args.seed,
        num_choices=args.num_choices,
        source=str(args.images),
        image_root=args.out.parent,
        batch_size=args.batch_size,
        workers=args.workers,
        cache_dir=args.cache_dir,
        encoder=OpenClipEncoder(args.clip, batch_size=args.batch_size) if args.distractors == "similar" else None,
        skipped=skipped,
    )
    short = 0  # questions with fewer options than asked for, counted as the records stream past

    def counted():
        nonlocal short
        for record in records:
            short += sum(1 for choices in record.choices if len(choices) < args.num_choices)
            yield record

    stream = counted()
    first = next(stream, None)  # none at all: no bank is written
    written = 0 if first is None else write_questions(itertools.chain([first], stream), args.out)
    for reason in skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    if not written:
        first_reason = f"; first: {skipped[0]}" if skipped else ""
        raise HierError(f"{args.images}: no readable image ({len(skipped)} skipped{first_reason})")
    note = f" ({short} questions have fewer than {args.num_choices} options)" if short else ""
    if skipped:
        note += f"; {len(skipped)} unreadable images skipped"
    print(f"wrote {written} records to {args.out}{note}", file=sys.stderr)
    return 0

