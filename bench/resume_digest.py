"""Resume cost of the per-sample request digest: a rerun of a finished `hiertrain test` with every
sample's digest checked, side by side with the same rerun reusing the samples by id only.

Since issue 21 (hiertrain.runs.request_digest) a resumed run serves every finished sample that has
a stored digest again: the data loader reads its image, the backend renders its request (the chat
texts after the processor's template, the image file's SHA-256) and the model is called only if the
digest differs from the stored one. Lines without a digest (written before it existed) are reused
by id, as before: their samples are not served at all. This bench measures, in one run, on a tiny
random-init Qwen2.5-VL (`hiertrain tiny`) and the synthetic image set (hiertrain.taxonomy.synth,
448 px images = 256 visual tokens each), both built once in the work folder (not timed):

- `full`: `hiertrain test` (logits answers, batch 4) on N image questions in an empty run folder:
  the cost of answering N samples;
- `digest`: the same command again on a copy of that run folder (every sample done, every digest
  matches: nothing is asked, every sample is served and its digest recomputed);
- `id-only`: the same command on a copy whose predictions lines have their `"request"` key removed
  (every sample reused by id, none served: the resume before the digest);

each `--repeats` times (default 3; min / median / max printed), every run in its own child process
(wall time and the child's CPU time, user + system), with the resumes on fresh copies of the first
full run's folder. `--modes image,text` also times text mode (the leaf's name instead of the image:
no image read or hashed). Printed per mode: the table, `digest / full` and
`(digest - id-only) / N` in ms per done sample (medians), and whether each resume's metrics.json is
byte-identical to the full run's. `--profile` runs one digest resume in process under cProfile
and prints where its test loop's time goes (image decode, template render, image hashing).
Every `hiertrain test` pays ~6 s of start-up (imports, model, Lightning), so a small `--samples` measures
mostly noise. Figures depend on the machine's load: the bench prints `uptime` before and after.

    python bench/resume_digest.py [--samples 1920] [--repeats 3] [--modes image,text] [--work DIR]
                                  [--batch-size 4] [--profile] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
RUN = "bench"

_CONFIG = """\
model:
  class_path: hiertrain.modules.vllm_evaluator.VLLMEvaluator
  init_args: {{pretrained: {model}, answer: logits, dtype: float32, run_name: {run}}}
data:
  class_path: hiertrain.datamodules.questions.HierVQADataModule
  init_args: {{questions: {bank}, taxonomy: {taxonomy}, mode: {mode}, limit: {limit}, batch_size: {batch}, num_workers: 0, name: synthetic, subject: shape}}
trainer: {{accelerator: cpu, devices: 1, enable_progress_bar: false, default_root_dir: {root}}}
wandb: false
"""


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _measure(argv: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """(wall seconds, CPU seconds of the child, exit code, last stderr line) of one child process
    (`bench/scale.py`'s timer: stderr to a file, `os.wait4` for the child's CPU time)."""
    from scale import _measure as measure_child

    wall, _rss, code, err, cpu = measure_child(argv, env)
    return wall, cpu, code, err


def _build(work: Path, samples: int, env: dict[str, str]) -> tuple[Path, Path, Path]:
    """The tiny Qwen2.5-VL and a synthetic set with at least `samples` images (built once)."""
    model = work / "tiny_qwen2_5_vl"
    if not (model / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "hiertrain.cli", "tiny", "--arch", "qwen2_5_vl", "--out", str(model)],
                       env=env, check=True, capture_output=True)  # fmt: skip
    per_leaf = max(3, math.ceil(samples / 24))  # 24 leaves; every split of every image is asked (no split filter)
    synth = work / f"synth_{per_leaf}"
    if not (synth / "meta.json").is_file():
        from hiertrain.taxonomy.synth import make_synthetic

        make_synthetic(synth, images_per_leaf=per_leaf, seed=0, image_size=448)
    return model, synth / "questions_random.jsonl", synth / "taxonomy.json"


def _strip_requests(run: Path) -> int:
    """Remove the `"request"` key from every predictions line (the lines a pre-digest run wrote)."""
    target = run / "predictions.jsonl"
    lines, stripped = [], 0
    for line in target.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        stripped += row.pop("request", None) is not None
        lines.append(json.dumps(row, ensure_ascii=False))
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return stripped


def _stats(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def _bench_mode(mode: str, args, model: Path, bank: Path, taxonomy: Path, env: dict[str, str]) -> dict:
    folder = args.work / f"runs_{mode}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)

    def config(root: Path) -> Path:
        path = root.with_suffix(".yaml")
        path.write_text(_CONFIG.format(model=model, bank=bank, taxonomy=taxonomy, mode=mode, limit=args.samples,
                                       batch=args.batch_size, root=root, run=RUN), encoding="utf-8")  # fmt: skip
        return path

    cli = [sys.executable, "-m", "hiertrain.cli", "test", "--config"]
    times: dict[str, list[tuple[float, float]]] = {"full": [], "digest": [], "id-only": []}
    identical: dict[str, list[bool]] = {"full": [], "digest": [], "id-only": []}
    reference: bytes | None = None
    first_full: Path | None = None
    for rep in range(args.repeats):
        for kind in ("full", "digest", "id-only"):
            root = folder / f"{kind}_{rep}"
            if kind != "full":  # a fresh copy of the first full run's folder (the copy is not timed)
                shutil.copytree(first_full, root / RUN)
                if kind == "id-only":
                    _strip_requests(root / RUN)
            wall, cpu, rc, err = _measure([*cli, str(config(root))], env)
            if rc != 0:
                raise SystemExit(f"{mode} {kind} run {rep}: hiertrain test exited {rc}\n{err}")
            metrics = (root / RUN / "metrics.json").read_bytes()
            if reference is None:
                reference, first_full = metrics, root / RUN
            identical[kind].append(metrics == reference)
            done = (root / RUN / "predictions.jsonl").read_text(encoding="utf-8").count("\n")
            if done != args.samples:
                raise SystemExit(f"{mode} {kind} run {rep}: {done} predictions lines after the run, want {args.samples}")
            times[kind].append((wall, cpu))
            print(f"  {mode:5s} {kind:7s} run {rep + 1}: {wall:6.2f} s wall, {cpu:6.2f} s CPU", flush=True)
        lines = (first_full / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
        if len(lines) != args.samples or any('"request"' not in line for line in lines):
            raise SystemExit(f"{mode}: the full run wrote {len(lines)} lines (want {args.samples}, each with a digest)")
    out = {kind: {"wall": _stats([w for w, _ in ts]), "cpu": _stats([c for _, c in ts])} for kind, ts in times.items()}
    out["runs"] = {kind: [{"wall": w, "cpu": c} for w, c in ts] for kind, ts in times.items()}
    out["metrics_identical"] = {kind: all(v) for kind, v in identical.items()}
    return out


def _print_table(mode: str, figures: dict, samples: int) -> None:
    print(f"\n{mode} mode, {samples} samples: seconds, min / median / max over the runs")
    print(f"  {'run':10s} {'wall':>22s} {'CPU':>22s}")
    for kind, label in (("full", "full run"), ("digest", "digest resume"), ("id-only", "id-only resume")):
        w, c = figures[kind]["wall"], figures[kind]["cpu"]
        print(f"  {label:14s} {w['min']:6.2f} / {w['median']:6.2f} / {w['max']:6.2f}"
              f"   {c['min']:6.2f} / {c['median']:6.2f} / {c['max']:6.2f}")  # fmt: skip
    for axis in ("wall", "cpu"):
        full, digest, ids = (figures[k][axis]["median"] for k in ("full", "digest", "id-only"))
        print(f"  {axis:4s} (medians): digest / full = {digest / full:.2f}; per done sample: digest - id-only "
              f"{(digest - ids) / samples * 1000:.1f} ms, answering it (full - id-only) {(full - ids) / samples * 1000:.1f} ms"
              f" -> the re-check is {(digest - ids) / (full - ids):.0%} of answering")  # fmt: skip
        pairs = [(d[axis] - i[axis]) / samples * 1000 for d, i in zip(figures["runs"]["digest"], figures["runs"]["id-only"])]
        print(f"        digest - id-only per done sample, run by run: {min(pairs):.2f} - {max(pairs):.2f} ms")
    print("  metrics.json byte-identical to the first full run's: "
          + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in figures["metrics_identical"].items()))  # fmt: skip


_PROFILE = r'''
import cProfile, pstats, sys
from hiertrain.cli.main import main
prof = cProfile.Profile()
prof.enable()
rc = main(["test", "--config", sys.argv[1]])
prof.disable()
stats = pstats.Stats(prof, stream=sys.stdout)
total = stats.total_tt
print(f"rc {rc}; profiled {total:.2f} s (the whole command, its lazy imports included)")
wanted = ("_answer_batch", "sample_request", "prompts_of", "render_chat", "image_sha256", "request_digest",
          "__getitem__", "_load_image", "open", "convert", "load", "setup", "_finalize", "from_pretrained")
rows = []
for (file, line, name), (cc, nc, tt, ct, callers) in stats.stats.items():
    if name in wanted and (ct > 0.01 or "hiertrain" in file):
        rows.append((ct, f"{name} ({file.split('site-packages/')[-1].split('hiertrain/')[-1]}:{line})", nc))
for ct, where, nc in sorted(rows, reverse=True)[:20]:
    print(f"  {ct:7.2f} s cumulative  {nc:6d} calls  {where}")
'''


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1920, help="questions of the run (default 1920: the full image run ~1 min on 2 cores)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command (min / median / max)")
    parser.add_argument("--modes", default="image,text", help="question modes: image, text (comma-separated)")
    parser.add_argument("--batch-size", type=int, default=4, help="data.batch_size (default 4, as the demo)")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default a fresh temporary one)")
    parser.add_argument("--profile", action="store_true", help="also profile one digest resume (cProfile)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    args.work = (args.work or Path(tempfile.mkdtemp(prefix="resume_digest_"))).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "WANDB_MODE": "disabled"}  # fmt: skip

    print(f"before: {_uptime()}", flush=True)
    model, bank, taxonomy = _build(args.work, args.samples, env)
    pngs = sorted((bank.parent / "images").glob("*.png"))
    size = statistics.mean(p.stat().st_size for p in pngs) / 1024
    print(f"work {args.work}: model {model.name}, bank {bank} ({len(pngs)} images, 448 px PNG, {size:.0f} KiB mean)", flush=True)
    results: dict = {"samples": args.samples, "repeats": args.repeats, "batch_size": args.batch_size,
                     "uptime_before": _uptime()}  # fmt: skip
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        results[mode] = _bench_mode(mode, args, model, bank, taxonomy, env)
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        _print_table(mode, results[mode], args.samples)
    if args.profile:
        mode = "image" if "image" in args.modes else args.modes.split(",")[0]
        first = args.work / f"runs_{mode}" / "full_0" / RUN
        root = args.work / f"runs_{mode}" / "profile"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(first, root / RUN)
        config = (args.work / f"runs_{mode}" / "digest_0.yaml").read_text().replace(str(args.work / f"runs_{mode}" / "digest_0"), str(root))
        path = root.with_suffix(".yaml")
        path.write_text(config, encoding="utf-8")
        print(f"\nprofile of one {mode} digest resume:", flush=True)
        subprocess.run([sys.executable, "-c", _PROFILE, str(path)], env=env, check=False)
    results["uptime_after"] = _uptime()
    print(f"\nafter: {results['uptime_after']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
