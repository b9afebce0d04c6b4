"""`QuestionProtocol`: the settings that decide what a question says to a model, as one object.

They used to travel as thirteen loose arguments through `HierVQADataModule`, `QuestionDataset`
and `level_questions`, where one could be dropped on the way; a frozen object cannot lose one."""

from __future__ import annotations

from dataclasses import dataclass

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
