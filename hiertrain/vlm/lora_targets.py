"""Which linear layers LoRA adapts: the language model's q/k/v/o and gate/up/down only.

Qwen2.5-VL's vision blocks also have `mlp.gate_proj/up_proj/down_proj`, so a plain name
list (or `all-linear`) silently adapts the vision tower too. PEFT takes a *string*
`target_modules` as a regex that must `fullmatch` the module's qualified name, so we
anchor the pattern on the language model's own prefix (`ModelFamily.lora_pattern` finds it),
and check the result afterwards.
"""

from __future__ import annotations

import re

from torch import nn

from hiertrain.base.errors import HierError

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
LINEAR_SUFFIX = (
    r"(?:self_attn\.(?:" + "|".join(ATTENTION) + r")|mlp\.(?:" + "|".join(MLP) + r"))"
)


def module_prefix(model: nn.Module, sub: nn.Module) -> str:
    """The qualified name of `sub` inside `model` (e.g. `model.language_model`)."""
    for name, module in model.named_modules():
        if module is sub:
            return name
    raise HierError(f"{type(sub).__name__} is not a submodule of {type(model).__name__}")


def target_pattern(lm_prefix: str) -> str:
    """The regex PEFT fullmatches against module names: decoder layers under `lm_prefix` only."""
    head = re.escape(lm_prefix) + r"\." if lm_prefix else ""
    return head + r"layers\.\d+\." + LINEAR_SUFFIX


def matched_modules(model: nn.Module, pattern: str) -> list[str]:
    """Names of the linear modules `pattern` selects (what PEFT would adapt)."""
    rx = re.compile(pattern)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and rx.fullmatch(n)]


def check_targets(model: nn.Module, language_model: nn.Module, pattern: str, complete: bool = True) -> list[str]:
    """Before wrapping: every match is an LM projection, and (`complete`, the default pattern's
    promise) every matched LM layer has all seven. A pattern the user chose on purpose may adapt
    fewer (e.g. one layer's MLP) and passes `complete=False`."""
    lm_prefix = module_prefix(model, language_model)
    names = matched_modules(model, pattern)
    if not names:
        raise HierError(f"LoRA target pattern {pattern!r} matches no linear layer of {type(model).__name__}")
    outside = [n for n in names if not n.startswith(lm_prefix + "." if lm_prefix else "")]
    if outside:
        raise HierError(f"LoRA target pattern {pattern!r} matches outside the language model: {outside[0]}")
    per_layer: dict[str, set[str]] = {}
    for n in names:
        layer, _, leaf = n.rpartition(".")
        per_layer.setdefault(layer.rsplit(".", 1)[0], set()).add(leaf)
    expected = set(ATTENTION) | set(MLP)
    for layer, leaves in per_layer.items():
        if complete and leaves != expected:
            raise HierError(f"LoRA targets of {layer} are {sorted(leaves)}, expected {sorted(expected)}")
    return names


def check_adapted(peft_model: nn.Module, frozen: dict[str, nn.Module], language_model: nn.Module) -> None:
    """After wrapping: LoRA weights live only in the language model, and only they train.

    `frozen` names the parts that must stay untouched (vision tower, projector).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    lm_modules = {id(m) for m in language_model.modules()}
    for part, module in frozen.items():
        for name, sub in module.named_modules():
            if isinstance(sub, BaseTunerLayer):
                raise HierError(f"LoRA adapted the {part}: {name}")
        trainable = [n for n, p in module.named_parameters() if p.requires_grad]
        if trainable:
            raise HierError(f"{part} parameter is trainable: {trainable[0]}")
    lora_params = set()
    for name, sub in peft_model.named_modules():
        if isinstance(sub, BaseTunerLayer):
            if id(sub) not in lm_modules:
                raise HierError(f"LoRA layer outside the language model: {name}")
            lora_params.update(id(p) for n, p in sub.named_parameters() if "lora_" in n)
    for name, p in peft_model.named_parameters():
        if p.requires_grad and id(p) not in lora_params:
            raise HierError(f"non-LoRA parameter is trainable: {name}")
    if not lora_params:
        raise HierError(f"no LoRA layer found in {type(peft_model).__name__}")
