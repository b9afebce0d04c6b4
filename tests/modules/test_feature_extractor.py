"""FeatureExtractor + FeatureWriter: the hooked sites equal transformers' own hidden states, the
projector equals the LLM's input embeddings at the visual positions, runs are deterministic,
resumable, and padding repeats are never written."""

from __future__ import annotations

import json

import pytest
import torch

from hiertrain.features.feature_store import FeatureStore
from probing_cli import extract_features


@pytest.fixture(scope="module")
def image_store(tmp_path_factory, tiny_qwen, synth_dir):
    out = tmp_path_factory.mktemp("image_store") / "store"
    extract_features(
        str(tiny_qwen), out, images=str(synth_dir / "images.jsonl"), taxonomy=str(synth_dir / "taxonomy.json"),
        limit=5, batch_size=3, shard_rows=2, progress=False, accelerator="cpu",
    )  # fmt: skip
    return FeatureStore(out)


def test_sites_layout_and_records(image_store, synth_dir):
    layout = image_store.layout
    assert layout.mode == "image"
    assert layout.sites == ["vision", "projector", "llm.0", "llm.1", "llm.2"]  # tiny: 2 LLM blocks
    assert layout.dims == [32, 64, 64, 64, 64]
    assert layout.pools == ["avg", "last"] and layout.prompts == ["Describe this image."]
    assert layout.level_names == ["family", "shape", "colour", "texture"]
    assert [len(s.records) for s in image_store.shards] == [2, 2, 1]
    lines = [json.loads(x) for x in (synth_dir / "images.jsonl").read_text().splitlines()[:5]]
    recs = [rec for _, _, rec in image_store.index]
    assert [r["id"] for r in recs] == [0, 1, 2, 3, 4]
    assert [(r["image"], r["split"]) for r in recs] == [(x["image"], x["split"]) for x in lines]
    tax = json.loads((synth_dir / "taxonomy.json").read_text())
    assert [r["levels"] for r in recs] == [tax[x["label"]] for x in lines]


def test_hooked_sites_match_transformers_hidden_states(image_store, tiny_qwen, synth_dir):
    """Oracle: transformers' output_hidden_states (a different code path than our hooks)."""
    from PIL import Image

    from hiertrain.protocol.prompts import probe_image_messages as image_messages
    from hiertrain.vlm.loading import load_vllm

    model, processor = load_vllm(str(tiny_qwen))
    recs = [rec for _, _, rec in image_store.index][:2]
    images = [Image.open(synth_dir / r["image"]).convert("RGB") for r in recs]
    chat = processor.apply_chat_template(image_messages(), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[chat] * 2, images=images, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        vis = model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    mask = inputs["input_ids"] == model.config.image_token_id
    rows = [(s, r) for s, r, _ in image_store.index][:2]
    avg, last = image_store.gather(rows, "avg"), image_store.gather(rows, "last")
    for k, h in enumerate(out.hidden_states):
        for b in range(2):
            tokens = h[b][mask[b]]
            torch.testing.assert_close(avg[b, 0, 2 + k, :64], tokens.mean(0), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(last[b, 0, 2 + k, :64], tokens[-1], rtol=1e-4, atol=1e-5)
    # vision encoder output (window order inside transformers; the mean does not care about order)
    per_image = inputs["image_grid_thw"].prod(-1).tolist()
    for b, tokens in enumerate(torch.split(vis.last_hidden_state, per_image)):
        torch.testing.assert_close(avg[b, 0, 0, :32], tokens.mean(0), rtol=1e-4, atol=1e-5)
        assert avg[b, 0, 0, 32:].abs().sum() == 0  # zero padding up to the widest site
    # projector output in image order == the LLM input embeddings at the visual positions
    torch.testing.assert_close(last[:, 0, 1], last[:, 0, 2])
    torch.testing.assert_close(avg[:, 0, 1], avg[:, 0, 2])


def test_extraction_is_deterministic_and_resumes_without_duplicates(tmp_path, image_store, tiny_qwen, synth_dir):
    common = dict(
        images=str(synth_dir / "images.jsonl"), taxonomy=str(synth_dir / "taxonomy.json"),
        batch_size=3, shard_rows=2, progress=False, accelerator="cpu",
    )  # fmt: skip
    out = tmp_path / "store"
    extract_features(str(tiny_qwen), out, limit=3, **common)  # an interrupted run: 3 of 5 done
    extract_features(str(tiny_qwen), out, limit=5, **common)  # the rerun only adds 2
    store = FeatureStore(out)
    assert [int(r["id"]) for _, _, r in store.index] == [0, 1, 2, 3, 4]
    assert [len(s.records) for s in store.shards] == [2, 1, 2]
    rows_a = [(s, r) for s, r, _ in store.index]
    rows_b = [(s, r) for s, r, _ in image_store.index]
    for pool in ("avg", "last"):
        assert torch.equal(store.gather(rows_a, pool), image_store.gather(rows_b, pool))


def test_rerun_after_the_weights_were_rebuilt_is_refused(tmp_path, tiny_qwen, synth_dir, capsys):
    """issue 22 item 1: `hiertrain tiny --seed 1` over the model folder, then the same
    extraction into the same store: the old shards must not be kept and probed as the new
    model's; the refusal names what differs (the weights fingerprint, nothing else)."""
    import shutil

    from hiertrain.runs.meta import weights_fingerprint
    from hiertrain.vlm.tiny import make_tiny

    model = tmp_path / "model"
    shutil.copytree(tiny_qwen, model)
    common = dict(
        images=str(synth_dir / "images.jsonl"), taxonomy=str(synth_dir / "taxonomy.json"),
        batch_size=3, shard_rows=2, progress=False, accelerator="cpu",
    )  # fmt: skip
    out = tmp_path / "store"
    extract_features(str(model), out, limit=2, **common)
    before = weights_fingerprint(model)
    assert FeatureStore(out).layout.info["weights"] == before
    extract_features(str(model), out, limit=3, **common)  # same weights: resumes
    assert FeatureStore(out).done_ids() == {0, 1, 2}
    shutil.rmtree(model)
    make_tiny("qwen2_5_vl", model, seed=1)
    with pytest.raises(SystemExit) as exit_:
        extract_features(str(model), out, limit=5, **common)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"hiertrain: {out / 'store.json'}: the store was extracted with another setup: ")
    assert f"weights (store {before!r}, this run {weights_fingerprint(model)!r})" in err
    assert "sites" not in err and "prompts" not in err
    assert FeatureStore(out).done_ids() == {0, 1, 2}  # nothing of the new model was mixed in


def test_writer_drops_padding_repeats(tmp_path, tiny_qwen, synth_dir):
    """Under DDP, PaddedEvalSampler's repeats arrive with valid=False: none may be written."""
    from hiertrain.callbacks.feature_writer import FeatureWriter

    writer = FeatureWriter(str(tmp_path / "s"), shard_rows=10)

    class _Layout:  # the writer only needs the store layout fields from model and data
        mode = "image"

        def store_fields(self):
            return {"mode": "image", "sites": ["llm.0"], "dims": [2], "pools": ["avg"], "model": "m"}

        def describe(self):
            return {"prompts": ["p"], "level_names": ["a"], "prompt_for_level": [0], "info": {}}

    class _Trainer:
        global_rank = 1
        datamodule = _Layout()
        records: list = []

        class predict_loop:
            return_predictions = True

    _Trainer.datamodule.records = []
    writer.setup(_Trainer, _Layout(), "predict")
    assert _Trainer.predict_loop.return_predictions is False
    recs = [{"id": i, "label": "x", "split": "train", "levels": ["x"]} for i in (1, 3, 1)]
    pred = {"records": recs, "valid": torch.tensor([True, True, False]), "features": {"avg": torch.ones(3, 1, 1, 2)}}
    writer.write_on_batch_end(_Trainer, None, pred, None, None, 0)
    writer.on_predict_end(_Trainer, None)
    store = FeatureStore(tmp_path / "s")
    assert [int(r["id"]) for _, _, r in store.index] == [1, 3]
    assert store.shard_paths()[0].name.startswith("shard-r001-")
    assert writer.dropped_padding == 1


def test_text_mode_hidden_states_and_leak_free_default(tmp_path, tiny_qwen, synth_dir):
    from hiertrain.protocol.prompts import probe_text_messages as text_messages
    from hiertrain.vlm.loading import load_vllm

    tax = json.loads((synth_dir / "taxonomy.json").read_text())
    leaves = list(tax)
    (tmp_path / "train.json").write_text(json.dumps({k: tax[k] for k in leaves[:2]}))
    (tmp_path / "test.json").write_text(json.dumps({k: tax[k] for k in leaves[12:13]}))
    stores = {}
    for leak in (False, True):
        stores[leak] = FeatureStore(
            extract_features(
                str(tiny_qwen), tmp_path / f"text_{leak}", mode="text", train_taxonomy=str(tmp_path / "train.json"),
                test_taxonomy=str(tmp_path / "test.json"), label_in_text=leak, batch_size=2, progress=False,
                accelerator="cpu", level_names=["family", "shape", "colour", "texture"],
            )  # fmt: skip
        )
    store = stores[False]
    assert store.layout.sites == ["llm.0", "llm.1", "llm.2"]
    assert store.layout.prompt_for_level == [0, 1, 2, -1]
    assert "It belongs to" not in " ".join(store.layout.prompts)
    assert all("It belongs to" in p for p in stores[True].layout.prompts)
    recs = [r for _, _, r in store.index]
    assert [(r["label"], r["split"]) for r in recs] == [(leaves[0], "train"), (leaves[1], "train"), (leaves[12], "test")]
    assert recs[0]["levels"] == tax[leaves[0]][:-1] + [None]

    # oracle for slot 1 (the "shape" question) of the first leaf
    model, processor = load_vllm(str(tiny_qwen))
    from hiertrain.protocol.prompts import text_prompt

    prompt = text_prompt(1, "shape", leaves[0])
    chat = processor.tokenizer.apply_chat_template(text_messages(prompt), tokenize=False, add_generation_prompt=True)
    ids = processor.tokenizer([chat], return_tensors="pt")
    with torch.no_grad():
        hs = model(**ids, output_hidden_states=True).hidden_states
    x = store.gather([(0, 0)], "avg")
    for k, h in enumerate(hs):
        torch.testing.assert_close(x[0, 1, k], h[0].mean(0), rtol=1e-4, atol=1e-5)
    leaky = stores[True].gather([(0, 0)], "avg")
    assert not torch.allclose(leaky[0, 1], x[0, 1])


@pytest.mark.slow
def test_two_process_ddp_writes_each_sample_once(tmp_path, tiny_qwen, synth_dir):
    """Real DDP (2 CPU processes, gloo): 5 samples -> rank 0 gets 0,2,4; rank 1 gets 1,3 and a
    padding repeat of 0, which must not reach the store."""
    out = tmp_path / "ddp"
    extract_features(
        str(tiny_qwen), out, images=str(synth_dir / "images.jsonl"), taxonomy=str(synth_dir / "taxonomy.json"),
        limit=5, batch_size=2, progress=False, accelerator="cpu", devices=2, strategy="ddp_spawn",
    )  # fmt: skip
    store = FeatureStore(out)
    by_rank = {p.name[:10]: [int(r["id"]) for r in s.records] for p, s in zip(store.shard_paths(), store.shards)}
    assert by_rank == {"shard-r000": [0, 2, 4], "shard-r001": [1, 3]}
    assert [int(r["id"]) for _, _, r in store.index] == [0, 1, 2, 3, 4]


def test_llava_onevision_sites_match_transformers_hidden_states(tiny_llava, synth_dir):
    """LLaVA-OneVision through its family adapter, same oracle as Qwen: `vision` = the base crop's
    vision feature the projector reads, `projector` = the packed visual tokens in LLM order
    (== the LLM input embeddings at the image tokens), `llm.k` = transformers' hidden states.
    Two aspect ratios in one batch: different tiles, unpadding, newline tokens and padding."""
    from PIL import Image

    from hiertrain.protocol.prompts import probe_image_messages as image_messages
    from hiertrain.modules.feature_extractor import FeatureExtractor
    from hiertrain.vlm.loading import load_vllm

    extractor = FeatureExtractor(str(tiny_llava), mode="image")
    assert extractor.sites == ["vision", "projector", "llm.0", "llm.1", "llm.2"]  # tiny: 2 LLM blocks
    assert extractor.dims == [32, 64, 64, 64, 64]  # SigLIP width, then the LLM's
    square = Image.open(synth_dir / "images" / "red_solid_circle_0.png").convert("RGB")
    images = [square, square.resize((700, 300))]
    got = extractor.predict_step({"records": [{}, {}], "valid": torch.tensor([True, True]), "images": images})
    avg, last = got["features"]["avg"], got["features"]["last"]
    assert avg.shape == last.shape == (2, 1, 5, 64)

    model, processor = load_vllm(str(tiny_llava))
    chat = processor.apply_chat_template(image_messages(), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[chat] * 2, images=images, padding=True, return_tensors="pt")
    cfg = model.config
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        tower = model.model.vision_tower(inputs["pixel_values"][:, 0], output_hidden_states=True)
    base = tower.hidden_states[cfg.vision_feature_layer]
    base = base[:, 1:] if cfg.vision_feature_select_strategy == "default" else base
    mask = inputs["input_ids"] == cfg.image_token_id
    assert mask[0].sum() != mask[1].sum()  # the wide image has other tiles: other token counts
    for k, h in enumerate(out.hidden_states):
        for b in range(2):
            tokens = h[b][mask[b]]
            torch.testing.assert_close(avg[b, 0, 2 + k], tokens.mean(0), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(last[b, 0, 2 + k], tokens[-1], rtol=1e-4, atol=1e-5)
    for b in range(2):
        torch.testing.assert_close(avg[b, 0, 0, :32], base[b].mean(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(last[b, 0, 0, :32], base[b][-1], rtol=1e-4, atol=1e-5)
        assert avg[b, 0, 0, 32:].abs().sum() == 0  # zero padding up to the widest site
    # the hooked projector tokens, packed in LLM order, are exactly the LLM's visual input embeddings
    torch.testing.assert_close(avg[:, 0, 1], avg[:, 0, 2])
    torch.testing.assert_close(last[:, 0, 1], last[:, 0, 2])
    # documented caveat: the packed sequence always ends with the learned image_newline
    torch.testing.assert_close(last[0, 0, 1], last[1, 0, 1])
    torch.testing.assert_close(last[0, 0, 1, :64], model.model.image_newline.detach())


def test_internvl_sites_match_transformers_hidden_states(tiny_internvl, synth_dir):
    """InternVL-hf through its family adapter: `vision` = the pixel-shuffled tower feature the
    projector reads for the last tile (the thumbnail when tiled), `projector` = all tiles'
    projector output (== the LLM input embeddings at <IMG_CONTEXT>), `llm.k` = hidden states."""
    from PIL import Image

    from hiertrain.protocol.prompts import probe_image_messages as image_messages
    from hiertrain.modules.feature_extractor import FeatureExtractor
    from hiertrain.vlm.loading import load_vllm

    extractor = FeatureExtractor(str(tiny_internvl), mode="image")
    assert extractor.sites == ["vision", "projector", "llm.0", "llm.1", "llm.2"]
    assert extractor.dims == [128, 64, 64, 64, 64]  # 2x2 pixel shuffle of a 32-wide tower
    square = Image.open(synth_dir / "images" / "red_solid_circle_0.png").convert("RGB")
    images = [square, square.resize((600, 300))]  # one tile; tiles + thumbnail
    got = extractor.predict_step({"records": [{}, {}], "valid": torch.tensor([True, True]), "images": images})
    avg, last = got["features"]["avg"], got["features"]["last"]
    assert avg.shape == (2, 1, 5, 128)

    model, processor = load_vllm(str(tiny_internvl))
    chat = processor.apply_chat_template(image_messages(), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[chat] * 2, images=images, padding=True, return_tensors="pt")
    cfg = model.config
    mask = inputs["input_ids"] == cfg.image_token_id
    tiles = (mask.sum(1) // cfg.image_seq_length).tolist()
    assert tiles[0] == 1 and tiles[1] > 2
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        last_tiles = inputs["pixel_values"][torch.tensor(tiles).cumsum(0) - 1]
        tower = model.model.vision_tower(pixel_values=last_tiles).last_hidden_state[:, 1:]  # CLS dropped
    side = int(tower.shape[1] ** 0.5)
    shuffled = model.model.pixel_shuffle(tower.reshape(2, side, side, -1), scale_factor=cfg.downsample_ratio)
    shuffled = shuffled.reshape(2, -1, shuffled.shape[-1])
    for k, h in enumerate(out.hidden_states):
        for b in range(2):
            tokens = h[b][mask[b]]
            torch.testing.assert_close(avg[b, 0, 2 + k, :64], tokens.mean(0), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(last[b, 0, 2 + k, :64], tokens[-1], rtol=1e-4, atol=1e-5)
    for b in range(2):
        torch.testing.assert_close(avg[b, 0, 0], shuffled[b].mean(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(last[b, 0, 0], shuffled[b][-1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(avg[:, 0, 1], avg[:, 0, 2])
    torch.testing.assert_close(last[:, 0, 1], last[:, 0, 2])


def test_an_image_the_processor_refuses_is_skipped_and_named(tmp_path, tiny_qwen, synth_dir, capsys):
    # issue 22 item 6: a 6000x20 strip killed `hiertrain predict` (ValueError from the Qwen processor)
    import shutil

    from PIL import Image

    shutil.copytree(synth_dir / "images", tmp_path / "images")
    Image.new("RGB", (6000, 20), (200, 30, 30)).save(tmp_path / "images/strip.png")
    lines = [json.loads(line) for line in (synth_dir / "images.jsonl").read_text().splitlines()[:4]]
    lines[2]["image"] = "images/strip.png"
    images = tmp_path / "images.jsonl"
    images.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = extract_features(str(tiny_qwen), tmp_path / "store", images=str(images), taxonomy=str(synth_dir / "taxonomy.json"),
                           batch_size=2, progress=False, accelerator="cpu")  # fmt: skip
    printed = capsys.readouterr()
    assert f"skipped: {tmp_path / 'images/strip.png'}: cannot read image of sample 2 for this model (ValueError: absolute aspect ratio" in printed.err
    assert "wrote 3 samples" in printed.out and "unreadable images skipped: 1" in printed.out
    assert sorted(int(r["id"]) for _, _, r in FeatureStore(out).index) == [0, 1, 3]
