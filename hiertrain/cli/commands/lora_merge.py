"""`hiertrain lora merge --adapter DIR --out DIR`: fold a LoRA adapter into its base model.

The output is a plain transformers checkpoint plus processor, so `hiertrain test
--model.pretrained DIR` evaluates the tuned model exactly like any other.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, type=Path, help="PEFT adapter dir (adapter_config.json)")
    parser.add_argument("--out", required=True, type=Path, help="where the merged model + processor go")
    parser.add_argument(
        "--base", default=None, help="base model dir or hub id (default: the adapter's base_model_name_or_path)"
    )
    parser.add_argument("--dtype", default="auto", help="dtype to load and save in (auto, float32, bfloat16)")


def run(args: argparse.Namespace) -> int:
    from hiertrain.modules.lora_tuner import merge_adapter

    out = merge_adapter(args.adapter, args.out, base=args.base, dtype=args.dtype)
    print(f"merged {args.adapter} into {out}")
    return 0
