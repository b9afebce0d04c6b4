"""`hiertrain tiny`: save a tiny random-init model of a real architecture (see hiertrain.vlm.tiny)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hiertrain.vlm.tiny import ARCHS  # tiny.py imports torch/transformers only inside its builders


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", required=True, choices=ARCHS, help="model family to imitate")
    parser.add_argument("--out", required=True, type=Path, help="output directory (created; must be empty)")
    parser.add_argument("--seed", type=int, default=0, help="weight init seed; same seed -> same weights (default 0)")


def run(args: argparse.Namespace) -> int:
    from hiertrain.vlm.tiny import make_tiny

    out = make_tiny(args.arch, args.out, seed=args.seed)
    load = "hiertrain.vlm.openclip.load_open_clip" if args.arch == "clip" else "hiertrain.vlm.loading.load_vllm"
    print(f"tiny {args.arch} (seed {args.seed}) written to {out}; load it with {load}('{out}')")
    return 0
