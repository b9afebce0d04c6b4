"""`hiertrain test` end to end: W&B offline, CSV, kill + resume, 2-process DDP, bad input."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hiertrain.cli.main import main

REPO = Path(__file__).resolve().parents[2]
HIERTRAIN = str(Path(sys.executable).with_name("hiertrain"))
N_IMAGES = 11  # odd, so 2 DDP ranks get unequal shares and the sampler pads one


def _args(tiny_qwen, synth_dir, root, *extra: str) -> list[str]:
    return [
        "test", "--config", str(REPO / "configs/demo/qwen_image.yaml"),
        f"--model.pretrained={tiny_qwen}",
        f"--data.questions={synth_dir / 'questions_random.jsonl'}",
        f"--data.taxonomy={synth_dir / 'taxonomy.json'}",
        f"--data.limit={N_IMAGES}",
        f"--trainer.default_root_dir={root}",
        "--trainer.enable_progress_bar=false",
        f"--model.run_name={RUN}",
        *extra,
    ]  # fmt: skip


RUN = "eval"


@pytest.fixture(scope="module")
def reference(tiny_qwen, synth_dir, tmp_path_factory) -> Path:
    """One uninterrupted 1-process run, logged to W&B offline."""
    root = tmp_path_factory.mktemp("reference")
    assert os.environ["WANDB_MODE"] == "offline"
    assert main(_args(tiny_qwen, synth_dir, root, "--wandb=true", f"--wandb_log_samples={LOGGED}")) == 0
    return root


LOGGED = 7  # rows of the W&B sample table (fewer than N_IMAGES: the cap is what is tested)


@pytest.mark.slow
def test_outputs_and_wandb_offline(reference):
    run = reference / RUN
    for name in ("run.json", "predictions.jsonl", "results.json", "metrics.json", "per_level_accuracy.png", "summary.txt"):
        assert (run / name).is_file(), name
    assert len((run / "predictions.jsonl").read_text().splitlines()) == N_IMAGES
    offline = list((reference / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert list(offline[0].glob("run-*.wandb"))
    assert list((offline[0] / "files/media/images").glob("per_level_accuracy*.png"))
    assert list((offline[0] / "files/media/table").glob("samples*.table.json"))


def test_wandb_sample_table_offline(reference):
    """The offline run's `samples` table: one row per image (first LOGGED by id), a thumbnail,
    each level's truth / pick / correct; wandb.json names the W&B run for the report."""
    import json

    (offline,) = (reference / "wandb").glob("offline-run-*")
    (table_file,) = (offline / "files/media/table").glob("samples*.table.json")
    table = json.loads(table_file.read_text())
    names = json.loads((reference / RUN / "metrics.json").read_text())["level_names"]
    assert table["columns"] == ["image", "id", "label", *[f"{n} {c}" for n in names for c in ("truth", "pick", "correct")]]
    assert len(table["data"]) == LOGGED
    preds = [json.loads(line) for line in (reference / RUN / "predictions.jsonl").read_text().splitlines()]
    first = sorted(preds, key=lambda p: p["id"])[:LOGGED]
    assert [row[1] for row in table["data"]] == [p["id"] for p in first]
    for row, pred in zip(table["data"], first):
        assert row[0] == "Image"  # the run file's copy names the media type (the pixels go to the table artifact)
        truths = [lv["truth"] for lv in pred["levels"]]
        assert row[3::3] == truths and row[5::3] == [lv["correct"] for lv in pred["levels"]]
    info = json.loads((reference / RUN / "wandb.json").read_text())
    assert info["mode"] == "offline" and info["url"] is None and info["tables"] == {"samples": LOGGED}
    assert Path(info["dir"]) == offline.resolve() and offline.name.endswith(info["run_id"])


def test_metrics_json_has_the_taxonomy_measures_and_score_agrees(reference, synth_dir, capsys):
    """data.taxonomy given: metrics.json places every pick (mistake severity, path consistency), and
    `score --taxonomy` (the streaming columnar path) gives the same numbers from predictions.jsonl.
    (test_ddp_two_processes_match_one checks the file is byte-identical under 2 processes.)"""
    import json

    run = reference / RUN
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["taxonomy"] == str(synth_dir / "taxonomy.json") and "taxonomy_note" not in metrics
    keys = ("path_consistency", "mistake_lca_depth", "mistake_distance", "mistake_severity", "mistakes_unplaced",
            "hierarchical_precision", "hierarchical_recall", "conditional_accuracy", "mistake_distance_per_level")  # fmt: skip
    wrong = sum(metrics["mistake_severity"]) + metrics["mistakes_unplaced"]
    assert wrong == round(sum(n * (1 - a) for n, a in zip(_asked(run), metrics["per_level_accuracy"])))
    assert main(["score", str(run / "predictions.jsonl"), "--taxonomy", str(synth_dir / "taxonomy.json"), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert {k: scored[k] for k in keys} == {k: metrics[k] for k in keys}
    assert scored["intervals"]["path_consistency"] == metrics["intervals"]["path_consistency"]


def _asked(run: Path) -> list[int]:
    """Asked questions per level in a run's predictions.jsonl."""
    import json

    counts: dict[int, int] = {}
    for line in (run / "predictions.jsonl").read_text().splitlines():
        for lv in json.loads(line)["levels"]:
            counts[lv["level"]] = counts.get(lv["level"], 0) + int(lv["asked"])
    return [counts[k] for k in sorted(counts)]


@pytest.mark.slow
def test_killed_run_resumes_to_identical_outputs(reference, tiny_qwen, synth_dir, tmp_path, caplog):
    args = _args(tiny_qwen, synth_dir, tmp_path, "--data.batch_size=1", "--wandb=false")
    part = tmp_path / RUN / "predictions.rank0.jsonl"
    proc = subprocess.Popen([HIERTRAIN, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if part.is_file() and part.read_text().count("\n") >= 3:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = part.read_text().count("\n")
    assert 3 <= done < N_IMAGES and not (tmp_path / RUN / "metrics.json").exists()
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    assert f"{done} samples already done" in caplog.text
    for name in ("predictions.jsonl", "metrics.json", "results.json"):
        assert (tmp_path / RUN / name).read_bytes() == (reference / RUN / name).read_bytes(), name
    assert list((tmp_path / "csv").glob(f"{RUN}/metrics.csv"))  # --wandb=false logs to CSV


@pytest.mark.slow
def test_ddp_two_processes_match_one(reference, tiny_qwen, synth_dir, tmp_path):
    args = _args(tiny_qwen, synth_dir, tmp_path, "--trainer.devices=2", "--trainer.strategy=ddp", "--wandb=false")
    done = subprocess.run([HIERTRAIN, *args], cwd=REPO, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("predictions.jsonl", "metrics.json", "results.json"):
        assert (tmp_path / RUN / name).read_bytes() == (reference / RUN / name).read_bytes(), name
    assert not list((tmp_path / RUN).glob("*.rank*.jsonl"))


def test_bad_question_file_exits_2_with_one_line(tiny_qwen, synth_dir, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main([*_args(tiny_qwen, synth_dir, tmp_path, "--wandb=false"), f"--data.questions={empty}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"hiertrain: {empty}: no questions (empty file)"


def test_wandb_identity_groups_runs_by_dataset():
    from types import SimpleNamespace

    from hiertrain.cli.lightning import _logger_identity

    from hiertrain.modules.vllm_evaluator import VLLMEvaluator

    model = VLLMEvaluator("Qwen/Qwen2.5-VL-7B-Instruct", answer="logits")
    from hiertrain.protocol.protocol import QuestionProtocol

    data = SimpleNamespace(questions="q/cub.jsonl", name="cub200_random", protocol=QuestionProtocol("text", (), variant=2),
                           taxonomy_path="t/hierarchy_CUB200.json")  # fmt: skip
    identity = _logger_identity(model, data)
    assert identity == {
        "name": "Qwen2.5-VL-7B-Instruct-cub200_random-text-logits-v2",
        "group": "cub200_random",
        "tags": ["Qwen2.5-VL-7B-Instruct", "cub200_random", "text", "logits", "hierarchy_CUB200"],
    }
    assert _logger_identity(SimpleNamespace(), data) == {}  # not an evaluator: plain defaults


@pytest.mark.slow
def test_circular_run_under_two_process_ddp_matches_one(tiny_qwen, synth_dir, tmp_path):
    """Circular evaluation's rotations, first-rotation metrics and letter bias: 2 gloo processes
    (11 images, one padding copy) give the same bytes as one."""
    one = _args(tiny_qwen, synth_dir, tmp_path / "one", "--data.circular=true", "--wandb=false")
    assert main(one) == 0
    two = _args(tiny_qwen, synth_dir, tmp_path / "two", "--data.circular=true", "--wandb=false",
                "--trainer.devices=2", "--trainer.strategy=ddp")  # fmt: skip
    done = subprocess.run([HIERTRAIN, *two], cwd=REPO, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("predictions.jsonl", "metrics.json"):
        assert (tmp_path / "two" / RUN / name).read_bytes() == (tmp_path / "one" / RUN / name).read_bytes(), name
    import json

    metrics = json.loads((tmp_path / "one" / RUN / "metrics.json").read_text())
    bias = metrics["circular"]["letter_bias"]
    rotations = [
        len((lv.get("detail") or {}).get("rotations", [])) for line in (tmp_path / "one" / RUN / "predictions.jsonl").read_text().splitlines()
        for lv in json.loads(line)["levels"]
    ]  # fmt: skip
    assert sum(bias["truth_counts"]) == sum(rotations) > 2 * len(rotations)  # every rotation once, none twice
    assert metrics["num_samples"] == N_IMAGES


@pytest.mark.slow
def test_resume_reasks_exactly_the_sample_whose_image_bytes_changed(tiny_qwen, synth_dir, tmp_path, monkeypatch):
    """Per-sample identity: a finished sample is reused only when its request digest (image bytes
    included) is the one it would be asked now; the changed one is asked again and replaces its line.
    A reused sample's image is never decoded (its digest reads the file's bytes): only the asked one is."""
    import json
    import shutil

    from PIL import Image

    import hiertrain.datamodules.questions as questions
    from hiertrain.modules.vllm_evaluator import VLLMEvaluator

    data = tmp_path / "synth"
    shutil.copytree(synth_dir, data)
    n = 4
    args = lambda root: [  # noqa: E731
        *_args(tiny_qwen, data, root, "--wandb=false"), f"--data.limit={n}", "--data.batch_size=2",
    ]  # fmt: skip
    asked: list[int] = []
    answer = VLLMEvaluator.answer_items
    monkeypatch.setattr(VLLMEvaluator, "answer_items", lambda self, items, mode: (asked.extend(i["sample_id"] for i in items), answer(self, items, mode))[1])
    decoded: list[str] = []
    open_image = questions.open_image
    monkeypatch.setattr(questions, "open_image", lambda path: (decoded.append(str(path)), open_image(path))[1])
    assert main(args(tmp_path / "first")) == 0
    assert len(asked) == n
    lines = [json.loads(line) for line in (tmp_path / "first" / RUN / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == n and all(len(line["request"]) == 64 for line in lines)
    assert len({line["request"] for line in lines}) == n

    assert len(decoded) == n
    asked.clear()
    decoded.clear()
    assert main(args(tmp_path / "first")) == 0  # a rerun with nothing changed asks nothing
    assert asked == [] and decoded == []

    changed = lines[1]
    path = data / changed["image"]
    with Image.open(path) as image:
        image = image.convert("RGB")
    image.putpixel((0, 0), tuple(255 - c for c in image.getpixel((0, 0))))
    image.save(path)
    assert main(args(tmp_path / "first")) == 0
    assert asked == [changed["id"]]  # exactly that sample, once
    assert decoded == [str(path)]  # and only its image decoded
    resumed = [json.loads(line) for line in (tmp_path / "first" / RUN / "predictions.jsonl").read_text().splitlines()]
    assert [line["id"] for line in resumed] == [line["id"] for line in lines]  # no lost or doubled sample
    assert resumed[1]["request"] != changed["request"] and resumed[0] == lines[0]

    asked.clear()
    assert main(args(tmp_path / "fresh")) == 0
    assert len(asked) == n
    for name in ("predictions.jsonl", "metrics.json", "results.json"):
        assert (tmp_path / "first" / RUN / name).read_bytes() == (tmp_path / "fresh" / RUN / name).read_bytes(), name
