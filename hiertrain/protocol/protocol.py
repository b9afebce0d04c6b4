"""`QuestionProtocol`: the settings that decide what a question says to a model, as one object.

They used to travel as thirteen loose arguments through `HierVQADataModule`, `QuestionDataset`
and `level_questions`, and were copied by hand into run.json, where one could be dropped on the
way (the CoT apostrophe was). A frozen object cannot lose one, and `to_json` is the one writer of
its run.json fields (`hiertrain.runs.meta.RunMeta.for_questions`, for every run over questions)."""

from __future__ import annotations

from dataclasses import dataclass

from typing import Any

from hiertrain.protocol import prompts
from hiertrain.protocol.prompts import Mode


@dataclass(frozen=True)
class QuestionProtocol:
    """How a question bank's records become questions (wording, options, condition, inference)."""

    mode: Mode
    level_names: tuple[str, ...]
    subject: str = prompts.DEFAULT_SUBJECT  # the image prompts' subject ("bird", "plant", ...)
    variant: int = 0  # the paper's prompt variant (hiertrain.protocol.prompts)
    seed: int = 0  # option shuffling seed
    family: str = prompts.DEFAULT_FAMILY  # the paper's per-dataset prompt wording
    shuffle: bool = True  # shuffle options per (sample, level)
    condition: str = "plain"  # a name in hiertrain.protocol.conditions.REGISTRY
    context: str | None = None  # the taxonomy text of the taxonomy condition
    cot_apostrophe: str = "typographic"
    label_case: str = "file"  # "lower": text questions lower-case the leaf (the paper's LLaVA text scripts)
    inference: str = "independent"  # hiertrain.protocol.conditions.INFERENCE_MODES
    circular: bool = False  # also ask every cyclic rotation of the options

    def __post_init__(self) -> None:
        object.__setattr__(self, "level_names", tuple(self.level_names))

    @property
    def condition_class(self) -> Any:
        """The condition's class in `hiertrain.protocol.conditions.REGISTRY` (its texts and reading)."""
        from hiertrain.protocol.conditions import condition_of

        return condition_of(self.condition)

    def to_json(self) -> dict[str, Any]:
        """The protocol's run.json fields, under run.json's names (they are run identity).

        `context` is not written: it is the text of the taxonomy file run.json names, and every
        sample's request digest covers it. `cot_apostrophe` is written only under a condition
        whose text depends on it (cot), so the other runs' identities stay as they were."""
        out: dict[str, Any] = {
            "mode": self.mode, "prompt_variant": self.variant, "seed": self.seed, "prompt_family": self.family,
            "shuffle_options": self.shuffle, "subject": self.subject, "level_names": list(self.level_names),
            "condition": self.condition, "inference": self.inference, "circular": self.circular,
            "label_case": self.label_case,
        }  # fmt: skip
        if self.condition_class.uses_apostrophe:
            out["cot_apostrophe"] = self.cot_apostrophe
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> QuestionProtocol:
        """The protocol a run.json records (`to_json`'s inverse, but `context`, which is not
        written); a field a run written before it lacks reads as what that run meant."""
        defaults = cls(mode="image", level_names=())
        return cls(
            mode=obj.get("mode") or defaults.mode,
            level_names=tuple(obj.get("level_names") or ()),
            subject=obj.get("subject") or defaults.subject,
            variant=int(obj.get("prompt_variant") or 0),
            seed=int(obj.get("seed") or 0),
            family=obj.get("prompt_family") or defaults.family,
            shuffle=bool(obj.get("shuffle_options", defaults.shuffle)),
            condition=obj.get("condition") or defaults.condition,
            cot_apostrophe=obj.get("cot_apostrophe") or defaults.cot_apostrophe,
            label_case=obj.get("label_case") or defaults.label_case,
            inference=obj.get("inference") or defaults.inference,
            circular=bool(obj.get("circular", defaults.circular)),
        )
