"""The sharded feature cache: safetensors-compatible, bounded shards, resumable, no duplicates."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from hiertrain.base.errors import HierError
from hiertrain.features.feature_store import FeatureStore, ShardWriter, StoreLayout


def _layout(dtype: str = "float32", pools=("avg", "last")) -> StoreLayout:
    return StoreLayout(
        mode="image",
        sites=["vision", "projector", "llm.0"],
        dims=[3, 5, 5],
        pools=list(pools),
        prompts=["Describe this image."],
        level_names=["a", "b"],
        prompt_for_level=[0, 0],
        dtype=dtype,
    )


def _records(ids) -> list[dict]:
    return [{"id": i, "label": f"leaf{i}", "split": "train", "levels": ["x", f"leaf{i}"]} for i in ids]


def _feats(n: int, layout: StoreLayout, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {p: torch.randn((n, *layout.row_shape), generator=g) for p in layout.pools}
    for t in out.values():
        t[:, :, 0, 3:] = 0  # vision is 3 wide: its padding is zero
    return out


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_matches_safetensors_reader(tmp_path, dtype):
    layout = _layout(dtype)
    feats = _feats(10, layout)
    w = ShardWriter(tmp_path, layout, shard_rows=4)
    w.add(_records(range(10)), feats)
    w.flush()
    store = FeatureStore(tmp_path)
    assert [p.name for p in store.shard_paths()] == [f"shard-r000-{k:06d}.safetensors" for k in range(3)]
    assert [len(s.records) for s in store.shards] == [4, 4, 2]
    rows = [(s, r) for s, r, _ in store.index]
    for pool in layout.pools:
        want = feats[pool].to(layout.torch_dtype).float()
        assert torch.equal(store.gather(rows, pool), want)
        # a site subset, in a shuffled row order
        order = [7, 0, 9, 3]
        assert torch.equal(store.gather([rows[i] for i in order], pool, sites=[2, 0]), want[order][:, :, [2, 0]])
    # the files are plain safetensors (any reader can open them)
    with safe_open(str(store.shard_paths()[1]), framework="pt") as f:
        assert f.get_tensor("ids").tolist() == [4, 5, 6, 7]
        assert torch.equal(f.get_tensor("last").float(), feats["last"][4:8].to(layout.torch_dtype).float())


def test_shard_size_from_memory_cap(tmp_path):
    layout = _layout("float32")
    # one row: 2 pools x 1 prompt x 3 sites x 5 dims x 4 bytes = 120 bytes
    assert layout.bytes_per_row == 120
    w = ShardWriter(tmp_path, layout, max_shard_mb=600 / 2**20)
    assert w.shard_rows == 5
    w.add(_records(range(12)), _feats(12, layout))
    w.flush()
    sizes = [len(s.records) for s in FeatureStore(tmp_path).shards]
    assert sizes == [5, 5, 2]


def test_resume_continues_numbering_and_reports_done_ids(tmp_path):
    layout = _layout()
    w = ShardWriter(tmp_path, layout, shard_rows=3)
    w.add(_records(range(4)), _feats(4, layout))
    # crash before flush: the 4th row is lost, a stale temp file is left behind
    (tmp_path / "shard-r000-000009.safetensors.tmp").write_bytes(b"partial")
    assert FeatureStore(tmp_path).done_ids() == {0, 1, 2}
    w2 = ShardWriter(tmp_path, layout, shard_rows=3)
    assert not list(tmp_path.glob("*.tmp"))
    w2.add(_records([3, 4]), _feats(2, layout, seed=1))
    w2.flush()
    store = FeatureStore(tmp_path)
    assert [p.name for p in store.shard_paths()] == ["shard-r000-000000.safetensors", "shard-r000-000001.safetensors"]
    assert [int(rec["id"]) for _, _, rec in store.index] == [0, 1, 2, 3, 4]


def test_two_ranks_write_separate_shards(tmp_path):
    layout = _layout()
    for rank, ids in ((0, [0, 2, 4]), (1, [1, 3])):
        w = ShardWriter(tmp_path, layout, rank=rank, shard_rows=8)
        w.add(_records(ids), _feats(len(ids), layout, seed=rank))
        w.flush()
    store = FeatureStore(tmp_path)
    assert sorted(p.name[:10] for p in store.shard_paths()) == ["shard-r000", "shard-r001"]
    assert [int(rec["id"]) for _, _, rec in store.index] == [0, 1, 2, 3, 4]


def test_duplicate_sample_is_refused(tmp_path):
    layout = _layout()
    for rank in (0, 1):
        w = ShardWriter(tmp_path, layout, rank=rank, shard_rows=8)
        w.add(_records([7]), _feats(1, layout))
        w.flush()
    with pytest.raises(HierError, match=r"shard-r001-000000.safetensors: sample id 7 already stored in shard-r000"):
        FeatureStore(tmp_path).index


def test_layout_mismatch_and_missing_store(tmp_path):
    ShardWriter(tmp_path, _layout("float32"))
    with pytest.raises(HierError, match=r"another setup: dtype \(store 'float32', this run 'bfloat16'\); use a new directory"):
        ShardWriter(tmp_path, _layout("bfloat16"))
    with pytest.raises(HierError, match="not a feature store"):
        FeatureStore(tmp_path / "nowhere")
    with pytest.raises(HierError, match="dtype"):
        _layout("int8")


def test_fewer_prompt_slots_are_zero_padded(tmp_path):
    layout = StoreLayout("text", ["llm.0"], [4], ["avg"], ["p0", "p1", "p2"], ["a", "b", "c", "d"], [0, 1, 2, -1])
    w = ShardWriter(tmp_path, layout, shard_rows=4)
    w.add(_records([0]), {"avg": torch.ones(1, 3, 1, 4)})
    w.add(_records([1]), {"avg": torch.full((1, 2, 1, 4), 2.0)})  # a shallower leaf: 2 slots
    w.flush()
    x = FeatureStore(tmp_path).gather([(0, 0), (0, 1)], "avg")
    assert x[1, :2].eq(2).all() and x[1, 2].eq(0).all() and x[0].eq(1).all()
    with pytest.raises(HierError, match="do not fit"):
        w.add(_records([2]), {"avg": torch.ones(1, 4, 1, 4)})


def _with_info(**info) -> StoreLayout:
    base = _layout()
    return StoreLayout(**{**base.to_json(), "info": info})


def test_rerun_with_another_identity_names_only_the_differing_fields(tmp_path):
    # issue 22 item 19: the layout (sites/pools/dtype/prompts) is equal; the message must say
    # which identity field differs instead of "different layout (sites/pools/dtype/prompts)"
    info = {"model": "m", "weights": "aaaa", "images_sha256": "1111", "source": "a/images.jsonl"}
    ShardWriter(tmp_path, _with_info(**info))
    with pytest.raises(HierError) as err:
        ShardWriter(tmp_path, _with_info(**{**info, "model": "other", "images_sha256": "2222"}))
    msg = str(err.value)
    assert "model (store 'm', this run 'other')" in msg and "images_sha256 (store '1111', this run '2222')" in msg
    for same in ("weights", "sites", "pools", "dtype", "prompts"):
        assert same not in msg
    assert "\n" not in msg
    # a file name is not identity when its content hash is recorded: a moved images list resumes
    ShardWriter(tmp_path, _with_info(**{**info, "source": "/elsewhere/images.jsonl"}))


def _one_shard(tmp_path):
    layout = _layout()
    w = ShardWriter(tmp_path, layout, shard_rows=8)
    w.add(_records([0, 1, 2]), _feats(3, layout))
    return w.flush()


@pytest.mark.parametrize("keep", [4, 40, -100])
def test_cut_off_shard_is_named_with_how_to_redo_it(tmp_path, keep):
    # issue 22 item 10: a shard cut off by a copy (in the 8-byte length, the JSON header, or
    # the tensor data) is one line naming it and the re-extraction, never a JSONDecodeError
    shard = _one_shard(tmp_path)
    data = shard.read_bytes()
    shard.write_bytes(data[:keep] if keep > 0 else data[:keep])
    with pytest.raises(HierError, match=r"shard-r000-000000\.safetensors: cut-off feature shard .*rerun the same extraction") as err:
        FeatureStore(tmp_path).index
    assert "\n" not in str(err.value)
    shard.unlink()  # what the message offers: the samples are extracted again on the rerun
    assert FeatureStore(tmp_path).done_ids() == set()


def test_damaged_shard_header_is_named(tmp_path):
    shard = _one_shard(tmp_path)
    data = bytearray(shard.read_bytes())
    data[8:12] = b"@@@@"  # the JSON header no longer parses
    shard.write_bytes(bytes(data))
    with pytest.raises(HierError, match=r"shard-r000-000000\.safetensors: damaged feature shard header \(JSONDecodeError\)"):
        FeatureStore(tmp_path).shards
