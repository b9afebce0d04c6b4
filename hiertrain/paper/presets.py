"""The paper's evaluation protocol per model and dataset: one table, and the runs it reports.

This is the one place that knows how the paper asked each model (prompt variant, reply length,
option order, label case, CoT apostrophe, dtype, system prompt); `configs/paper/compose.py` writes
the `configs/paper/<model>/*.yaml` presets from it and tests/paper/test_presets.py checks the
presets' data settings build the protocol `paper_protocol` returns.

Sources (the paper's code, yuanqing-ai/LLM-Hierarchical-Consistency at c86f23af):
scripts/all_image_benchmarks.sh, scripts/all_text_benchmarks.sh, scripts/all_og_llm_on_text.sh
(variants), evaluation/vllm/*/ and evaluation/llm/*/ (max_new_tokens, shuffling, settings);
conditions: prompt_engineering/{taxonomy,cot,bio_cot}/, prompt_engineering/eval_CUB_binary.py and
scripts/{tax_pmt,vlm_cot,bio_cot_pmt}.sh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from hiertrain.protocol.conditions import condition_of
from hiertrain.protocol.prompts import Mode
from hiertrain.protocol.protocol import QuestionProtocol

Kind = Literal["vlm", "clip", "llm"]


class ModelRow(TypedDict, total=False):
    """One model's row of `MODELS` (absent keys: the model's config or hiertrain's default holds)."""

    kind: Kind  # vlm: image + text runs; clip: image runs, no generation; llm: text runs only
    image_variant: dict[str, int]  # --prompt_order per dataset of its image runs; unlisted = 0
    image_tokens: int  # max_new_tokens of its image scripts
    image_tokens_by_dataset: dict[str, int]  # ... where a dataset's script differs
    text_tokens: int  # max_new_tokens of its text scripts
    condition_tokens: dict[str, int]  # max_new_tokens of a prompt-engineering script, where it differs
    dtype: str  # the paper's weights dtype, where the model config's differs
    system_prompt: str  # the VLLMEvaluator system_prompt that matches the paper's call
    text_label_case: str  # data.label_case of its text runs
    cot_apostrophe: str  # the "Let’s" of its CoT scripts


class DatasetRow(TypedDict, total=False):
    """One dataset's row of `DATASETS`."""

    text_variant: int  # the variant of its text scripts; absent = the paper has no text run on it


# ---- the table ---------------------------------------------------------------------------------------
# Per dataset (hiertrain data configs; CUB: the similar-distractor file its scripts use). Text variants:
# scripts/all_text_benchmarks.sh (the same for every VLM) and all_og_llm_on_text.sh (Qwen2.5-IT); no Food
# text script.
DATASETS: dict[str, DatasetRow] = {
    "cub200_similar": {"text_variant": 1},
    "inat21_plant": {"text_variant": 1},
    "inat21_animal": {"text_variant": 1},
    "imagenet_animal": {"text_variant": 2},
    "imagenet_artifact": {"text_variant": 2},
    "food": {},
}

# Per model. image_variant: --prompt_order per (model, dataset) in scripts/all_image_benchmarks.sh.
# Tokens: the scripts' generate lengths: Qwen image 10 (5 on iNat), LLaVA image 10, everything else 5.
# dtype: the paper's LLaVA runs were float16. system_prompt model_default: InternVL's model.chat sends
# the conversation template's system message. text_label_case lower: evaluation/llm/llava/eval_text_*.py
# (label=label.lower()). cot_apostrophe: the Qwen scripts spell "Let’s" with U+2019, the InternVL/LLaVA
# ones with "'". condition_tokens: InternVL2.5's taxonomy script 5, eval_CUB_binary.py 10.
# qwen2_5_7b_instruct: the paper's "original LLM" runs (evaluation/og_llm).
_QWEN_VL: ModelRow = {"kind": "vlm", "image_tokens": 10, "image_tokens_by_dataset": {"inat21_plant": 5, "inat21_animal": 5},
                      "text_tokens": 5, "cot_apostrophe": "typographic"}  # fmt: skip
_INTERNVL: ModelRow = {"kind": "vlm", "image_tokens": 5, "text_tokens": 5, "system_prompt": "model_default", "cot_apostrophe": "ascii"}
MODELS: dict[str, ModelRow] = {
    "qwen2_5_vl_7b": {**_QWEN_VL, "image_variant": {"inat21_animal": 1, "inat21_plant": 1}, "condition_tokens": {"binary": 10}},
    "qwen2_5_vl_32b": {**_QWEN_VL, "image_variant": {"inat21_animal": 1}},
    "qwen2_5_vl_72b": {**_QWEN_VL, "image_variant": {"inat21_animal": 1}},
    "internvl2_5_8b": {**_INTERNVL, "image_variant": {"inat21_animal": 1, "imagenet_animal": 2}, "condition_tokens": {"taxonomy": 5}},
    "internvl3_8b": {**_INTERNVL, "image_variant": {"inat21_animal": 1}},
    "llava_ov_7b": {"kind": "vlm", "image_variant": {}, "image_tokens": 10, "text_tokens": 5, "dtype": "float16",
                    "text_label_case": "lower", "cot_apostrophe": "ascii"},  # fmt: skip
    "openclip_vit_l_14": {"kind": "clip"},
    "siglip_so400m": {"kind": "clip"},
    "qwen2_5_7b_instruct": {"kind": "llm", "text_tokens": 5},
}

# The paper's prompt-engineering runs: (model, dataset, condition) -> prompt variant. Taxonomy in
# context: scripts/tax_pmt.sh (Qwen, InternVL2.5, LLaVA on CUB, variant 0). CoT: the
# prompt_engineering/cot/{qwen,internvl,llava} scripts on CUB, ImageNet-animal and iNat plants, with
# scripts/vlm_cot.sh's variants. Bio CoT: scripts/bio_cot_pmt.sh (Qwen, iNat, variant 1). Binary:
# eval_CUB_binary.py (Qwen 7B, CUB; its statements have no variant).
CONDITION_RUNS: dict[tuple[str, str, str], int] = {
    **{(m, "cub200_similar", "taxonomy"): 0 for m in ("qwen2_5_vl_7b", "internvl2_5_8b", "llava_ov_7b")},
    ("qwen2_5_vl_7b", "cub200_similar", "cot"): 0, ("qwen2_5_vl_7b", "imagenet_animal", "cot"): 0,
    ("qwen2_5_vl_7b", "inat21_plant", "cot"): 1,
    ("internvl2_5_8b", "cub200_similar", "cot"): 0, ("internvl2_5_8b", "imagenet_animal", "cot"): 2,
    ("internvl2_5_8b", "inat21_plant", "cot"): 0,
    ("llava_ov_7b", "cub200_similar", "cot"): 0, ("llava_ov_7b", "imagenet_animal", "cot"): 0,
    ("llava_ov_7b", "inat21_plant", "cot"): 0,
    ("qwen2_5_vl_7b", "inat21_animal", "bio_cot"): 1, ("qwen2_5_vl_7b", "inat21_plant", "bio_cot"): 1,
    ("qwen2_5_vl_7b", "cub200_similar", "binary"): 0,
}  # fmt: skip

# The paper's --base runs of Qwen2.5-7B-Instruct: the text questions without the chat template
# (evaluation/og_llm/qwen/eval_text_og_natural.py:168-169; scripts/all_og_llm_on_text.sh '# Qwen2.5' block).
RAW_TEXT_MODELS = ("qwen2_5_7b_instruct",)


# ---- the runs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PaperRun:
    """One run the paper reports: a model on a dataset's image or text questions, under a condition."""

    model: str
    dataset: str
    mode: Mode = "image"
    condition: str = "plain"  # a prompt-engineering condition (image runs of `CONDITION_RUNS`)
    chat: bool = True  # False: a raw-prompt (--base) text run, no chat template

    @property
    def preset(self) -> str:
        """The preset's path under configs/: paper/<model>/<dataset>[_text | _<condition> | _raw_text].yaml."""
        if not self.chat:
            suffix = "_raw_text"
        elif self.condition != "plain":
            suffix = f"_{self.condition}"
        else:
            suffix = "_text" if self.mode == "text" else ""
        return f"paper/{self.model}/{self.dataset}{suffix}.yaml"


def _kind(model: str) -> Kind:
    return MODELS[model]["kind"]


def paper_runs() -> tuple[PaperRun, ...]:
    """Every run the paper reports: image, text, prompt-engineering and raw-prompt runs, in that order."""
    image = [PaperRun(m, d) for m in MODELS if _kind(m) != "llm" for d in DATASETS]
    text = [PaperRun(m, d, "text") for m in MODELS if _kind(m) != "clip" for d in DATASETS if "text_variant" in DATASETS[d]]
    conditions = [PaperRun(m, d, "image", c) for (m, d, c) in CONDITION_RUNS]
    raw = [PaperRun(m, d, "text", chat=False) for m in RAW_TEXT_MODELS for d in DATASETS if "text_variant" in DATASETS[d]]
    return (*image, *text, *conditions, *raw)


def max_new_tokens(run: PaperRun) -> int:
    """The reply length of the run's script (a CLIP run generates nothing: KeyError)."""
    row = MODELS[run.model]
    if run.mode == "text":
        return row["text_tokens"]
    if run.condition in row.get("condition_tokens", {}):
        return row["condition_tokens"][run.condition]
    return row.get("image_tokens_by_dataset", {}).get(run.dataset, row["image_tokens"])


def prompt_variant(run: PaperRun) -> int:
    """The run's prompt variant (CLIP: 0, its templates have no variant)."""
    if _kind(run.model) == "clip":
        return 0
    if run.condition != "plain":
        return CONDITION_RUNS[(run.model, run.dataset, run.condition)]
    if run.mode == "text":
        return DATASETS[run.dataset]["text_variant"]
    return MODELS[run.model].get("image_variant", {}).get(run.dataset, 0)


def data_settings(run: PaperRun) -> dict[str, Any]:
    """The data init_args the paper's protocol sets (in the order a preset writes them)."""
    row = MODELS[run.model]
    out: dict[str, Any] = {
        "mode": run.mode,
        "prompt_variant": prompt_variant(run),
        "shuffle_options": run.mode == "image" and row["kind"] != "clip",  # text and CLIP scripts keep the file's order
    }
    if run.mode == "text" and "text_label_case" in row:
        out["label_case"] = row["text_label_case"]
    if run.condition != "plain":
        out["condition"] = run.condition
        if condition_of(run.condition).uses_apostrophe:  # cot: the scripts' "Let’s" spelling
            out["cot_apostrophe"] = row["cot_apostrophe"]
    return out


def model_settings(run: PaperRun) -> dict[str, Any]:
    """The model init_args the paper's protocol sets (none for CLIP: its configs are the paper's)."""
    row = MODELS[run.model]
    if row["kind"] == "clip":
        return {}
    out: dict[str, Any] = {"answer": "generate", "max_new_tokens": max_new_tokens(run), "answer_parser": "paper"}
    for key in ("dtype", "system_prompt"):
        if key in row:
            out[key] = row[key]
    if not run.chat:
        out["chat"] = False
    return out


def paper_protocol(
    run: PaperRun, level_names: tuple[str, ...] | list[str], subject: str, family: str, context: str | None = None
) -> QuestionProtocol:
    """The run's question protocol; level names, subject, prompt family and taxonomy text are the dataset's."""
    data = data_settings(run)
    extra = {k: data[k] for k in ("label_case", "condition", "cot_apostrophe") if k in data}
    return QuestionProtocol(
        mode=run.mode, level_names=tuple(level_names), subject=subject, variant=data["prompt_variant"], family=family,
        shuffle=data["shuffle_options"], context=context, **extra,
    )  # fmt: skip


# ---- what a preset does differently --------------------------------------------------------------------


def differences(run: PaperRun) -> list[str]:
    """What this run's preset does not do as the paper did, and why (docs/evaluation.md: "Paper presets")."""
    if run.condition != "plain":
        return _condition_differences(run.model, run.dataset, run.condition)
    out = _mode_differences(run.model, run.dataset, run.mode)
    if not run.chat:
        out.append("raw prompts are answered one by one (no shared-prefix cache: they share no special token); the numbers are the same")
    return out


def _mode_differences(model: str, dataset: str, mode: str) -> list[str]:
    out = []
    if _kind(model) == "clip":
        out.append("CLIP runs in float32 without the paper's autocast (numerics only)")
        if model == "siglip_so400m":
            out.append("weights: open_clip's timm/ViT-SO400M-14-SigLIP-384, the same webli model as google/siglip-so400m-patch14-384")
        return out
    if mode == "image":
        out.append(
            "option order: a seeded shuffle per (sample, level), not the paper's one random.seed(42) stream, "
            "so the letters differ from the paper's runs (the set of options is the same)"
        )
    if model.startswith("qwen2_5_vl"):
        out.append("attention: sdpa instead of flash_attention_2 (numerics only; set attn_implementation if installed)")
    if model.startswith("internvl"):
        out.append(
            "InternVL: loaded through the transformers-native port and its chat template, with InternVL's default system "
            "message (system_prompt: model_default, quoted from its conversation template 'internvl2_5', OpenGVLab/InternVL "
            "internvl_chat/internvl/conversation.py:393-402, as the paper's model.chat sends it); the prompt then equals "
            "model.chat's but for the image placeholder (<IMG_CONTEXT> vs <image>, both expanded to the image tokens)"
        )
    if model == "internvl2_5_8b":
        out.append("InternVL2.5-8B has no transformers-native port: set pretrained to a converted checkpoint (see configs/models/internvl2_5_8b.yaml)")
    if model == "internvl3_8b" and mode == "image" and dataset in ("imagenet_animal", "cub200_similar", "food"):
        out.append("the paper's shell script ran this InternVL3 line on the iNat files (a slip); this preset asks the dataset's own questions")
    if model.startswith("internvl") and mode == "text" and dataset == "imagenet_animal":
        out.append("the paper's InternVL text-animal script skipped its first 10480 entries; every entry is asked here")
    if model.startswith("internvl") and mode == "text" and dataset == "imagenet_artifact":
        out.append("the paper's InternVL text-artifact script calls model.chat without pixel_values (it fails); the preset follows the working scripts")
    if model == "llava_ov_7b":
        out.append("weights: the llava-hf conversion of lmms-lab/llava-onevision-qwen2-7b-ov; image_aspect_ratio pad through the port's one-tile path")
        if mode == "image":
            out.append(
                "LLaVA image: the paper's conv template 'qwen_animal' (evaluation/vllm/llava/eval_CUB.py:115) is in no public "
                "LLaVA-NeXT release, so its system prompt cannot be reproduced; hiertrain sends its image system prompt "
                "(system_prompt: paper, the Qwen scripts') through the HF chat template. The user turn is the paper's: "
                "'<image>' then exactly one newline before the question (eval_CUB.py:112-114)"
            )
    if model == "qwen2_5_vl_7b" and dataset == "food":
        out.append("the paper's shell script calls a missing eval_Food101.py; this preset uses eval_food.py's settings (variant 0, 10 tokens)")
    if mode == "text":
        out.append(
            "text leaf: the paper does not ask it but scores it as correct (it stores the label); hiertrain "
            "leaves it unasked, and `hiertrain score --protocol paper` counts it the paper's way"
        )
    return out


def _condition_differences(model: str, dataset: str, condition: str) -> list[str]:
    out = _mode_differences(model, dataset, "image")
    if condition == "taxonomy" and model != "qwen2_5_vl_7b":
        where = "'Here is a taxonomy: ' + taxonomy + '<image>\\n' + question" if model.startswith("internvl") else (
            "'Here is a taxonomy: ' + taxonomy + '\\n<image>\\n' + question")
        out.append(
            f"taxonomy in context: the paper's {model} script puts the taxonomy in the user turn ({where}); hiertrain "
            "puts it in the system prompt as the Qwen script does, with the Qwen script's answer line (no newline before it)"
        )
        if model.startswith("internvl"):
            out.append("the paper's InternVL taxonomy script calls model.chat without pixel_values (it fails as committed)")
    if condition == "cot":
        out.append("CoT: the paper's reply budget is kept (no room to reason); raise --model.max_new_tokens for real reasoning")
        if model == "qwen2_5_vl_7b" and dataset != "inat21_plant":
            out.append("the paper's Qwen CUB/animal CoT scripts do not parse as committed (an unterminated string); the strings are the same as its working plant script's")
    if condition == "binary":
        out.append(
            "binary: the paper's metric keys each option's verdict by its lower-cased name in one dict per image, so an "
            "option name shared by two levels would collide; hiertrain keeps each level's statements apart"
        )
    return out
