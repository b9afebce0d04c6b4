"""Evaluation speed: the paper's protocol vs hiertrain's default, same model, same questions.

(a) paper: one question at a time; the image is processed and encoded again for every level;
    `generate` up to 5 tokens; the letter is read from the reply.
(b) hiertrain: per image one vision encoding and one prefix prefill, all 7 levels as one
    batch on a copy of the KV cache; the letter is the argmax of the letter logits.
Both run on the same tiny random-init Qwen2.5-VL (448 px images -> 256 visual tokens) and the
same 7-level questions, in one process, one after the other. Also reported: (c) hiertrain's
`generate` (shared prefix, greedy) and how often the answers of the modes agree.

    python bench/eval_speed.py [--images 8] [--json out.json] [--pretrained DIR]
                               [--device cpu|cuda[:N]] [--dtype float32|bfloat16|float16]

On a GPU (`--device cuda --dtype bfloat16 --pretrained DIR`) the model is loaded straight onto
the device and every timing is bracketed by `torch.cuda.synchronize()`. The defaults (CPU,
float32) are the project's CPU benchmark, unchanged.

A random-init model rarely replies with a letter, so logits-vs-generate agreement means little
on it; `--pretrained runs/demo/lora/merged` (the demo's LoRA-tuned tiny Qwen2.5-VL, which
answers with letters) measures agreement on a model that does.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
INAT_PLANTS = REPO.parent / "shared/data/taxonomies/hierarchy_Inat_plantae.json"
LEVELS = ["kingdom", "phylum", "class", "order", "family", "genus", "species"]


def seven_level_questions(n: int, seed: int = 0) -> list[list[tuple[str, list[str]]]]:
    """Per image, 7 (truth, 4 options) pairs: iNat21 plant paths when the data is there."""
    rng = random.Random(seed)
    if INAT_PLANTS.is_file():
        paths = [p for p in json.loads(INAT_PLANTS.read_text()).values() if len(p) == 7]
    else:  # synthetic stand-in with the same shape
        paths = [[f"{name} {i % (k + 2)}" for k, name in enumerate(LEVELS)] for i in range(200)]
    by_level = [sorted({p[k] for p in paths}) for k in range(7)]
    out = []
    for path in rng.sample(paths, n):
        levels = []
        for k, truth in enumerate(path):
            pool = [c for c in by_level[k] if c != truth]
            options = [truth, *rng.sample(pool, min(3, len(pool)))]
            rng.shuffle(options)
            levels.append((truth, options))
        out.append(levels)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--pretrained", default=None, help="a Qwen2.5-VL checkpoint dir (default: a fresh tiny one)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, ...")
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="weights' dtype (default float32)"
    )
    args = parser.parse_args(argv)

    import torch
    from PIL import Image

    from hiertrain.core import prompts
    from hiertrain.core.answers import parse_letter
    from hiertrain.vlm.loading import load_vllm
    from hiertrain.vlm.prefix_cache import ImagePrompts, SharedPrefixAnswerer, render_chat
    from hiertrain.core.synth import make_synthetic
    from hiertrain.vlm.tiny import make_tiny

    work = Path(tempfile.mkdtemp(prefix="eval_speed_"))
    checkpoint = args.pretrained or make_tiny("qwen2_5_vl", work / "tiny", seed=0)
    synth = make_synthetic(work / "synth", images_per_leaf=3, seed=0, image_size=448)
    image_files = sorted(synth["images_dir"].glob("*.png"))[: args.images]
    images = [Image.open(p).convert("RGB") for p in image_files]
    questions = seven_level_questions(len(images))
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit(f"eval_speed: --device {args.device} but torch sees no CUDA device")
    # CPU: loaded as before (no device_map); GPU: straight onto the device, no CPU copy first.
    model, processor = load_vllm(str(checkpoint), args.dtype, device_map=args.device if args.device != "cpu" else None)

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize(args.device)
    answerer = SharedPrefixAnswerer(model, processor, max_new_tokens=5)
    grid = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[images[0]], return_tensors="pt")
    visual_tokens = int(grid["image_grid_thw"].prod()) // 4

    def chat(levels, k):
        question = prompts.question_text(prompts.image_prompt(0, LEVELS[k], "plant"), levels[k][1])
        return render_chat(processor, prompts.chat_messages(question, "image"))

    items = [ImagePrompts(img, [chat(levels, k) for k in range(7)]) for img, levels in zip(images, questions)]
    n_questions = 7 * len(items)

    def paper():
        return [[answerer.full_generate(item.image, p) for p in item.prompts] for item in items]

    def ours_logits():
        out = []
        for item, levels in zip(items, questions):
            rows = answerer.logits([item])[0]
            out.append([int(answerer.letter_scores(r, len(o)).argmax()) for r, (_, o) in zip(rows, levels)])
        return out

    def ours_generate():
        return [answerer.generate([item])[0] for item in items]

    warm = ImagePrompts(images[0], items[0].prompts[:2])
    answerer.full_generate(warm.image, warm.prompts[0])
    answerer.logits([warm])
    if on_gpu:  # kernels / cuBLAS plans of the batched decode are first built here, not in (c)'s timing
        answerer.generate([warm])
    timings, results = {}, {}
    for name, fn in (("paper", paper), ("hiertrain", ours_logits), ("hiertrain_generate", ours_generate)):
        sync()
        start = time.perf_counter()
        results[name] = fn()
        sync()
        timings[name] = time.perf_counter() - start
    qps = {name: n_questions / seconds for name, seconds in timings.items()}

    parsed = [
        (parse_letter(reply, opts), mine)
        for replies, picks, levels in zip(results["paper"], results["hiertrain"], questions)
        for reply, mine, (_, opts) in zip(replies, picks, levels)
    ]
    readable = [(p, m) for p, m in parsed if p is not None]
    same_replies = sum(a == b for ra, rb in zip(results["paper"], results["hiertrain_generate"]) for a, b in zip(ra, rb))
    default_run = args.device == "cpu" and args.dtype == "float32"
    if args.device == "cpu":
        device_text = f"CPU, torch threads {torch.get_num_threads()}"
    elif on_gpu:
        device_text = f"{torch.cuda.get_device_name(args.device)} ({args.device})"
    else:
        device_text = args.device
    if not default_run:
        device_text += f", dtype {args.dtype}"
    figures = {
        "device": device_text,
        "images": len(items),
        "questions": n_questions,
        "visual_tokens_per_image": visual_tokens,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "questions_per_s": {k: round(v, 2) for k, v in qps.items()},
        "speedup_default_vs_paper": round(qps["hiertrain"] / qps["paper"], 2),
        "speedup_generate_vs_paper": round(qps["hiertrain_generate"] / qps["paper"], 2),
        "paper_replies_parseable": f"{len(readable)}/{n_questions}",
        "logits_agree_with_parsed_generate": f"{sum(p == m for p, m in readable)}/{len(readable)}",
        "shared_prefix_generate_equals_paper_generate": f"{same_replies}/{n_questions}",
    }
    if not default_run:  # the CPU default's figures keep their old keys
        figures.update(torch_device=args.device, dtype=args.dtype, model=str(checkpoint))
        if on_gpu:
            figures["max_memory_allocated_gb"] = round(torch.cuda.max_memory_allocated(args.device) / 2**30, 2)
    print(f"| protocol | questions/s | seconds ({n_questions} questions, {len(items)} images x 7 levels) |")
    print("| --- | ---: | ---: |")
    print(f"| (a) paper: per question, image re-encoded, generate 5 tokens | {qps['paper']:.2f} | {timings['paper']:.1f} |")
    print(f"| (b) hiertrain default: shared prefix + KV cache, letter logits | {qps['hiertrain']:.2f} | {timings['hiertrain']:.1f} |")
    print(f"| (c) hiertrain generate: shared prefix, greedy 5 tokens | {qps['hiertrain_generate']:.2f} | {timings['hiertrain_generate']:.1f} |")
    print(f"speedup (b)/(a): {figures['speedup_default_vs_paper']}x   (c)/(a): {figures['speedup_generate_vs_paper']}x")
    print(f"visual tokens per image: {visual_tokens}; {figures['device']}")
    print(
        f"paper replies parseable: {figures['paper_replies_parseable']}; logits agree with parsed replies: "
        f"{figures['logits_agree_with_parsed_generate']}; shared-prefix generate == paper generate: "
        f"{figures['shared_prefix_generate_equals_paper_generate']}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
