"""Served evaluation speed: questions/s with 1 vs 8 requests in flight, against `transformers serve`.

The same questions (synthetic set, 4 levels per image, image mode, `answer: generate`) are
answered twice through `ServedEvaluator`, each time into a fresh run directory (so the request
cache starts empty): `max_concurrency` 1, then 8. Prints both rates, the ratio, and whether the
two runs' predictions are byte-identical (they must be: greedy, one request per question).

    python bench/served_speed.py [--images 8] [--json out.json]
                                 [--base-url URL --model ID]   # an already running server instead

By default a tiny random-init Qwen2.5-VL is built and served on 127.0.0.1 (a free port) with
`transformers serve --device cpu`. That server runs one `generate` at a time (no continuous
batching for this model), so concurrency only overlaps the HTTP, image decoding and
preprocessing of one request with the generation of another; the figure that matters is on a
GPU server (vLLM/SGLang batch concurrent requests).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, log: Path, ready_within: float = 180.0) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("transformers")), "serve", str(model_dir), "--host", "127.0.0.1",
           "--port", str(port), "--device", "cpu", "--dtype", "float32"]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + ready_within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"transformers serve exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.25)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(f"transformers serve not ready within {ready_within}s")


def timed_run(base_url: str, model: str, synth: Path, root: Path, concurrency: int, images: int) -> tuple[float, int]:
    """Seconds of `trainer.test` and the number of questions asked."""
    from lightning.pytorch import Trainer

    from hiertrain.datamodules.questions import HierVQADataModule
    from hiertrain.modules.served_evaluator import ServedEvaluator

    dm = HierVQADataModule(str(synth / "questions_random.jsonl"), taxonomy=str(synth / "taxonomy.json"),
                           limit=images, batch_size=images)  # fmt: skip
    evaluator = ServedEvaluator(base_url, model, max_concurrency=concurrency, progress_bar=False, run_name="run")
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(root))  # fmt: skip
    start = time.perf_counter()
    trainer.test(evaluator, datamodule=dm, verbose=False)
    seconds = time.perf_counter() - start
    return seconds, json.loads((root / "run/run.json").read_text())["usage"]["requests"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--base-url")
    parser.add_argument("--model")
    args = parser.parse_args()

    from hiertrain.taxonomy.synth import make_synthetic
    from hiertrain.vlm.tiny import make_tiny

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_synthetic(tmp / "synth", images_per_leaf=3, seed=0, image_size=448)
        proc = None
        if args.base_url:
            base_url, model = args.base_url, args.model
        else:
            model = str(make_tiny("qwen2_5_vl", tmp / "tiny", seed=0))
            proc, base_url = start_server(Path(model), tmp / "serve.log")
        try:
            timed_run(base_url, model, tmp / "synth", tmp / "warmup", 1, 1)  # first-request costs out of the figures
            rates = {}
            for concurrency in (1, 8):
                seconds, questions = timed_run(base_url, model, tmp / "synth", tmp / f"c{concurrency}", concurrency,
                                               args.images)  # fmt: skip
                rates[concurrency] = questions / seconds
                print(f"concurrency {concurrency}: {questions} questions in {seconds:.2f}s = {rates[concurrency]:.2f} questions/s")
        finally:
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
        same = (tmp / "c1/run/predictions.jsonl").read_bytes() == (tmp / "c8/run/predictions.jsonl").read_bytes()
    result = {"server": "transformers serve (cpu)" if proc else base_url, "model": model if not proc else "tiny qwen2_5_vl",
              "images": args.images, "questions_per_s": {str(k): round(v, 3) for k, v in rates.items()},
              "ratio_8_vs_1": round(rates[8] / rates[1], 3), "identical_predictions": same}  # fmt: skip
    print(f"ratio 8 vs 1: {result['ratio_8_vs_1']:.2f}x; predictions identical: {same}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
