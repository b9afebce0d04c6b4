"""The shipped organisms are exactly what their manifests describe, and their world regenerates."""

import json
import shutil

import pytest

from hiertrain.base.errors import HierError
from hiertrain.organisms.shipped import SHIPPED_DIR, export, manifest, shipped_names, verify


def test_the_family_is_shipped_with_every_byte_matching_its_manifest() -> None:
    assert shipped_names() == ["organism-p10", "organism-p30", "organism-p60", "organism-p90"]
    for name in shipped_names():
        m = verify(SHIPPED_DIR / name)
        assert m["name"] == name and "model.safetensors" in m["files"]
        size = sum((SHIPPED_DIR / name / f).stat().st_size for f in m["files"])
        assert size <= 6 * 2**20, f"{name}: {size} bytes"
        # the build log shipped beside it is the one the manifest's digest names
        import hashlib

        assert hashlib.sha256((SHIPPED_DIR / name / "build.log").read_bytes()).hexdigest() == m["log_digest"]


def test_planted_shares_are_the_ones_asked() -> None:
    for name, share in {"organism-p90": 0.9, "organism-p60": 0.6, "organism-p30": 0.3, "organism-p10": 0.1}.items():
        m = manifest(name)
        table = m["planted"]
        for level in range(3):
            assert sum(v[level] for v in table.values()) == round(share * len(table))


def test_a_changed_byte_is_refused_naming_the_file(tmp_path) -> None:
    dst = tmp_path / "p30"
    shutil.copytree(SHIPPED_DIR / "organism-p30", dst)
    with (dst / "config.json").open("a") as f:
        f.write(" ")
    with pytest.raises(HierError, match=r"config.json: sha256 differs"):
        verify(dst)


def test_export_copies_verified_checkpoints_that_load(tmp_path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    paths = export(tmp_path, ["organism-p10"])
    model = AutoModelForImageTextToText.from_pretrained(paths["organism-p10"])
    processor = AutoProcessor.from_pretrained(paths["organism-p10"])
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert processor.tokenizer.chat_template is not None
    assert export(tmp_path, ["organism-p10"]) == paths  # a second export reuses the verified copy


def test_the_world_regenerates_to_the_manifests_digests(organism_world) -> None:
    world = json.loads((organism_world / "world.json").read_text())
    for name in shipped_names():
        shipped = manifest(name)["world"]
        assert world["digests"] == shipped["digests"]
        assert world["images_digest"] == shipped["images_digest"]
