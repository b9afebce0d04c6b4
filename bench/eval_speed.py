"""Evaluation speed: the paper's protocol vs hiertrain's per-image and batched paths, same questions.

(a) paper: one question at a time; the image is processed and encoded again for every level;
    `generate` up to 5 tokens; the letter is read from the reply.
(b) per image: per image one vision encoding and one prefix prefill, its 7 levels as one batch
    on a copy of the KV cache, letter logits (hiertrain's path before batching images;
    `max_batch_tokens=1`).
(c) batched (hiertrain's default): several images per step, one vision pass + one prefill of
    their right-padded prefixes, all their levels on the expanded cache (suffixes of very
    different lengths in separate forwards), bounded by `max_batch_tokens` (default per device,
    `--max-batch-tokens` to set it).
Like the `hiertrain` command, the bench keeps freed host memory in the process
(hiertrain.cli.malloc; `HIERTRAIN_MALLOC=default` runs it with glibc as is). Per set it also
prints the minor page faults per image of each protocol and, from one more call with the
stages timed, where the time goes (ms per image).
Also: (d) batched `generate` (shared prefix, greedy) and, on mixed sizes, (c') batched with
equal-length groups instead of padding. Two image sets: 448 px (256 visual tokens each) and
mixed CUB-like sizes (500x333, 375x500, 500x375, 448x448, 500x281, 333x500). All on the same
tiny random-init Qwen2.5-VL and the same 7-level questions, in one process, one after the
other; `--repeats N` runs every timing N times and reports min - max.
A third set, `taxonomy` (the taxonomy-in-context condition, hiertrain.protocol.conditions): the
448 px images (`--taxonomy-images`, default 2) with the paper's CUB taxonomy (~9k tokens) in the
system prompt of every question: (a) the paper's loop re-reads it for every question, (b) per
image once per image, (c) hiertrain (`GlobalPrefixAnswerer`) once per run, then batched images.

    python bench/eval_speed.py [--images 8] [--repeats 1] [--sets 448,mixed,taxonomy] [--json out.json]
                               [--pretrained DIR] [--device cpu|cuda[:N]] [--dtype float32|...]
                               [--max-batch-tokens N] [--threads N]

On a GPU (`--device cuda --dtype bfloat16 --pretrained DIR`) the model is loaded straight onto
the device and every timing is bracketed by `torch.cuda.synchronize()`.

Checks printed with the figures: batched predictions == per-image predictions (and the largest
logit difference), shared-prefix generate == the paper's generate. A random-init model rarely
replies with a letter, so logits-vs-generate agreement means little on it;
`--pretrained runs/demo/lora/merged` (the demo's LoRA-tuned tiny Qwen2.5-VL) measures it on a
model that does.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

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


MIXED_SIZES = [(500, 333), (375, 500), (500, 375), (448, 448), (500, 281), (333, 500)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="time every protocol this many times (min - max)")
    parser.add_argument("--sets", default="448,mixed,taxonomy", help="image sets: 448, mixed, taxonomy (comma-separated)")
    parser.add_argument("--taxonomy-images", type=int, default=2, help="images of the taxonomy set (default 2)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--pretrained", default=None, help="a Qwen2.5-VL checkpoint dir (default: a fresh tiny one)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, ...")
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="weights' dtype (default float32)"
    )
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="batched path's step budget (default per device)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default torch's; 1 on a loaded shared machine)"
    )
    args = parser.parse_args(argv)

    from hiertrain.cli.malloc import retain_freed_memory

    malloc_tuned = retain_freed_memory()  # as the `hiertrain` CLI does (HIERTRAIN_MALLOC=default: glibc as is)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from PIL import Image

    from hiertrain.protocol import conditions
    from hiertrain.protocol import prompts
    from hiertrain.protocol.answers import parse_letter
    from hiertrain.taxonomy.synth import make_synthetic
    from hiertrain.vlm.loading import load_vllm
    from hiertrain.vlm.global_prefix import GlobalPrefixAnswerer
    from hiertrain.vlm.prefix_cache import ImagePrompts, SharedPrefixAnswerer, render_chat
    from hiertrain.vlm.tiny import make_tiny

    work = Path(tempfile.mkdtemp(prefix="eval_speed_"))
    checkpoint = args.pretrained or make_tiny("qwen2_5_vl", work / "tiny", seed=0)
    synth = make_synthetic(work / "synth", images_per_leaf=3, seed=0, image_size=448)
    image_files = sorted(synth["images_dir"].glob("*.png"))[: args.images]
    base = [Image.open(p).convert("RGB") for p in image_files]
    questions = seven_level_questions(len(base))
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit(f"eval_speed: --device {args.device} but torch sees no CUDA device")
    # CPU: loaded as before (no device_map); GPU: straight onto the device, no CPU copy first.
    model, processor = load_vllm(str(checkpoint), args.dtype, device_map=args.device if args.device != "cpu" else None)

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize(args.device)

    per_image = SharedPrefixAnswerer(model, processor, max_new_tokens=5, max_batch_tokens=1)
    batched = SharedPrefixAnswerer(model, processor, max_new_tokens=5, max_batch_tokens=args.max_batch_tokens)
    grouped = SharedPrefixAnswerer(
        model, processor, max_new_tokens=5, max_batch_tokens=args.max_batch_tokens, pad_prefixes=False
    )

    def visual_tokens(image) -> int:
        grid = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[image], return_tensors="pt")
        return int(grid["image_grid_thw"].prod()) // 4

    def chat(levels, k, system=None):
        question = prompts.question_text(prompts.image_prompt(0, LEVELS[k], "plant"), levels[k][1])
        return render_chat(processor, conditions.messages(question, "image", system))

    def picks(all_logits):
        return [
            [int(batched.letter_scores(r, len(o)).argmax()) for r, (_, o) in zip(rows, levels)]
            for rows, levels in zip(all_logits, questions)
        ]

    from hiertrain.vlm.family import family_of

    family = family_of(model)
    embed = family.language_model(model).get_input_embeddings()
    llm_params = sum(p.numel() for p in family.language_model(model).parameters()) - embed.weight.numel()
    vision_params = sum(p.numel() for p in family.vision_tower(model).parameters())
    head = model.get_output_embeddings().weight.numel()

    def work_flop(items, tokens, shared: int = 0) -> float:
        """The batched path's matmul work (2 x params per token; attention left out): the vision
        tower over each image's patches (4 per visual token), the LLM over each prefix once and
        every suffix, the LM head once per question; `shared` tokens opening every prefix count once."""
        prepared = batched._prepare(items)
        llm_tokens = sum(p.length + sum(len(x) for x in p.suffixes) for p in prepared) - shared * (len(prepared) - 1)
        questions = sum(len(p.suffixes) for p in prepared)
        return 2.0 * (vision_params * 4 * sum(tokens) + llm_params * llm_tokens + head * questions)

    warm = ImagePrompts(base[0], [chat(questions[0], k) for k in range(2)])
    per_image.full_generate(warm.image, warm.prompts[0])
    batched.logits([warm, warm])
    if on_gpu:  # kernels / cuBLAS plans of the batched decode are first built here, not in the timings
        batched.generate([warm, warm])

    def stages(items) -> dict:
        """Where the time goes, in ms per image: one more batched call (all images) and one more
        paper pass (the first 2 images: enough for a per-image figure, short on a GPU too), with
        the answerers' stages wrapped and the vision tower timed by forward hooks."""
        spent: dict[str, float] = {}
        tower = family.vision_tower(model)

        def timed(obj, name, key):
            inner = getattr(obj, name)

            def wrapper(*a, **k):
                sync()
                start = time.perf_counter()
                try:
                    return inner(*a, **k)
                finally:
                    sync()
                    spent[key] = spent.get(key, 0.0) + time.perf_counter() - start

            setattr(obj, name, wrapper)

        def vision_start(*_):
            sync()
            spent["_vision_start"] = time.perf_counter()

        def vision_end(*_):
            sync()
            spent["vision"] = spent.get("vision", 0.0) + time.perf_counter() - spent.pop("_vision_start")

        hooks = [tower.register_forward_pre_hook(vision_start), tower.register_forward_hook(vision_end)]
        out = {}
        try:
            def paper_loop(images):
                return [[per_image.full_generate(i.image, p) for p in i.prompts] for i in images]

            for answerer, label, images, run in (
                (batched, "hiertrain", items, batched.logits), (per_image, "paper", items[:2], paper_loop)
            ):
                spent.clear()
                names = ("_prepare", "_step_inputs", "_answer_on_cache") if label == "hiertrain" else ("_process",)
                for name in names:
                    timed(answerer, name, name)
                sync()
                start = time.perf_counter()
                run(images)
                sync()
                total = time.perf_counter() - start
                for name in names:
                    del answerer.__dict__[name]  # back to the class's method
                ms = {k: 1000 * v / len(images) for k, v in spent.items()}
                if label == "hiertrain":
                    parts = {"split + tokenize": ms["_prepare"], "processor": ms["_step_inputs"], "vision tower": ms["vision"],
                             "suffix forwards": ms["_answer_on_cache"]}
                    parts["prefill (LLM) + rest"] = 1000 * total / len(images) - sum(parts.values())
                else:
                    parts = {"processor": ms["_process"], "vision tower": ms["vision"]}
                    parts["generate (LLM) + rest"] = 1000 * total / len(images) - sum(parts.values())
                out[label] = {k: round(v, 1) for k, v in parts.items()} | {"total": round(1000 * total / len(images), 1)}
        finally:
            for hook in hooks:
                hook.remove()
        return out

    def measure(images, system=None) -> dict:
        items = [ImagePrompts(img, [chat(levels, k, system) for k in range(7)]) for img, levels in zip(images, questions)]
        n_questions = 7 * len(items)
        protocols = {
            "paper": lambda: [[per_image.full_generate(i.image, p) for p in i.prompts] for i in items],
            "per_image": lambda: per_image.logits(items),
            "hiertrain": lambda: batched.logits(items),
            "hiertrain_generate": lambda: batched.generate(items),
        }
        shared = 0
        if system is not None:  # a fresh answerer per timing: its one run-wide prefill is timed too
            global_answerer = GlobalPrefixAnswerer(model, processor, max_new_tokens=5, max_batch_tokens=args.max_batch_tokens)
            global_answerer.logits(items[:1])
            shared = global_answerer.global_tokens
            protocols["hiertrain"] = lambda: GlobalPrefixAnswerer(model, processor, 5, args.max_batch_tokens).logits(items)
            protocols["hiertrain_generate"] = lambda: GlobalPrefixAnswerer(model, processor, 5, args.max_batch_tokens).generate(items)
        if len({img.size for img in images}) > 1:
            protocols["hiertrain_grouped"] = lambda: grouped.logits(items)
        if on_gpu:  # this set's shapes (the batched step, its decode) are planned here, not in the timings
            batched.logits(items)
            batched.generate(items)
        times: dict[str, list[float]] = {name: [] for name in protocols}
        faults: dict[str, int] = {name: 0 for name in protocols}
        results = {}
        for _ in range(args.repeats):
            for name, fn in protocols.items():
                sync()
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                start = time.perf_counter()
                results[name] = fn()
                sync()
                times[name].append(time.perf_counter() - start)
                faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        qps = {k: [n_questions / t for t in v] for k, v in times.items()}
        parsed = [
            (parse_letter(reply, opts), mine)
            for replies, mine_row, levels in zip(results["paper"], picks(results["hiertrain"]), questions)
            for reply, mine, (_, opts) in zip(replies, mine_row, levels)
        ]
        readable = [(p, m) for p, m in parsed if p is not None]
        same_replies = sum(
            a == b for ra, rb in zip(results["paper"], results["hiertrain_generate"]) for a, b in zip(ra, rb)
        )
        diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(results["hiertrain"], results["per_image"]))
        same_picks = sum(
            a == b for ra, rb in zip(picks(results["hiertrain"]), picks(results["per_image"])) for a, b in zip(ra, rb)
        )
        tokens = [visual_tokens(img) for img in images]
        flop = work_flop(items, tokens, shared)
        paper_q = qps["paper"]

        def ratio(name: str) -> list[float]:
            return [round(q / p, 2) for q, p in zip(qps[name], paper_q)]

        return {
            "images": len(items),
            "questions": n_questions,
            "image_sizes": sorted({f"{w}x{h}" for w, h in (img.size for img in images)}),
            "visual_tokens_per_image": tokens[0] if len(set(tokens)) == 1 else f"{min(tokens)}-{max(tokens)}",
            "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
            "page_faults_per_image": {k: round(v / args.repeats / len(items)) for k, v in faults.items()},
            "questions_per_s": {k: round(min(v), 2) if len(v) == 1 else [round(min(v), 2), round(max(v), 2)] for k, v in qps.items()},
            "ratio_vs_paper": {k: ratio(k) for k in qps if k != "paper"},
            "model_gflop_per_question": round(flop / n_questions / 1e9, 2),
            "achieved_tflops_batched": round(flop / min(times["hiertrain"]) / 1e12, 3),
            "batched_picks_equal_per_image": f"{same_picks}/{n_questions}",
            "batched_vs_per_image_max_abs_logit_diff": diff,
            "paper_replies_parseable": f"{len(readable)}/{n_questions}",
            "logits_agree_with_parsed_generate": f"{sum(p == m for p, m in readable)}/{len(readable)}",
            "shared_prefix_generate_equals_paper_generate": f"{same_replies}/{n_questions}",
            **({"run_wide_prefix_tokens": shared} if system is not None else {}),
            **({"ms_per_image": stages(items)} if system is None else {}),
        }

    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    figures: dict = {}
    figures["host_malloc"] = "freed memory retained (hiertrain.cli.malloc)" if malloc_tuned else "C library default"
    if args.device == "cpu":
        figures["device"] = f"CPU, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}"
    elif on_gpu:
        figures["device"] = f"{torch.cuda.get_device_name(args.device)} ({args.device}), dtype {args.dtype}"
    else:
        figures["device"] = f"{args.device}, dtype {args.dtype}"
    figures["max_batch_tokens"] = batched.max_batch_tokens
    for name in sets:
        if name == "448":
            images = base
        elif name == "mixed":
            images = [img.resize(MIXED_SIZES[i % len(MIXED_SIZES)]) for i, img in enumerate(base)]
        elif name == "taxonomy":  # the paper's CUB taxonomy in the system prompt (eval_CUB_tax_qwen.py)
            context = conditions.taxonomy_context("hiertrain://taxonomies/hierarchy_CUB200.json")
            figures[name] = measure(base[: args.taxonomy_images], conditions.system_prompt("taxonomy", "image", context=context))
            continue
        else:
            raise SystemExit(f"eval_speed: unknown image set {name!r} (448, mixed, taxonomy)")
        figures[name] = measure(images)
    if args.device == "cpu":
        figures["load_average_after"] = round(os.getloadavg()[0], 1)
    else:
        figures.update(torch_device=args.device, dtype=args.dtype, model=str(checkpoint))
        if on_gpu:
            figures["max_memory_allocated_gb"] = round(torch.cuda.max_memory_allocated(args.device) / 2**30, 2)
    if "448" in figures:  # the keys bench/gpu_check.py and older reports read
        first = figures["448"]
        figures.update(
            images=first["images"], questions=first["questions"], visual_tokens_per_image=first["visual_tokens_per_image"],
            questions_per_s={k: v if not isinstance(v, list) else v[0] for k, v in first["questions_per_s"].items()},
            speedup_default_vs_paper=min(first["ratio_vs_paper"]["hiertrain"]),
            speedup_per_image_vs_paper=min(first["ratio_vs_paper"]["per_image"]),
            speedup_generate_vs_paper=min(first["ratio_vs_paper"]["hiertrain_generate"]),
        )

    def span(values) -> str:
        return f"{values:.2f}" if not isinstance(values, list) else f"{values[0]:.2f} - {values[1]:.2f}"

    labels = {
        "paper": "(a) paper: per question, image re-encoded, generate 5 tokens",
        "per_image": "(b) per image: 1 vision pass + 1 prefill per image, levels batched, letter logits",
        "hiertrain": "(c) batched (default): images x levels per step, letter logits",
        "hiertrain_grouped": "(c') batched, equal-length groups instead of padding",
        "hiertrain_generate": "(d) batched generate: shared prefix, greedy 5 tokens",
    }
    print(
        f"{figures['device']}; host malloc: {figures['host_malloc']}; max_batch_tokens {figures['max_batch_tokens']}; "
        f"{args.repeats} run(s) each (min - max)"
    )
    taxonomy_labels = {
        "paper": "(a) paper: per question, taxonomy + image re-read, generate 5 tokens",
        "per_image": "(b) per image: taxonomy + image prefilled once per image, levels batched, letter logits",
        "hiertrain": "(c) hiertrain: taxonomy prefilled once per run, then batched images, letter logits",
        "hiertrain_generate": "(d) hiertrain generate: taxonomy once per run, batched, greedy 5 tokens",
    }
    for name in sets:
        f = figures[name]
        if name == "taxonomy":
            print(f"\ntaxonomy in context: the CUB taxonomy ({f['run_wide_prefix_tokens']} tokens before the image) in every prompt")
        print(f"\n{name}: {f['images']} images ({', '.join(f['image_sizes'])}; {f['visual_tokens_per_image']} visual tokens) x 7 levels")
        print("| protocol | questions/s | x paper (median (min - max) over the runs) |")
        print("| --- | ---: | ---: |")
        for key, label in (taxonomy_labels if name == "taxonomy" else labels).items():
            if key in f["questions_per_s"]:
                r = f["ratio_vs_paper"].get(key)
                rs = "1" if r is None else (f"{r[0]}" if len(r) == 1 else f"{statistics.median(r):.2f} ({min(r)} - {max(r)})")
                print(f"| {label} | {span(f['questions_per_s'][key])} | {rs} |")
        print(f"work {f['model_gflop_per_question']} GFLOP/question; batched path {f['achieved_tflops_batched']} TFLOP/s achieved")
        print(
            f"batched picks == per-image picks: {f['batched_picks_equal_per_image']} (max |logit diff| "
            f"{f['batched_vs_per_image_max_abs_logit_diff']:.2e}); paper replies parseable: {f['paper_replies_parseable']}; "
            f"logits agree with parsed replies: {f['logits_agree_with_parsed_generate']}; shared-prefix generate == paper "
            f"generate: {f['shared_prefix_generate_equals_paper_generate']}"
        )
        print("minor page faults per image: " + ", ".join(f"{k} {v}" for k, v in f["page_faults_per_image"].items()))
        for label, parts in f.get("ms_per_image", {}).items():
            print(f"ms per image, {label}: " + ", ".join(f"{k} {v}" for k, v in parts.items()))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
