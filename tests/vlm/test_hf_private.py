"""The private transformers calls: present in the installed version, pinned in pyproject, and an
incompatible version is a one-line error naming it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import torch
import transformers
from transformers.generation.utils import GenerationMixin

from hiertrain.base.errors import HierError
from hiertrain.vlm.hf_private import TESTED_TRANSFORMERS, check_generation_internals, greedy_logits_processors

REPO = Path(__file__).resolve().parents[2]


def test_the_installed_transformers_has_every_private_call():
    check_generation_internals(GenerationMixin)  # raises naming the version when an upgrade changed them


def test_pyproject_pins_the_tested_range_and_it_holds_the_installed_version():
    from packaging.specifiers import SpecifierSet

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if re.match(r"transformers\b", d)]
    assert pin == f"transformers{TESTED_TRANSFORMERS}"
    spec = SpecifierSet(TESTED_TRANSFORMERS)
    assert any(s.operator == "<" for s in spec)  # an upper bound
    assert transformers.__version__ in spec


class _Renamed:
    """A model of a transformers version where one private method changed."""

    def _prepare_generation_config(self, generation_config, **kwargs):
        return generation_config, kwargs

    def _prepare_special_tokens(self, generation_config, has_mask=None, device=None):  # parameter renamed
        pass

    def _get_logits_processor(self, generation_config, input_ids_seq_length=None, encoder_input_ids=None, device=None,
                              model_kwargs=None):  # fmt: skip
        pass


def test_a_changed_private_api_is_one_line_naming_the_version():
    with pytest.raises(HierError) as err:
        greedy_logits_processors(_Renamed(), torch.ones(1, 3, dtype=torch.long), 5)
    message = str(err.value)
    assert message.startswith(f"transformers {transformers.__version__}: _prepare_special_tokens takes no kwargs_has_attention_mask")
    assert "\n" not in message
    with pytest.raises(HierError, match="has no _prepare_special_tokens"):
        check_generation_internals(type("Old", (), {"_prepare_generation_config": _Renamed._prepare_generation_config})())
