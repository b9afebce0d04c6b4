"""One GPU check, three measurements side by side: build a Qwen2.5-VL, evaluation speed, LoRA steps.

1. build  a random-init Qwen2.5-VL with `hiertrain.vlm.tiny.make_tiny` (tiny tokenizer/processor, no
          download): `--scale 7b` merges bench/sizes/qwen2_5_vl_7b.yaml (Qwen2.5-VL-7B-Instruct's
          sizes, 152064 embedding rows) into the tiny config; `--scale tiny` keeps the tiny sizes.
          The model is created directly on `--device` in `--dtype` (default-device context +
          default dtype), then written with `save_pretrained`, so steps 2 and 3 load it through
          the real `from_pretrained` path (`hiertrain.vlm.loading.load_vllm`).
2. eval   bench/eval_speed.py on that checkpoint (`--device/--dtype`): the paper's protocol vs
          hiertrain's per-image path vs the batched path (default, `max_batch_tokens` from the
          device's memory) vs batched generate, on 448 px images (256 visual tokens) and on mixed
          CUB-like sizes, 7-level questions; questions/s, ratios, peak memory, the batched path's
          matmul work and achieved TFLOP/s (utilisation estimate against the device's bf16 peak).
3. lora   the real CLI in-process, `hiertrain.cli.main.main(["fit", "--config",
          "configs/lora/qwen2_5_vl_7b_inat21_plant.yaml", ...])` with the paper config's GPU
          switches (bf16 weights, bf16-mixed, gradient checkpointing, rank 64, batch 2 records,
          accumulation 2), data = a 448 px synthetic set from `hiertrain data synth`, one device,
          no W&B, `--trainer.max_steps` small; s/step (first steps excluded), peak
          `torch.cuda.max_memory_allocated`, whether it finished.

Each step runs in its own try/except: a failure is recorded (error text in the JSON) and the
next step still runs (eval and lora need the checkpoint of step 1). The JSON and the Markdown
table are rewritten after every step, so a run killed half-way still leaves what it measured.

    python bench/gpu_check.py --scale 7b --device cuda --out $OUT                # on the GPU machine
    python bench/gpu_check.py --scale 7b --device cuda --only build,eval --out $OUT   # evaluation only
    OMP_NUM_THREADS=1 python bench/gpu_check.py --scale tiny --device cpu --out /tmp/gc   # here

See bench/gpu_check.md for the device command (wheels, carry list).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import platform
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
for _path in (str(REPO), str(BENCH)):  # hiertrain without an install; `gpu_check.StepTimer` for jsonargparse
    if _path not in sys.path:
        sys.path.insert(0, _path)

SIZES_7B = BENCH / "sizes" / "qwen2_5_vl_7b.yaml"
LORA_CONFIG = REPO / "configs" / "lora" / "qwen2_5_vl_7b_inat21_plant.yaml"
SYNTH_LEVELS = ["family", "shape", "colour", "texture"]

# Per scale: eval images (x 7 levels), LoRA optimizer steps, synthetic images per leaf (24 leaves,
# 60% train, 20% val), fraction of the val batches per check (7b: 48 val images = 6 batches of 8 ->
# 2; tiny: 3 -> 1), micro-batches between checks, steps left out of the mean. The val limit is a
# fraction on purpose: with huggingface_hub 1.x imported first, Python's typing cache hands Lightning
# `Union[float, int]` for its `Optional[Union[int, float]]`, so jsonargparse reads
# `--trainer.limit_val_batches=2` as 2.0, which Lightning rejects (a float must be <= 1).
SCALES: dict[str, dict[str, Any]] = {
    "7b": {"images": 32, "steps": 20, "per_leaf": 10, "val_fraction": 0.34, "val_every": 16, "skip": 3, "workers": None},
    "tiny": {"images": 4, "steps": 6, "per_leaf": 5, "val_fraction": 0.34, "val_every": 4, "skip": 2, "workers": 0},
}
# dense bf16 tensor-core peaks (vendor data sheets, SXM parts) for the utilisation estimate
PEAK_BF16_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "A10G": 70}
PACKAGES = (
    "torch", "transformers", "huggingface_hub", "tokenizers", "safetensors", "accelerate", "peft", "lightning",
    "torchmetrics", "jsonargparse", "docstring_parser", "typeshed_client", "torchvision", "pillow", "numpy",
)  # fmt: skip

T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - T0:6.1f}s] {message}", flush=True)


try:  # the LoRA step's timing callback; a class path (`gpu_check.StepTimer`) for jsonargparse
    from lightning.pytorch.callbacks import Callback
except ImportError:  # noqa: BLE001 - the other steps still run; the lora step records the error
    Callback = object  # type: ignore[misc,assignment]


class StepTimer(Callback):  # type: ignore[misc,valid-type]
    """Times every training micro-batch (CUDA-synchronised) and sums them per optimizer step.

    Validation and checkpoint saving fall between batches, so they are not in the step times;
    they are timed separately. Writes its figures to `out` (JSON) when training ends.
    """

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.micro: list[float] = []
        self.steps: list[dict[str, float]] = []
        self.val_seconds: list[float] = []
        self._pending = {"seconds": 0.0, "micro_batches": 0, "sequences": 0, "tokens": 0}
        self._last_step = 0
        self._t = 0.0
        self._train_start = 0.0

    @staticmethod
    def _sync(trainer: Any) -> None:
        import torch

        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._sync(trainer)
        self._train_start = time.perf_counter()
        self._last_step = trainer.global_step
        self.settings = {  # what the trainer really got from the configs + overrides
            "accelerator": type(trainer.accelerator).__name__,
            "strategy": type(trainer.strategy).__name__,
            "devices": trainer.num_devices,
            "precision": str(trainer.precision),
            "max_steps": trainer.max_steps,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "gradient_clip_val": trainer.gradient_clip_val,
            "limit_val_batches": trainer.limit_val_batches,
            "val_check_interval": trainer.val_check_interval,
            "num_training_batches": trainer.num_training_batches,
            "gradient_checkpointing": bool(getattr(pl_module, "hparams", {}).get("gradient_checkpointing")),
            "model_dtype": str(next(pl_module.parameters()).dtype),
            "trainable_params": sum(p.numel() for p in pl_module.parameters() if p.requires_grad),
            "trainable_dtypes": sorted({str(p.dtype) for p in pl_module.parameters() if p.requires_grad}),
        }
        print(f"StepTimer: trainer settings {json.dumps(self.settings)}", flush=True)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._sync(trainer)
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._sync(trainer)
        seconds = time.perf_counter() - self._t
        self.micro.append(seconds)
        pending = self._pending
        pending["seconds"] += seconds
        pending["micro_batches"] += 1
        if isinstance(batch, dict) and "attention_mask" in batch:
            pending["sequences"] += int(batch["attention_mask"].shape[0])
            pending["tokens"] += int(batch["attention_mask"].sum())
        if trainer.global_step != self._last_step:  # the optimizer stepped in this batch
            self.steps.append(dict(pending))
            self._pending = {"seconds": 0.0, "micro_batches": 0, "sequences": 0, "tokens": 0}
            self._last_step = trainer.global_step

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        self._sync(trainer)
        self._t_val = time.perf_counter()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or not hasattr(self, "_t_val"):
            return
        self._sync(trainer)
        self.val_seconds.append(time.perf_counter() - self._t_val)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._write(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._write(trainer, exception=f"{type(exception).__name__}: {exception}"[:2000])

    def _write(self, trainer: Any, **extra: Any) -> None:
        import torch

        with contextlib.suppress(Exception):  # after a CUDA error a sync may raise again
            self._sync(trainer)
        device = trainer.strategy.root_device
        figures = {
            **extra,
            "settings": getattr(self, "settings", None),
            "num_val_batches": list(getattr(trainer, "num_val_batches", []) or []),
            "global_step": trainer.global_step,
            "train_seconds": time.perf_counter() - self._train_start,
            "steps": self.steps,
            "micro_batch_seconds": self.micro,
            "validation_seconds": self.val_seconds,
        }
        if device.type == "cuda":
            figures["max_memory_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            figures["max_memory_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 2**30
        self.out.write_text(json.dumps(figures, indent=2) + "\n")


# ---------------------------------------------------------------------------------------- steps


class StepFailed(RuntimeError):
    """A step that failed after measuring something: `figures` are kept in the results."""

    def __init__(self, message: str, figures: dict[str, Any]) -> None:
        super().__init__(message)
        self.figures = figures


@contextlib.contextmanager
def default_dtype(name: str):
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, name))
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def safetensors_params(folder: Path) -> tuple[int, dict[str, int]]:
    """Parameter count from the safetensors headers (no tensor is read) and per-dtype counts."""
    total, by_dtype = 0, {}
    for file in sorted(folder.glob("*.safetensors")):
        with file.open("rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            n = 1
            for d in info["shape"]:
                n *= d
            total += n
            by_dtype[info["dtype"]] = by_dtype.get(info["dtype"], 0) + n
    return total, by_dtype


def _repo_relative(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def step_env(args: argparse.Namespace) -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    import transformers

    env = {
        "python": platform.python_version(),
        "versions": versions,
        "transformers_path": str(Path(transformers.__file__).parent),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if args.device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(args.device)
        env.update(
            device_name=props.name,
            capability=f"{props.major}.{props.minor}",
            total_memory_gb=round(props.total_memory / 2**30, 1),
            torch_cuda=torch.version.cuda,
        )
    else:
        env["device_name"] = f"CPU ({platform.processor() or platform.machine()})"
    return env


def step_build(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch
    import transformers
    import yaml

    from hiertrain.vlm.tiny import make_tiny

    overrides = yaml.safe_load(SIZES_7B.read_text()) if args.scale == "7b" else None
    out = work / f"qwen2_5_vl_{args.scale}"
    on_gpu = args.device.startswith("cuda")
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(args.device)
    saving = {"seconds": 0.0}
    original_save = transformers.PreTrainedModel.save_pretrained

    def timed_save(self, *a, **k):  # split init time from writing time; helpers it creates stay on the CPU
        start = time.perf_counter()
        try:
            with torch.device("cpu"):
                return original_save(self, *a, **k)
        finally:
            saving["seconds"] += time.perf_counter() - start

    transformers.PreTrainedModel.save_pretrained = timed_save
    built_on, fallback_error = args.device, None
    start = time.perf_counter()
    try:
        try:
            with default_dtype(args.dtype), torch.device(args.device):
                make_tiny("qwen2_5_vl", out, seed=0, overrides=overrides)
        except Exception:  # noqa: BLE001 - without a checkpoint nothing else can run: build it on the CPU
            if args.device == "cpu":
                raise
            fallback_error = traceback.format_exc()[-3000:]
            log(f"build: on {args.device} failed, building on the CPU instead:\n{fallback_error}")
            shutil.rmtree(out, ignore_errors=True)
            free_memory()
            built_on, saving["seconds"] = "cpu (fallback)", 0.0
            start = time.perf_counter()
            with default_dtype(args.dtype):
                make_tiny("qwen2_5_vl", out, seed=0, overrides=overrides)
    finally:
        transformers.PreTrainedModel.save_pretrained = original_save
    total = time.perf_counter() - start
    free_memory()
    params, by_dtype = safetensors_params(out)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    config = json.loads((out / "config.json").read_text())
    text, vision = config.get("text_config", {}), config.get("vision_config", {})
    figures = {
        "checkpoint": str(out),
        "built_on": built_on,
        "device_build_error": fallback_error,
        "sizes": _repo_relative(SIZES_7B) if overrides else "hiertrain/vlm/tiny_sizes/qwen2_5_vl.yaml",
        "params": params,
        "params_b": round(params / 1e9, 3),
        "params_by_dtype": by_dtype,
        "checkpoint_gb": round(size / 1e9, 2),
        "seconds_total": round(total, 1),
        "seconds_save_pretrained": round(saving["seconds"], 1),
        "seconds_init_and_tokenizer": round(total - saving["seconds"], 1),
        "save_gb_per_s": round(size / 1e9 / saving["seconds"], 2) if saving["seconds"] else None,
        "config": {
            "text": {k: text.get(k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                             "num_attention_heads", "num_key_value_heads", "vocab_size")},
            "vision": {k: vision.get(k) for k in ("depth", "hidden_size", "intermediate_size", "num_heads",
                                                 "out_hidden_size", "fullatt_block_indexes", "window_size")},
            "mrope_section": (text.get("rope_parameters") or {}).get("mrope_section"),
            "dtype": config.get("dtype") or text.get("dtype"),
        },
    }  # fmt: skip
    if on_gpu:
        figures["max_memory_allocated_gb"] = round(torch.cuda.max_memory_allocated(args.device) / 2**30, 2)
    return figures


class _Tee(io.TextIOBase):
    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, s: str) -> int:
        for stream in self.streams:
            stream.write(s)
        return len(s)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def step_eval(args: argparse.Namespace, work: Path, checkpoint: Path) -> dict[str, Any]:
    import eval_speed  # bench/eval_speed.py

    import torch

    out = work / "eval_speed.json"
    argv = ["--images", str(args.images), "--pretrained", str(checkpoint), "--device", args.device]
    argv += ["--dtype", args.dtype, "--json", str(out)]
    log(f"eval: python bench/eval_speed.py {' '.join(argv)}")
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(args.device)
    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(_Tee(sys.stdout, printed)):
        rc = eval_speed.main(argv)
    seconds = time.perf_counter() - start
    free_memory()
    if rc:
        raise RuntimeError(f"eval_speed.main returned {rc}")
    figures = json.loads(out.read_text())
    figures["seconds_total_incl_load"] = round(seconds, 1)
    figures["argv"] = argv
    figures["table"] = printed.getvalue()
    return figures


def lora_override(args: argparse.Namespace, work: Path, synth: Path) -> Path:
    """The second `--config`: synthetic data in place of iNat21, one device, our callbacks.

    A list in a later config replaces the earlier one, so `trainer.callbacks` here drops the
    paper config's BeforeAfterEvaluation (it would score base and tuned model on iNat/CUB
    files that are not on the machine) and keeps its ModelCheckpoint (val/hca) and LR monitor.
    """
    import yaml

    sc = SCALES[args.scale]
    data: dict[str, Any] = {
        "questions": str(synth / "questions_random.jsonl"),
        "taxonomy": str(synth / "taxonomy.json"),
        "level_names": SYNTH_LEVELS,
        "subject": "shape",
    }
    if sc["workers"] is not None:
        data["num_workers"] = sc["workers"]
    override = {
        "data": {"init_args": data},
        "trainer": {
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(work / "lora_ckpt"), "monitor": "val/hca", "mode": "max",
                                  "save_last": True, "save_top_k": 1},
                },  # fmt: skip
                {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "step"}},
                {"class_path": "gpu_check.StepTimer", "init_args": {"out": str(work / "lora_steps.json")}},
            ]
        },
    }
    path = work / "lora_override.yaml"
    path.write_text(yaml.safe_dump(override, sort_keys=False))
    return path


def step_lora(args: argparse.Namespace, work: Path, checkpoint: Path, seconds_left: float) -> dict[str, Any]:
    import torch

    from hiertrain.cli.main import main as hiertrain_main

    sc = SCALES[args.scale]
    synth = work / "lora_synth"
    synth_argv = ["data", "synth", "--out", str(synth), "--images-per-leaf", str(args.per_leaf), "--image-size", "448"]
    log(f"lora: hiertrain {' '.join(synth_argv)}")
    start = time.perf_counter()
    if hiertrain_main(synth_argv) != 0:
        raise RuntimeError("hiertrain data synth failed")
    synth_seconds = time.perf_counter() - start
    override = lora_override(args, work, synth)
    on_gpu = args.device.startswith("cuda")
    # Stop gracefully (and still write the figures) if the fit would outrun the time left.
    max_time = max(60, int(seconds_left))
    minutes, secs = divmod(max_time, 60)
    hours, minutes = divmod(minutes, 60)
    argv = [
        "fit",
        "--config", str(LORA_CONFIG.relative_to(REPO)),
        "--config", str(override),
        f"--model.init_args.pretrained={checkpoint}",
        "--wandb=false",
        f"--trainer.accelerator={'gpu' if on_gpu else 'cpu'}",
        "--trainer.devices=1",
        "--trainer.strategy=auto",
        f"--trainer.max_steps={args.steps}",
        "--trainer.max_epochs=-1",
        f"--trainer.limit_val_batches={sc['val_fraction']}",
        f"--trainer.val_check_interval={sc['val_every']}",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        f"--trainer.max_time=00:{hours:02d}:{minutes:02d}:{secs:02d}",
        f"--trainer.default_root_dir={work / 'lora_runs'}",
    ]  # fmt: skip
    log("lora: hiertrain " + " ".join(argv))
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(args.device)
    steps_file = work / "lora_steps.json"
    steps_file.unlink(missing_ok=True)
    start = time.perf_counter()
    cwd = os.getcwd()
    os.chdir(REPO)  # the config's relative paths (and the CLI's) are the repo's
    failure = None
    try:
        rc = hiertrain_main(argv)
    except BaseException as err:  # noqa: BLE001 - SystemExit(2) for a HierError too; keep what was measured
        if isinstance(err, KeyboardInterrupt):
            raise
        rc, failure = getattr(err, "code", None) or 1, traceback.format_exc()[-6000:]
    finally:
        os.chdir(cwd)
    fit_seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(args.device) / 2**30 if on_gpu else None
    free_memory()
    timer = json.loads(steps_file.read_text()) if steps_file.is_file() else {}
    step_seconds = [s["seconds"] for s in timer.get("steps", [])]
    measured = step_seconds[args.skip :]
    adapter = work / "lora_ckpt" / "adapter"
    figures: dict[str, Any] = {
        "argv": argv,
        "override_yaml": override.read_text(),
        "synth_images_per_leaf": args.per_leaf,
        "synth_seconds": round(synth_seconds, 1),
        "cli_rc": rc,
        "trainer_settings": timer.get("settings"),
        "num_val_batches": timer.get("num_val_batches"),
        "global_step": timer.get("global_step"),
        "max_steps": args.steps,
        "finished": bool(rc == 0 and timer.get("global_step") == args.steps and (adapter / "adapter_config.json").is_file()),
        "adapter_files": sorted(p.name for p in adapter.iterdir()) if adapter.is_dir() else [],
        "fit_seconds_incl_load": round(fit_seconds, 1),
        "train_seconds": round(timer.get("train_seconds", float("nan")), 1),
        "steps_timed": len(step_seconds),
        "steps_skipped_in_mean": args.skip,
        "s_per_step_mean": round(statistics.fmean(measured), 3) if measured else None,
        "s_per_step_median": round(statistics.median(measured), 3) if measured else None,
        "s_per_step_min": round(min(measured), 3) if measured else None,
        "s_per_step_max": round(max(measured), 3) if measured else None,
        "first_steps_seconds": [round(s, 3) for s in step_seconds[: args.skip]],
        "micro_batches_per_step": timer["steps"][-1]["micro_batches"] if timer.get("steps") else None,
        "sequences_per_step": timer["steps"][-1]["sequences"] if timer.get("steps") else None,
        "tokens_per_step_mean": round(statistics.fmean(s["tokens"] for s in timer["steps"]), 1) if timer.get("steps") else None,
        "validation_seconds": [round(s, 1) for s in timer.get("validation_seconds", [])],
        "max_memory_allocated_gb": round(peak, 2) if peak is not None else None,
        "max_memory_allocated_gb_train": round(timer["max_memory_allocated_gb"], 2) if "max_memory_allocated_gb" in timer else None,
        "max_memory_reserved_gb_train": round(timer["max_memory_reserved_gb"], 2) if "max_memory_reserved_gb" in timer else None,
    }  # fmt: skip
    if measured and figures["tokens_per_step_mean"]:
        figures["tokens_per_s"] = round(figures["tokens_per_step_mean"] / figures["s_per_step_mean"], 1)
    if "exception" in timer:
        figures["exception_in_fit"] = timer["exception"]
    if failure is not None or rc != 0:
        raise StepFailed(failure or f"hiertrain fit returned {rc}", figures)
    return figures


# ---------------------------------------------------------------------------------------- report


def markdown(results: dict[str, Any]) -> str:
    env = results.get("env", {})
    v = env.get("versions", {})
    lines = [
        f"# GPU check ({results['args']['scale']}, {results['args']['device']}, {results['args']['dtype']})",
        "",
        f"device: {env.get('device_name')}; torch {v.get('torch')}, transformers {v.get('transformers')}, "
        f"lightning {v.get('lightning')}, peft {v.get('peft')}, jsonargparse {v.get('jsonargparse')}",
        "",
        "| step | figure | value |",
        "| --- | --- | ---: |",
    ]

    def row(step: str, name: str, value: Any) -> None:
        lines.append(f"| {step} | {name} | {value} |")

    for step in ("build", "eval", "lora"):
        status = results["status"].get(step)
        row(step, "status", status)
        data = results.get(step) or {}
        if step == "build" and data:
            row(step, "built on", data["built_on"])
            row(step, "parameters", f"{data['params_b']} B ({data['params']:,})")
            row(step, "checkpoint size", f"{data['checkpoint_gb']} GB")
            row(step, "init + tokenizer / save_pretrained / total", f"{data['seconds_init_and_tokenizer']} s / "
                f"{data['seconds_save_pretrained']} s / {data['seconds_total']} s")  # fmt: skip
        if step == "eval" and data:
            qps = data["questions_per_s"]
            row(step, "device", data.get("device"))
            row(step, "questions", f"{data['questions']} ({data['images']} images x 7 levels, "
                f"{data['visual_tokens_per_image']} visual tokens/image)")  # fmt: skip
            row(step, "max_batch_tokens (batched path's step budget)", data.get("max_batch_tokens"))
            row(step, "(a) paper: per question, generate 5 tokens (q/s)", qps["paper"])
            if "per_image" in qps:
                row(step, "(b) per image: shared prefix, letter logits, one image per step (q/s)", qps["per_image"])
            row(step, "(c) batched (default): images x levels per step, letter logits (q/s)", qps["hiertrain"])
            row(step, "(d) batched generate (q/s)", qps["hiertrain_generate"])
            row(step, "(b)/(a), (c)/(a), (d)/(a)", f"{data.get('speedup_per_image_vs_paper')}x, "
                f"{data['speedup_default_vs_paper']}x, {data['speedup_generate_vs_paper']}x")  # fmt: skip
            mixed = data.get("mixed")
            if mixed:
                mq = mixed["questions_per_s"]
                row(step, f"mixed sizes ({mixed['visual_tokens_per_image']} visual tokens): (a) / (b) / (c) q/s",
                    f"{mq['paper']} / {mq['per_image']} / {mq['hiertrain']}")  # fmt: skip
            first = data.get("448") or {}
            if first.get("achieved_tflops_batched") is not None:
                peak = PEAK_BF16_TFLOPS.get(next((k for k in PEAK_BF16_TFLOPS if k in str(data.get("device"))), ""), None)
                util = f", {100 * first['achieved_tflops_batched'] / peak:.1f}% of {peak} TFLOP/s bf16 peak" if peak else ""
                row(step, "batched work / achieved (utilisation estimate)",
                    f"{first['model_gflop_per_question']} GFLOP/question, {first['achieved_tflops_batched']} TFLOP/s{util}")  # fmt: skip
            if data.get("max_memory_allocated_gb") is not None:
                row(step, "peak GPU memory allocated", f"{data['max_memory_allocated_gb']} GiB")
        if step == "lora" and data:
            row(step, "finished", f"{data['finished']} (step {data['global_step']}/{data['max_steps']})")
            ts = data.get("trainer_settings") or {}
            if ts:
                row(step, "trainer", f"{ts['accelerator']} x{ts['devices']}, {ts['precision']}, accumulate "
                    f"{ts['accumulate_grad_batches']}, grad ckpt {ts['gradient_checkpointing']}, weights {ts['model_dtype']}, "
                    f"LoRA params {ts['trainable_params']:,} {ts['trainable_dtypes']}, val batches {data.get('num_val_batches')}")  # fmt: skip
            row(step, f"s/step mean (median) over steps {data['steps_skipped_in_mean'] + 1}..{data['steps_timed']}",
                f"{data['s_per_step_mean']} ({data['s_per_step_median']})")  # fmt: skip
            row(step, "first steps (s)", data["first_steps_seconds"])
            row(step, "sequences / tokens per step", f"{data['sequences_per_step']} / {data['tokens_per_step_mean']}")
            row(step, "validation runs (s)", data["validation_seconds"])
            row(step, "peak GPU memory allocated", f"{data['max_memory_allocated_gb']} GiB")
            row(step, "fit wall incl. load / train only", f"{data['fit_seconds_incl_load']} s / {data['train_seconds']} s")
        if results.get("errors", {}).get(step):
            row(step, "error", results["errors"][step].strip().splitlines()[-1][:300].replace("|", "/"))
    lines += ["", f"total wall: {results.get('wall_seconds')} s", ""]
    if (results.get("eval") or {}).get("table"):
        lines += ["## eval_speed output", "", results["eval"]["table"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "float16"),
                        help="build and eval dtype (LoRA uses the config's bfloat16); default bfloat16")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="writes gpu_check.json and gpu_check.md here")
    parser.add_argument("--work", type=Path, default=None, help="scratch dir (checkpoint, data); default a new tmp dir")
    parser.add_argument("--images", type=int, default=None, help="eval images (x 7 questions)")
    parser.add_argument("--steps", type=int, default=None, help="LoRA optimizer steps (--trainer.max_steps)")
    parser.add_argument("--per-leaf", type=int, default=None, help="synthetic LoRA images per leaf (24 leaves)")
    parser.add_argument("--skip", type=int, default=None, help="LoRA steps left out of the s/step mean")
    parser.add_argument("--budget-s", type=float, default=400, help="soft wall budget: the LoRA fit gets what is left")
    parser.add_argument("--only", default="build,eval,lora", help="comma list of steps to run")
    args = parser.parse_args(argv)
    for key in ("images", "steps", "per_leaf", "skip"):
        if getattr(args, key) is None:
            setattr(args, key, SCALES[args.scale][key])
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only.split(","))
    results: dict[str, Any] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "status": {},
        "errors": {},
    }

    def save() -> None:
        results["wall_seconds"] = round(time.perf_counter() - T0, 1)
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        (args.out / "gpu_check.md").write_text(markdown(results))

    def run(name: str, fn, *fn_args) -> Any:
        if name != "env" and name not in wanted:
            results["status"][name] = "not asked"
            return None
        log(f"{name}: start")
        start = time.perf_counter()
        try:
            results[name] = fn(*fn_args)
            results["status"][name] = "ok"
        except BaseException as err:  # noqa: BLE001 - SystemExit from the CLI too; KeyboardInterrupt stops
            if isinstance(err, KeyboardInterrupt):
                raise
            results["status"][name] = f"failed: {type(err).__name__}"
            results["errors"][name] = traceback.format_exc()[-6000:]
            if isinstance(err, StepFailed):
                results[name] = err.figures
                results["errors"][name] = str(err)
            log(f"{name}: FAILED {type(err).__name__}: {str(err).strip()[:500]}")
            with contextlib.suppress(Exception):
                free_memory()
        results.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 1)
        log(f"{name}: {results['status'][name]} in {results['seconds'][name]} s")
        save()
        return results.get(name)

    log(f"gpu_check --scale {args.scale} --device {args.device} --dtype {args.dtype}; work {work}; out {args.out}")
    env = run("env", step_env, args)
    if env:
        log(f"env: {env.get('device_name')}; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    build = run("build", step_build, args, work)
    checkpoint = Path(build["checkpoint"]) if build else work / f"qwen2_5_vl_{args.scale}"
    if build:
        log(f"build: {build['params_b']} B params, {build['checkpoint_gb']} GB, init {build['seconds_init_and_tokenizer']} s, "
            f"save {build['seconds_save_pretrained']} s")  # fmt: skip
    have_checkpoint = (checkpoint / "config.json").is_file()
    if not have_checkpoint:
        for name in ("eval", "lora"):
            results["status"][name] = "skipped: no checkpoint (build failed)"
        save()
    else:
        ev = run("eval", step_eval, args, work, checkpoint)
        if ev:
            log(f"eval: q/s {ev['questions_per_s']}; batched/paper {ev['speedup_default_vs_paper']}x")
        left = args.budget_s - (time.perf_counter() - T0)
        lo = run("lora", step_lora, args, work, checkpoint, left)
        if lo:
            log(f"lora: finished={lo['finished']} s/step {lo['s_per_step_mean']} peak {lo['max_memory_allocated_gb']} GiB")
    save()
    print(markdown(results), flush=True)
    failed = [k for k, v in results["status"].items() if v not in ("ok", "not asked")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
