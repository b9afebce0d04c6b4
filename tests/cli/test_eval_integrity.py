"""Run integrity of `hiertrain test` (issue 11): no silent wrong result, no traceback, any kill resumes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hiertrain.cli.main import main

REPO = Path(__file__).resolve().parents[2]
HIERTRAIN = str(Path(sys.executable).with_name("hiertrain"))
RUN = "eval"
N = 4


def _args(model, synth_dir, root, *extra: str, questions: Path | None = None) -> list[str]:
    return [
        "test", "--config", str(REPO / "configs/demo/qwen_image.yaml"),
        f"--model.pretrained={model}",
        f"--data.questions={questions or synth_dir / 'questions_random.jsonl'}",
        f"--data.taxonomy={synth_dir / 'taxonomy.json'}",
        f"--data.limit={N}",
        f"--trainer.default_root_dir={root}",
        "--trainer.enable_progress_bar=false",
        f"--model.run_name={RUN}",
        "--wandb=false",
        *extra,
    ]  # fmt: skip


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as err:
        return int(err.code)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO)), **extra}


@pytest.mark.slow
def test_rerun_with_other_weights_or_settings_is_refused(tiny_qwen, synth_dir, tmp_path, capsys):
    # case 1: rebuilt weights (or another dtype, max_new_tokens, ...) at the same path were "resumed"
    from hiertrain.vlm.tiny import make_tiny

    model = tmp_path / "model"
    shutil.copytree(tiny_qwen, model)
    assert _exit_code(_args(model, synth_dir, tmp_path / "a")) == 0
    shutil.rmtree(model)
    make_tiny("qwen2_5_vl", model, seed=1)
    capsys.readouterr()
    assert _exit_code(_args(model, synth_dir, tmp_path / "a", "--model.dtype=bfloat16")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"hiertrain: {tmp_path / 'a' / RUN}: holds a run with another weights (")
    assert "dtype ('float32', this run 'bfloat16')" in err and "--fresh true" in err
    # --fresh starts afresh: the same numbers as a new directory
    assert _exit_code(_args(model, synth_dir, tmp_path / "a", "--fresh=true")) == 0
    assert _exit_code(_args(model, synth_dir, tmp_path / "b")) == 0
    for name in ("predictions.jsonl", "metrics.json"):
        assert (tmp_path / "a" / RUN / name).read_bytes() == (tmp_path / "b" / RUN / name).read_bytes(), name


@pytest.mark.slow
def test_kill_during_finalize_then_rerun_writes_every_output(tiny_qwen, synth_dir, tmp_path, capsys):
    # case 2 (real SIGKILL in the middle of finalize) and case 10 (run dir and metrics printed)
    args = _args(tiny_qwen, synth_dir, tmp_path)
    killer = (
        "import os, signal, sys\n"
        "import hiertrain.runs.eval_outputs as outputs\n"
        "outputs.plot_per_level = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        "from hiertrain.cli.main import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", killer], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run = tmp_path / RUN
    assert (run / "metrics.json").is_file() and not (run / "summary.txt").exists()  # killed between the two
    capsys.readouterr()
    assert _exit_code(args) == 0
    out = capsys.readouterr().out
    for name in ("metrics.json", "results.json", "per_level_accuracy.png", "summary.txt", "skipped.jsonl"):
        assert (run / name).is_file(), name
    assert not list(run.glob("*.tmp"))
    summary = (run / "summary.txt").read_text()
    assert summary in out and f"run directory: {run}" in out
    first = (run / "metrics.json").read_bytes()
    assert _exit_code(args) == 0  # a finished run: prints its metrics again, same bytes
    assert summary in capsys.readouterr().out and (run / "metrics.json").read_bytes() == first


def _bank(tmp_path: Path, synth_dir: Path, missing: int) -> Path:
    """The first N test records with absolute image paths; the first `missing` point nowhere."""
    records = [json.loads(line) for line in (synth_dir / "questions_random.jsonl").read_text().splitlines()]
    out = []
    for i, record in enumerate([r for r in records if r["split"] == "test"][:N]):
        record["image"] = str(tmp_path / "nowhere" / record["image"]) if i < missing else str(synth_dir / record["image"])
        out.append(json.dumps(record))
    path = tmp_path / "elsewhere" / "q.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join(out) + "\n")
    return path


def test_every_image_missing_fails_naming_the_reasons(tiny_qwen, synth_dir, tmp_path, capsys):
    # case 3: "samples 0 skipped 24" and exit 0
    questions = _bank(tmp_path, synth_dir, missing=N)
    assert _exit_code(_args(tiny_qwen, synth_dir, tmp_path, questions=questions)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"hiertrain: {tmp_path / RUN}: no sample was scored ({N} skipped; first: ")
    assert "nowhere" in err and "cannot read image of sample 0" in err


def test_skip_rate_above_threshold_warns(tiny_qwen, synth_dir, tmp_path, capsys):
    questions = _bank(tmp_path, synth_dir, missing=1)
    assert _exit_code(_args(tiny_qwen, synth_dir, tmp_path / "a", questions=questions)) == 0
    err = capsys.readouterr().err
    assert f"WARNING: 1 of {N} samples (25.0%) were skipped, more than 5% (--data.max_skip_rate)" in err
    assert _exit_code(_args(tiny_qwen, synth_dir, tmp_path / "b", "--data.max_skip_rate=0.5", questions=questions)) == 0
    assert "WARNING" not in capsys.readouterr().err


@pytest.mark.slow
def test_second_process_is_refused_by_the_lock(tiny_qwen, synth_dir, tmp_path):
    # case 4: two runs in one directory both failed at the end and broke it for good
    holder_code = (
        "import sys\n"
        "from hiertrain.runs.eval_outputs import RunDirectory\n"
        f"run = RunDirectory({str(tmp_path / RUN)!r}); run.lock()\n"
        "print('locked', flush=True); sys.stdin.read()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", holder_code], env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run([HIERTRAIN, *_args(tiny_qwen, synth_dir, tmp_path)], cwd=tmp_path, env=_env(),
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert second.returncode == 2, second.stderr[-2000:]
        assert second.stderr.strip().splitlines()[-1] == (
            f"hiertrain: {tmp_path / RUN}: in use by PID {holder.pid} on host {socket.gethostname()}; "
            "wait for that run to end or use another --model.run_name"
        )
    finally:
        holder.communicate("", timeout=60)
    from hiertrain.runs.eval_outputs import RunDirectory

    run = RunDirectory(tmp_path / RUN)
    run.lock()  # the holder is gone: its lock went with it
    run.unlock()


@pytest.mark.slow
def test_wandb_without_credentials_logs_offline_and_says_so(tiny_qwen, synth_dir, tmp_path):
    # case 6: W&B UsageError without an API key (and a login prompt on a terminal)
    env = {k: v for k, v in _env(HOME=str(tmp_path)).items() if not k.startswith("WANDB_") and k != "NETRC"}
    args = [a for a in _args(tiny_qwen, synth_dir, tmp_path, "--data.limit=1") if a != "--wandb=false"] + ["--wandb=true"]
    proc = subprocess.run([HIERTRAIN, *args], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "hiertrain: no W&B credentials (WANDB_API_KEY or `wandb login`): logging offline" in proc.stderr
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_wandb_mode_is_respected(monkeypatch, tmp_path):
    from hiertrain.cli.lightning import wandb_mode
    from hiertrain.base.errors import HierError

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(True) == ("csv", None)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode(True) == ("offline", None)
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(HierError, match="WANDB_MODE=online but no W&B credentials"):
        wandb_mode(True)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(True) == ("online", None)
    assert wandb_mode(False) == ("csv", None)


def test_unwritable_root_is_one_line(tiny_qwen, synth_dir, tmp_path, capsys):
    # case 7: OSError traceback for an output folder that cannot be made
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert _exit_code(_args(tiny_qwen, synth_dir, blocker / "runs")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"hiertrain: {blocker / 'runs'}: Not a directory"


def test_full_disk_is_one_line_and_leaves_no_partial_file(tiny_qwen, synth_dir, tmp_path, capsys, monkeypatch):
    # case 7: a full disk while writing the outputs: one line, exit 2, no `.tmp`
    import hiertrain.base.atomic as atomic

    real = os.replace

    def full_for_metrics(src, dst):
        if str(dst).endswith("metrics.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", full_for_metrics)
    assert _exit_code(_args(tiny_qwen, synth_dir, tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"hiertrain: {tmp_path / RUN / 'metrics.json'}: cannot write (disk full)"
    assert not list((tmp_path / RUN).glob("*.tmp")) and not (tmp_path / RUN / "metrics.json").exists()
    monkeypatch.undo()
    assert _exit_code(_args(tiny_qwen, synth_dir, tmp_path)) == 0  # space again: the rerun finishes
    assert (tmp_path / RUN / "metrics.json").is_file()


def test_batch_size_zero_is_one_line(tiny_qwen, synth_dir, tmp_path, capsys):
    # case 9
    assert _exit_code(_args(tiny_qwen, synth_dir, tmp_path, "--data.batch_size=0")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "hiertrain: data.batch_size must be at least 1, got 0"


def test_outputs_default_under_runs(tiny_qwen, synth_dir, tmp_path, monkeypatch):
    # case 10: with no default_root_dir the run folder and ./csv/ landed in the working directory
    monkeypatch.chdir(tmp_path)
    assert _exit_code([*_args(tiny_qwen, synth_dir, tmp_path, "--data.limit=1"), "--trainer.default_root_dir=null"]) == 0
    assert (tmp_path / "runs" / RUN / "metrics.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert "/runs/" in (REPO / ".gitignore").read_text().splitlines()


def test_checkpoints_follow_default_root_dir(tmp_path, monkeypatch):
    # case 11: probe and LoRA checkpoint folders were hard-coded under runs/demo/...
    for config in [*REPO.glob("configs/probing/*probes*.yaml"), *REPO.glob("configs/lora/*.yaml")]:
        callbacks = yaml.safe_load(config.read_text())["trainer"].get("callbacks", [])
        for callback in callbacks:
            assert "dirpath" not in (callback.get("init_args") or {}), config
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "elsewhere"
    assert _exit_code([
        "fit", "--model=lightning.pytorch.demos.boring_classes.BoringModel",
        "--data=lightning.pytorch.demos.boring_classes.BoringDataModule",
        "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.save_last=true",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={root}", "--wandb=false",
    ]) == 0  # fmt: skip
    assert (root / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "runs").exists() and not (tmp_path / "checkpoints").exists()


# ---------------------------------------------------------------- issue 22 (reliability round 3)


class _FillingFile:
    """A text file on a disk that fills up: after `room` characters a write puts what still fits
    and raises ENOSPC (errno 28), as a real full file system does mid-line."""

    def __init__(self, real, budget: list[int]) -> None:
        self.real, self.budget = real, budget

    def write(self, text: str) -> int:
        if len(text) > self.budget[0]:
            self.real.write(text[: self.budget[0]])
            self.real.flush()
            self.budget[0] = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget[0] -= len(text)
        return self.real.write(text)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.real.close()


def test_disk_full_while_predictions_stream_is_one_line_and_resumes(tiny_qwen, synth_dir, tmp_path, capsys, monkeypatch):
    # issue 22 item 5: OSError [Errno 28] traceback from metrics/predictions.py while appending a line
    import builtins

    import hiertrain.metrics.predictions as predictions

    assert _exit_code(_args(tiny_qwen, synth_dir, tmp_path / "b", "--data.batch_size=1")) == 0  # uninterrupted
    line = len((tmp_path / "b" / RUN / "predictions.jsonl").read_text().splitlines()[0]) + 1
    budget = [2 * line + line // 2]  # two whole lines, then the disk fills in the middle of the third
    monkeypatch.setattr(predictions, "open", lambda *a, **k: _FillingFile(builtins.open(*a, **k), budget), raising=False)
    capsys.readouterr()
    assert _exit_code(_args(tiny_qwen, synth_dir, tmp_path / "a", "--data.batch_size=1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    part = tmp_path / "a" / RUN / "predictions.rank0.jsonl"
    assert err[-1] == f"hiertrain: {part}: cannot write (disk full)"
    assert not any("Traceback" in e for e in err)
    kept = part.read_text()
    assert kept.count("\n") == 2 and not kept.endswith("\n")  # two samples and a cut-off third
    assert not (tmp_path / "a" / RUN / "metrics.json").exists()
    monkeypatch.undo()
    assert _exit_code(_args(tiny_qwen, synth_dir, tmp_path / "a", "--data.batch_size=1")) == 0  # space again
    for name in ("predictions.jsonl", "metrics.json"):
        assert (tmp_path / "a" / RUN / name).read_bytes() == (tmp_path / "b" / RUN / name).read_bytes(), name


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--data.num_workers=-1", "hiertrain: data.num_workers must be 0 (load in this process) or more, got -1"),
        ("--model.answer=generate --model.max_new_tokens=0",
         "hiertrain: model.max_new_tokens must be at least 1 with answer: generate (a reply of 0 tokens holds no letter)"),
    ],
)  # fmt: skip
def test_impossible_loader_or_reply_settings_fail_before_run_json(flag, message, tiny_qwen, synth_dir, tmp_path, capsys):
    # issue 22 item 7: a DataLoader ValueError traceback (num_workers) / a run of empty replies, run.json left behind
    assert _exit_code(_args(tiny_qwen, synth_dir, tmp_path, *flag.split())) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == message
    assert not list(tmp_path.rglob("run.json"))


@pytest.mark.slow
def test_sigterm_during_test_exits_nonzero_and_the_rerun_completes_identically(tiny_qwen, synth_dir, tmp_path, capsys):
    # issue 22 item 12: "Received SIGTERM", then exit 0 with part of the predictions and no metrics.json
    args = _args(tiny_qwen, synth_dir, tmp_path / "a", "--data.batch_size=1")
    preempt = (
        "import os, signal, sys\n"
        "from hiertrain.runs.eval_outputs import RunDirectory\n"
        "real, done = RunDirectory.append, []\n"
        "def append(self, prediction):\n"
        "    real(self, prediction)\n"
        "    done.append(prediction.id)\n"
        "    if len(done) == 1: os.kill(os.getpid(), signal.SIGTERM)  # the scheduler preempts the job\n"
        "RunDirectory.append = append\n"
        "from hiertrain.cli.main import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", preempt], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "hiertrain: interrupted by SIGTERM (finished work is kept); rerun the same command to resume"
    )
    run = tmp_path / "a" / RUN
    assert not (run / "metrics.json").exists()
    assert len((run / "predictions.rank0.jsonl").read_text().splitlines()) == 1  # stopped after the batch in flight
    assert _exit_code(args) == 0  # the rerun resumes (the sample done before the signal is kept, not redone)
    assert _exit_code(_args(tiny_qwen, synth_dir, tmp_path / "b", "--data.batch_size=1")) == 0  # uninterrupted
    for name in ("predictions.jsonl", "metrics.json", "results.json"):
        assert (run / name).read_bytes() == (tmp_path / "b" / RUN / name).read_bytes(), name


def test_rerunning_a_finished_run_keeps_its_csv_metrics(tiny_qwen, synth_dir, tmp_path, capsys):
    # issue 22 item 21: the rerun of a finished run deleted csv/<run>/metrics.csv (Lightning's CSVLogger)
    assert _exit_code(_args(tiny_qwen, synth_dir, tmp_path)) == 0
    logged = tmp_path / "csv" / RUN / "metrics.csv"
    first = logged.read_text()
    assert "test/hca" in first.splitlines()[0] and len(first.splitlines()) >= 2
    assert _exit_code(_args(tiny_qwen, synth_dir, tmp_path)) == 0  # finished: prints its metrics, logs nothing
    assert logged.read_text() == first
    assert _exit_code(_args(tiny_qwen, synth_dir, tmp_path, "--fresh=true")) == 0  # afresh: a new log
    assert logged.read_text() == first  # the same numbers again, once
