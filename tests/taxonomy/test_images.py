"""Image reading: one path rule; bombs, truncated files and 16-bit grey handled (issue 11)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hiertrain.taxonomy.images import BAD_IMAGE_ERRORS, open_rgb, relative_image_path, resolve_image


def truncated_jpeg(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_decompression_bomb_is_refused_as_a_bad_image(tmp_path, bomb_png):
    with pytest.raises(BAD_IMAGE_ERRORS) as info:
        open_rgb(bomb_png(tmp_path / "bomb.png"))
    assert isinstance(info.value, Image.DecompressionBombError)


def test_truncated_jpeg_is_a_bad_image(tmp_path):
    with pytest.raises(BAD_IMAGE_ERRORS):
        open_rgb(truncated_jpeg(tmp_path / "cut.jpg"))


@pytest.mark.parametrize("kind", ["uint16", "float"])
def test_16bit_and_float_grey_are_scaled_not_clipped(tmp_path, kind):
    # issue 11 case 9: PIL's convert("RGB") clips 16-bit grey to white
    ramp = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    if kind == "uint16":
        path = tmp_path / "grey16.png"
        Image.fromarray((ramp * 65535).astype(np.uint16)).save(path)
    else:
        path = tmp_path / "grey.tiff"
        Image.fromarray(ramp.astype(np.float32), mode="F").save(path)
    rgb = np.asarray(open_rgb(path))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == 255).mean() < 0.01  # not clipped to white
    np.testing.assert_allclose(rgb[..., 0] / 255.0, ramp, atol=1 / 255 + 1e-6)


def test_image_path_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "annotations"
    # relative: from the question file's folder; a mapped prefix: its target from the working directory
    assert resolve_image("img/a.png", base) == base / "img/a.png"
    assert resolve_image("/authors/CUB/images/1/a.jpg", base, {"/authors/CUB/images": "data/CUB/images"}) == Path(
        "data/CUB/images/1/a.jpg"
    )
    assert resolve_image("/abs/a.png", base) == Path("/abs/a.png")
    # the writer's side: a path that the rule finds again from another folder
    written = relative_image_path(tmp_path / "data/img/a.png", tmp_path / "out/q.jsonl")
    assert written == "../data/img/a.png"
    assert resolve_image(written, tmp_path / "out").resolve() == (tmp_path / "data/img/a.png").resolve()
