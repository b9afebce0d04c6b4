"""Fixtures shared by the datamodule tests: the tiny Qwen2.5-VL's processor and model family."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def processor(tiny_qwen):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(tiny_qwen))


@pytest.fixture(scope="module")
def family(tiny_qwen):
    from transformers import AutoConfig

    from hiertrain.vlm.family import family_of

    return family_of(AutoConfig.from_pretrained(str(tiny_qwen)))
