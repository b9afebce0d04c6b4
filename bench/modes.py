"""Circular evaluation and inference modes (issue 26): cost side by side, same images, one run.

Circular: each 7-level image's questions under every cyclic rotation of their options.
  plain      hiertrain's default batched path (letter logits), one question per level;
  circular   the same path with the rotations as extra suffixes on the same cached prefix
             (no extra image prefill): what `data.circular: true` runs;
  naive      one batched call per rotation (the image prefilled again for each): what a loop
             over rotated question files pays.
  Printed: seconds and the cost ratio vs plain (goal <= 1.6x; naive ~ 4x).
Modes (same images, letter logits unless said; questions/s counts the 7 levels of an image):
  paper            the paper's loop: per question, image re-encoded, `generate` 5 tokens;
  independent      hiertrain's default batched path (= plain);
  oracle_parent    level k after the true answers of levels < k as chat turns, batched;
  stepwise         level k after the model's own answers (hiertrain.vlm.stepwise: KV cache grows);
  stepwise_generate  the same, greedy replies (5 tokens) as the answers;
  joint            one question per image asking every level, greedy reply of 7 x 6 tokens.

    python bench/modes.py [--images 8] [--repeats 3] [--parts circular,modes] [--threads N]
                          [--pretrained DIR] [--device cpu|cuda] [--dtype float32|bfloat16] [--json out.json]

Tiny random-init Qwen2.5-VL and the 448 px synthetic images of bench/eval_speed.py with its
7-level iNat-plant questions; `--repeats` rounds, each timing every protocol once (interleaved,
so a change of load hits them alike); ratios are per round, printed as median (min - max).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_speed import LEVELS, seven_level_questions  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="circular,modes")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from hiertrain.cli.malloc import retain_freed_memory

    retain_freed_memory()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from PIL import Image

    from hiertrain.protocol import conditions
    from hiertrain.protocol import prompts
    from hiertrain.metrics.circular import rotations
    from hiertrain.taxonomy.synth import make_synthetic
    from hiertrain.vlm.loading import load_vllm
    from hiertrain.vlm.prefix_cache import ImagePrompts, SharedPrefixAnswerer, render_chat
    from hiertrain.vlm.tiny import make_tiny

    work = Path(tempfile.mkdtemp(prefix="bench_modes_"))
    checkpoint = args.pretrained or make_tiny("qwen2_5_vl", work / "tiny", seed=0)
    synth = make_synthetic(work / "synth", images_per_leaf=3, seed=0, image_size=448)
    images = [Image.open(p).convert("RGB") for p in sorted(synth["images_dir"].glob("*.png"))[: args.images]]
    questions = seven_level_questions(len(images))
    on_gpu = args.device.startswith("cuda")
    model, processor = load_vllm(str(checkpoint), args.dtype, device_map=args.device if args.device != "cpu" else None)
    batched = SharedPrefixAnswerer(model, processor, max_new_tokens=5)
    n_questions = 7 * len(images)

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize(args.device)

    def question(k: int, options: list[str]) -> str:
        return prompts.question_text(prompts.image_prompt(0, LEVELS[k], "plant"), options)

    def chat(messages) -> str:
        return render_chat(processor, messages)

    def single(k: int, options: list[str]) -> list[dict]:
        return conditions.messages(question(k, options), "image", None)

    def interleaved(protocols: dict) -> dict[str, list[float]]:
        """Seconds per call of each protocol, `--repeats` rounds, one call of each per round (so
        a change of load hits them alike)."""
        times: dict[str, list[float]] = {name: [] for name in protocols}
        for _ in range(args.repeats):
            for name, fn in protocols.items():
                sync()
                start = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - start)
        return times

    plain_items = [ImagePrompts(img, [chat(single(k, opts)) for k, (_, opts) in enumerate(levels)]) for img, levels in zip(images, questions)]
    batched.logits(plain_items[:2])  # warm-up
    figures: dict = {"device": args.device if on_gpu else f"CPU, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}",
                     "images": len(images), "questions": n_questions, "repeats": args.repeats}  # fmt: skip
    parts = {p.strip() for p in args.parts.split(",")}

    if "circular" in parts:
        circular_items = [
            ImagePrompts(img, [chat(single(k, rot)) for k, (_, opts) in enumerate(levels) for rot in rotations(opts)])
            for img, levels in zip(images, questions)
        ]
        shifts = max(len(opts) for levels in questions for _, opts in levels)
        per_rotation = [
            [ImagePrompts(img, [chat(single(k, rotations(opts)[r % len(opts)])) for k, (_, opts) in enumerate(levels)])
             for img, levels in zip(images, questions)]
            for r in range(shifts)
        ]  # fmt: skip
        protocols = {
            "plain": lambda: batched.logits(plain_items),
            "circular": lambda: batched.logits(circular_items),
            "naive": lambda: [batched.logits(items) for items in per_rotation],
        }
        times = interleaved(protocols)
        ratios = {name: sorted(round(a / b, 2) for a, b in zip(times[name], times["plain"])) for name in ("circular", "naive")}
        suffixes = sum(len(i.prompts) for i in circular_items)
        figures["circular"] = {
            "suffixes": {"plain": n_questions, "circular": suffixes},
            "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
            "ratio_vs_plain": ratios,
        }
        # the circular suffixes give the rotated questions' own letters (exactness is tested in
        # tests/modules/test_vllm_evaluator_modes.py); here: same picks as the naive loop
        mine = batched.logits(circular_items)
        naive = [batched.logits(items) for items in per_rotation]
        same = total = 0
        for i, levels in enumerate(questions):
            row = 0
            for k, (_, opts) in enumerate(levels):
                for r in range(len(opts)):
                    a = int(batched.letter_scores(mine[i][row], len(opts)).argmax())
                    b = int(batched.letter_scores(naive[r][i][k], len(opts)).argmax())
                    same, total, row = same + (a == b), total + 1, row + 1
        figures["circular"]["picks_equal_naive"] = f"{same}/{total}"

    if "modes" in parts:
        from hiertrain.vlm.stepwise import Conversation, StepwiseAnswerer

        stepwise = StepwiseAnswerer(batched)
        joint_answerer = SharedPrefixAnswerer(model, processor, max_new_tokens=7 * 6)  # "kingdom: A\n" ~ 4-6 tokens a level

        def oracle_items():
            out = []
            for img, levels in zip(images, questions):
                first = single(0, levels[0][1])
                texts = []
                for k in range(7):
                    truths = [prompts.LETTERS[opts.index(t)] for t, opts in levels[:k]]
                    later = [question(j, levels[j][1]) for j in range(1, k + 1)]
                    texts.append(chat(conditions.turn_messages(first, later, truths)))
                out.append(ImagePrompts(img, texts))
            return out

        def conversation(img, levels):
            first = single(0, levels[0][1])

            def render(replies):
                later = [question(j, levels[j][1]) for j in range(1, len(replies) + 1)]
                return chat(conditions.turn_messages(first, later, replies))

            return Conversation(img, render, [len(opts) for _, opts in levels])

        def joint_items():
            out = []
            for img, levels in zip(images, questions):
                text = prompts.joint_question([(LEVELS[k], prompts.image_prompt(0, LEVELS[k], "plant"), opts) for k, (_, opts) in enumerate(levels)])
                out.append(ImagePrompts(img, [chat(conditions.messages(text, "image", prompts.joint_system("image")))]))
            return out

        oracle = oracle_items()
        protocols = {
            "paper": lambda: [[batched.full_generate(i.image, p) for p in i.prompts] for i in plain_items],
            "independent": lambda: batched.logits(plain_items),
            "oracle_parent": lambda: batched.logits(oracle),
            "stepwise": lambda: stepwise.run([conversation(i, l) for i, l in zip(images, questions)], generate=False),
            "stepwise_generate": lambda: stepwise.run([conversation(i, l) for i, l in zip(images, questions)], generate=True),
            "joint": lambda: joint_answerer.generate(joint_items()),
        }
        for fn in protocols.values():  # warm-up of each path's shapes
            fn()
        times = interleaved(protocols)
        qps = {k: [n_questions / t for t in v] for k, v in times.items()}
        figures["modes"] = {
            "questions_per_s": {k: [round(min(v), 1), round(max(v), 1)] for k, v in qps.items()},
            "ratio_vs_paper": {k: sorted(round(q / p, 2) for q, p in zip(v, qps["paper"])) for k, v in qps.items() if k != "paper"},
        }

    print(f"{figures['device']}; {len(images)} images x 7 levels; {args.repeats} repeat(s), interleaved")
    if "circular" in figures:
        f = figures["circular"]
        print(f"\ncircular evaluation: {f['suffixes']['circular']} rotated questions vs {f['suffixes']['plain']} plain")
        print("| protocol | seconds (min - max) | x plain: median (min - max) over rounds |")
        print("| --- | ---: | ---: |")
        for name, label in (("plain", "plain, batched (default)"), ("circular", "circular: rotations as extra suffixes"),
                            ("naive", "naive: one batched call per rotation")):  # fmt: skip
            s = f["seconds"][name]
            r = f["ratio_vs_plain"].get(name)
            print(f"| {label} | {min(s):.3f} - {max(s):.3f} | {'1' if r is None else f'{statistics.median(r):.2f} ({r[0]:.2f} - {r[-1]:.2f})'} |")
        print(f"circular picks == naive loop picks: {f['picks_equal_naive']}")
    if "modes" in figures:
        f = figures["modes"]
        labels = {
            "paper": "paper loop: per question, image re-encoded, generate 5 tokens",
            "independent": "independent (default): batched, letter logits",
            "oracle_parent": "oracle_parent: true earlier answers as chat turns, batched, letter logits",
            "stepwise": "stepwise: own earlier answers, KV cache grows per turn, letter logits",
            "stepwise_generate": "stepwise, generate 5 tokens per turn",
            "joint": "joint: one question per image, generate 42 tokens",
        }
        print(f"\ninference modes: questions/s ({n_questions} questions = {len(images)} images x 7 levels)")
        print("| mode | questions/s (min - max) | x paper: median (min - max) over rounds |")
        print("| --- | ---: | ---: |")
        for key, label in labels.items():
            q, r = f["questions_per_s"][key], f["ratio_vs_paper"].get(key)
            print(f"| {label} | {q[0]:.1f} - {q[1]:.1f} | {'1' if r is None else f'{statistics.median(r):.2f} ({r[0]:.2f} - {r[-1]:.2f})'} |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
