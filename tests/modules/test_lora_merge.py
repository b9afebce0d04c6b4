"""`hiertrain lora merge`: adapter + base -> a plain model + processor that `hiertrain test` evaluates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hiertrain.cli.main import main
from hiertrain.vlm.loading import load_vllm
from hiertrain.modules.lora_tuner import LoRATuner, load_adapter, save_adapter


@pytest.fixture(scope="module")
def adapter(tiny_qwen, tmp_path_factory) -> Path:
    """A saved adapter with non-zero LoRA weights (B starts at zero, which would merge to a no-op)."""
    tuner = LoRATuner(str(tiny_qwen), rank=4, alpha=8, dropout=0.0)
    tuner.configure_model()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in tuner.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return save_adapter(tuner.model, tuner.processor, tmp_path_factory.mktemp("adapter") / "adapter")


def _text_logits(model, processor) -> torch.Tensor:
    from hiertrain.vlm.prefix_cache import render_chat
    from hiertrain.protocol.prompts import chat_messages

    prompt = render_chat(processor, chat_messages("What shape is a red solid circle?\nA. circle\nB. square", "text"))
    with torch.no_grad():
        return model(**processor(text=[prompt], return_tensors="pt")).logits[0]


def test_merge_writes_a_model_equal_to_base_plus_adapter(adapter, tiny_qwen, tmp_path) -> None:
    out = tmp_path / "merged"
    assert main(["lora", "merge", "--adapter", str(adapter), "--out", str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "chat_template.jinja").is_file()
    merged, processor = load_vllm(str(out))
    assert not any("lora" in k for k in merged.state_dict())
    base, _ = load_vllm(str(tiny_qwen))
    base_logits = _text_logits(base, processor)
    with_adapter = _text_logits(load_adapter(base, adapter), processor)
    merged_logits = _text_logits(merged, processor)
    assert (with_adapter - base_logits).abs().max() > 0.1
    torch.testing.assert_close(merged_logits, with_adapter, rtol=1e-4, atol=1e-4)


def test_hiertrain_test_evaluates_the_merged_model(adapter, synth_dir, tmp_path) -> None:
    out = tmp_path / "merged"
    assert main(["lora", "merge", "--adapter", str(adapter), "--out", str(out)]) == 0
    root = tmp_path / "eval"
    main([
        "test", "--config", str(Path(__file__).resolve().parents[2] / "configs" / "demo" / "qwen_text.yaml"),
        "--model.pretrained", str(out), "--model.run_name", "merged",
        "--data.questions", str(synth_dir / "questions_random.jsonl"), "--data.taxonomy", str(synth_dir / "taxonomy.json"),
        "--data.limit", "3", "--trainer.default_root_dir", str(root), "--wandb", "false",
    ])  # fmt: skip
    metrics = json.loads((root / "merged" / "metrics.json").read_text())
    assert metrics["num_samples"] == 3 and metrics["hca"] is not None
    assert json.loads((root / "merged" / "run.json").read_text())["model"] == str(out)


@pytest.mark.slow
def test_bad_inputs_exit_2_with_one_line(adapter, tmp_path) -> None:
    exe = Path(sys.executable).parent / "hiertrain"
    proc = subprocess.run(
        [str(exe), "lora", "merge", "--adapter", str(tmp_path), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"hiertrain: {tmp_path}: not a PEFT adapter (no adapter_config.json)"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    assert main(["lora", "merge", "--adapter", str(adapter), "--out", str(busy)]) == 2
