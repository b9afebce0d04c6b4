"""CLIPEvaluator: the option whose "a photo of a {label}." is most similar to the image."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

from hiertrain.datamodules.questions import HierVQADataModule
from hiertrain.base.errors import HierError
from hiertrain.modules.clip_evaluator import CLIPEvaluator
from hiertrain.vlm.openclip import load_open_clip
from hiertrain.metrics.predictions import load_predictions


def _trainer(root):
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=str(root))  # fmt: skip


def test_clip_picks_the_most_similar_option(tiny_clip, synth_dir, tmp_path):
    dm = HierVQADataModule(str(synth_dir / "questions_random.jsonl"), limit=3, batch_size=2)
    module = CLIPEvaluator(str(tiny_clip), run_name="clip")
    _trainer(tmp_path).test(module, datamodule=dm, verbose=False)
    preds = load_predictions(tmp_path / "clip/predictions.jsonl")
    assert [p.id for p in preds] == [0, 1, 2] and module.final_metrics["num_samples"] == 3
    # recompute by hand with a freshly loaded copy of the same model
    model, preprocess, tokenizer = load_open_clip(str(tiny_clip))
    item = dm.dataset()[0]
    with torch.no_grad():
        image = torch.nn.functional.normalize(model.encode_image(preprocess(item["image"])[None]), dim=-1)[0]
        for lq, lv in zip(item["levels"], preds[0].levels):
            texts = tokenizer([f"a photo of a {o}." for o in lq.options])
            sims = torch.nn.functional.normalize(model.encode_text(texts), dim=-1) @ image
            assert lv.predicted == lq.options[int(sims.argmax())]
            assert lv.options == lq.options


def test_clip_refuses_text_mode(tiny_clip, synth_dir, tmp_path):
    dm = HierVQADataModule(str(synth_dir / "questions_random.jsonl"), mode="text", limit=1)
    with pytest.raises(HierError, match="image questions only"):
        _trainer(tmp_path).test(CLIPEvaluator(str(tiny_clip)), datamodule=dm, verbose=False)
    with pytest.raises(HierError, match="placeholder"):
        CLIPEvaluator(str(tiny_clip), template="a photo")


def test_clip_lines_carry_the_digest_of_their_option_prompts(tiny_clip, synth_dir, tmp_path):
    """CLIP's request digest covers the option prompts as encoded: another template, another digest."""
    dm = HierVQADataModule(str(synth_dir / "questions_random.jsonl"), limit=2, batch_size=2)
    module = CLIPEvaluator(str(tiny_clip), run_name="clip")
    _trainer(tmp_path).test(module, datamodule=dm, verbose=False)
    preds = load_predictions(tmp_path / "clip/predictions.jsonl")
    item = dm.dataset()[0]
    assert preds[0].request == module.sample_request(item) and len(preds[0].request) == 64
    assert module.request_texts(item) == [[f"a photo of a {o}." for o in lq.options] for lq in item["levels"]]
    module.template = "a picture of a {label}."
    assert module.sample_request(item) != preds[0].request
