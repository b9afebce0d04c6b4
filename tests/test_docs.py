"""The README's quick start runs as written: every `hiertrain` command of its study block, in order,
on the demo's tiny models (conftest) with `--data.limit`, in a scratch folder holding the repo's
`configs/`. Only what names the 7B model, the GPU and the download is overridden: the tiny weights,
CPU/float32, few samples and steps, a fake `~/CUB_200_2011` with images at the paper's paths, and
small iNat question banks where the LoRA config reads them (`data/questions/inat21_*.jsonl`)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from PIL import Image

from hiertrain.cli.main import main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_README_LINES = 150
STUDY_MARK = "tests/test_docs.py"  # the sentence above the block this test runs


def quick_start_commands(text: str) -> list[list[str]]:
    """The `hiertrain ...` lines of the first fenced bash block after the sentence naming this test."""
    start = text.index(STUDY_MARK)
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert block, "README: no fenced bash block after the quick-start sentence"
    return [shlex.split(line)[1:] for line in block.group(1).splitlines() if line.startswith("hiertrain ")]


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES
    first = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["make demo", "make test"]
    for link in re.findall(r"\]\((docs/[^)]+)\)", text):
        assert (REPO / link).is_file(), link
    steps = quick_start_commands(text)
    assert [s[0] for s in steps] == ["data", "test", "test", "predict", "fit", "fit", "report"]


def _fake_cub(home: Path, preset_questions: str) -> None:
    """Images at the paper's CUB paths under `home/CUB_200_2011` for the records a run reads."""
    from hiertrain.paper.paper_image_paths import AUTHORS_PREFIX, SAMPLE
    from hiertrain.taxonomy.question_bank import read_questions

    records = read_questions(preset_questions)
    images = [r.image for r in records]
    step = max(1, len(images) // SAMPLE)
    wanted = set(images[::step][:SAMPLE])  # what the image-root mapping samples
    for split in {r.split for r in records}:  # what `--data.limit` serves, whatever the split
        wanted |= {r.image for r in [r for r in records if r.split == split][:40]}
    for image in wanted:
        tail = image[len(AUTHORS_PREFIX):].split("/")[1:]  # CUB_200_2011/images/... -> images/...
        path = home / "CUB_200_2011" / Path(*tail)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (96, 80), (len(image) * 7 % 255, 90, 160)).save(path)


def _inat_banks(work: Path) -> None:
    """Small question banks where the LoRA config reads them (4 leaves each, text questions)."""
    from hiertrain.taxonomy.taxonomy import Taxonomy

    for name, tax in (("inat21_plant", "Inat_plantae"), ("inat21_animal", "Inat_animal")):
        taxonomy = f"hiertrain://taxonomies/hierarchy_{tax}.json"
        leaves = Taxonomy.from_json(taxonomy, on_multi_parent="first").leaves[:4]
        folder = work / "data" / name
        folder.mkdir(parents=True)
        rows = []
        for i, leaf in enumerate(leaves):
            for split in ("train", "val", "test"):
                Image.new("RGB", (64, 64), (40 * i, 80, 120)).save(folder / f"{i}_{split}.png")
                rows.append({"image": f"{i}_{split}.png", "label": leaf, "split": split})
        (folder / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = work / "data" / "questions" / f"{name}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        assert main(["data", "questions", "--taxonomy", taxonomy, "--images", str(folder / "images.jsonl"),
                     "--on-multi-parent", "first", "--out", str(out)]) == 0  # fmt: skip


def _small_before_after(config: Path) -> str:
    """The config's before/after datasets without the shipped full-size banks (CUB's 725 test images
    alone take minutes on CPU); the datasets the test builds are kept as written."""
    import yaml

    callbacks = yaml.safe_load(config.read_text())["trainer"]["callbacks"]
    last = callbacks[-1]
    assert last["class_path"].endswith("BeforeAfterEvaluation")  # the CLI override below edits the last callback
    kept = {k: v for k, v in last["init_args"]["datasets"].items() if not str(v["questions"]).startswith("hiertrain://")}
    assert kept
    return "--trainer.callbacks.init_args.datasets=" + json.dumps(kept)


def _overrides(argv: list[str], tiny: Path) -> list[str]:
    """What the tiny CPU run changes: weights, device, dtype, sizes (never the protocol)."""
    sub = argv[0]
    config = argv[argv.index("--config") + 1] if "--config" in argv else ""
    cpu = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false"]
    if sub == "test":
        return [*cpu, f"--model.pretrained={tiny}", "--model.dtype=float32", "--data.limit=3", "--data.num_workers=0", "--wandb=false"]
    if sub == "predict":
        return [*cpu, "--trainer.precision=32-true", f"--model.pretrained={tiny}", "--model.dtype=float32"]  # all leaves: both splits
    if sub == "fit" and "probing" in config:
        return [*cpu, "--trainer.max_epochs=3", "--data.num_workers=0", "--trainer.logger=false"]
    if sub == "fit":  # LoRA
        return [*cpu, _small_before_after(REPO / config), "--trainer.strategy=auto", "--trainer.precision=32-true", "--trainer.max_steps=2",
                "--trainer.val_check_interval=1.0", f"--model.pretrained={tiny}", "--model.dtype=float32",
                "--model.gradient_checkpointing=false", "--data.num_workers=0", "--wandb=false"]  # fmt: skip
    return []


@pytest.mark.slow
def test_quick_start_commands_run_as_written(tiny_qwen, tmp_path, monkeypatch) -> None:
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    (work / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    steps = quick_start_commands(README.read_text(encoding="utf-8"))
    _fake_cub(home, "hiertrain://annotations/CUB200_with_similar_choice.jsonl")
    _inat_banks(work)
    for argv in steps:
        argv = [str(Path(a).expanduser()) if a.startswith("~") else a for a in argv]
        code = main([*argv, *_overrides(argv, tiny_qwen)])
        assert code in (0, None), argv
    runs = sorted(p.parent.relative_to(work / "runs").as_posix() for p in (work / "runs").rglob("run.json"))
    assert len(runs) == 4, runs  # image eval, text eval, probes, LoRA
    report = json.loads((work / "report" / "report.json").read_text())
    assert report["tables"]["visual"][0]["text_hca"] is not None  # the image run beside its text twin
    assert report["tables"]["probes"] and report["tables"]["lora"]
    (gallery,) = report["gallery"]  # the image run
    assert gallery["samples"] == 3 and gallery["missing_images"] == 0
    assert (work / "report" / gallery["gallery"]).stat().st_size > 5000
