"""The question condition is part of a run's identity; runs from before the field read as plain."""

from __future__ import annotations

import pytest

from hiertrain.base.errors import HierError
from hiertrain.runs.eval_outputs import RunDirectory
from hiertrain.runs.meta import RunMeta, default_run_name

META = {"model": "m", "model_name": "m", "dataset": "d", "questions_sha256": "abc", "mode": "image",
        "answer": "generate", "prompt_variant": 0, "seed": 0, "subject": "object", "level_names": ["a"]}  # fmt: skip


def test_claim_refuses_another_condition_and_reads_old_runs_as_plain(tmp_path):
    RunDirectory(tmp_path).claim(META)  # a run.json without "condition": plain
    RunDirectory(tmp_path).claim(dict(META, condition="plain"))
    with pytest.raises(HierError, match="another condition \\('plain', this run 'open'\\)"):
        RunDirectory(tmp_path).claim(dict(META, condition="open"))


def test_default_run_name_names_the_condition_unless_plain():
    assert default_run_name("m", "d", "image", "generate", 0) == "m-d-image-generate-v0"
    assert default_run_name("m", "d", "image", "generate", 0, "plain") == "m-d-image-generate-v0"
    assert default_run_name("m", "d", "image", "generate", 0, "binary") == "m-d-image-generate-v0-binary"
    meta = RunMeta(kind="eval", model="/x/m", dataset="d", mode="image", answer="generate", seed=0, prompt_variant=0,
                   fields={"condition": "open"})  # fmt: skip
    assert meta.run_name == "m-d-image-generate-v0-open"
