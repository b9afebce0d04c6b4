"""`hiertrain demo`: its configs are the repo's demo configs with runs/demo pointed at --out."""

from __future__ import annotations

from pathlib import Path

import yaml

from hiertrain.cli.commands.demo import _configs_dir, _resolve

DEMO_CONFIGS = ["demo/qwen_image.yaml", "demo/qwen_text.yaml", "demo/llava_image.yaml", "demo/clip_image.yaml",
                "probing/synth_extract_image.yaml", "probing/synth_probes.yaml", "lora/synth_demo_text.yaml"]


def _strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_every_demo_path_moves_under_out(tmp_path: Path) -> None:
    out = tmp_path / "my demo"
    for name in DEMO_CONFIGS:
        source = _configs_dir() / name
        assert "runs/demo/" in source.read_text(), name
        resolved = yaml.safe_load(_resolve(source, out, tmp_path).read_text())
        strings = _strings(resolved)
        assert not [s for s in strings if "runs/demo" in s], name
        paths = [s for s in strings if s.startswith("/")]
        assert paths and all(p.startswith(f"{out}/") for p in paths), (name, paths)
