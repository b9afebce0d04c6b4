"""load_open_clip loads the tiny local CLIP offline and resolves open_clip's naming schemes."""

from __future__ import annotations

import open_clip
import pytest
import torch
from PIL import Image

from hiertrain.base.errors import HierError
from hiertrain.vlm.openclip import _resolve, load_open_clip
from hiertrain.vlm.tiny import make_tiny, tiny_sizes


def test_tiny_clip_features_and_similarity(tiny_clip):
    model, preprocess, tokenizer = load_open_clip(str(tiny_clip))
    assert not model.training and type(tokenizer).__name__ == "SimpleTokenizer"
    pixels = preprocess(Image.new("RGB", (320, 240), (220, 40, 40))).unsqueeze(0)
    assert pixels.shape == (1, 3, 224, 224)
    tokens = tokenizer(["a photo of a sparrow", "a red striped circle"])
    assert tokens.shape == (2, tiny_sizes("clip")["text_cfg"]["context_length"])
    with torch.no_grad():
        image = model.encode_image(pixels, normalize=True)
        text = model.encode_text(tokens, normalize=True)
    assert image.shape == (1, 32) and text.shape == (2, 32)  # embed_dim 32 in hiertrain/vlm/tiny_sizes/clip.yaml
    assert torch.allclose(image.norm(dim=-1), torch.ones(1)) and torch.allclose(text.norm(dim=-1), torch.ones(2))
    similarity = image @ text.T
    assert similarity.shape == (1, 2) and (similarity.abs() <= 1 + 1e-5).all()


def test_local_dir_schema_and_same_seed_same_weights(tiny_clip, tmp_path):
    reference, _, _ = load_open_clip(f"local-dir:{tiny_clip}")
    same, _, _ = load_open_clip(str(make_tiny("clip", tmp_path / "same", seed=0)))
    other, _, _ = load_open_clip(str(make_tiny("clip", tmp_path / "other", seed=1)))
    ref, s, o = reference.state_dict(), same.state_dict(), other.state_dict()
    assert all(torch.equal(ref[k], s[k]) for k in ref)
    assert not torch.equal(ref["visual.conv1.weight"], o["visual.conv1.weight"])


def test_name_resolution_without_loading():
    assert _resolve("ViT-L-14", open_clip) == ("ViT-L-14", "openai")  # first listed tag, never random init
    assert _resolve("ViT-L-14:laion400m_e32", open_clip) == ("ViT-L-14", "laion400m_e32")
    assert _resolve("hf-hub:timm/ViT-SO400M-14-SigLIP", open_clip) == ("hf-hub:timm/ViT-SO400M-14-SigLIP", None)
    assert _resolve("ViT-SO400M-14-SigLIP", open_clip) == ("ViT-SO400M-14-SigLIP", "webli")


def test_bad_names_are_hier_errors(tmp_path):
    with pytest.raises(HierError, match="not a directory and not an open_clip model name"):
        load_open_clip("ViT-Nope-99")
    with pytest.raises(HierError, match="unknown pretrained tag 'bogus' for ViT-L-14"):
        load_open_clip("ViT-L-14:bogus")
    with pytest.raises(HierError, match="no open_clip_config.json"):
        load_open_clip(str(tmp_path))
    with pytest.raises(HierError, match="no open_clip_config.json"):
        load_open_clip(f"local-dir:{tmp_path}")
