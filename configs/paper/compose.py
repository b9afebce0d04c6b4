"""Write configs/paper/<model>/<dataset>[_text].yaml: one preset per model x dataset x mode the paper reports,
and configs/paper/<model>/<dataset>_<condition>.yaml for its prompt-engineering runs (hiertrain.core.conditions).

A preset is configs/models/<model>.yaml + configs/data/<dataset>.yaml + the paper's protocol for
that pair (prompt variant from its scripts/*.sh, reply length, answer rule, option order), written
out in full because LightningCLI configs cannot include other files. Run from the repository root
after editing a model or data config (tests/cli/test_configs.py fails until the presets match):

    python configs/paper/compose.py

Sources (the paper's code, yuanqing-ai/LLM-Hierarchical-Consistency at c86f23af):
scripts/all_image_benchmarks.sh, scripts/all_text_benchmarks.sh, scripts/all_og_llm_on_text.sh
(variants), evaluation/vllm/*/ and evaluation/llm/*/ (max_new_tokens, shuffling, settings);
conditions: prompt_engineering/{taxonomy,cot,bio_cot}/, prompt_engineering/eval_CUB_binary.py and
scripts/{tax_pmt,vlm_cot,bio_cot_pmt}.sh.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

CONFIGS = Path(__file__).resolve().parents[1]

# The paper's datasets, as hiertrain data configs (CUB: the similar-distractor file its scripts use).
IMAGE_DATASETS = ("cub200_similar", "inat21_plant", "inat21_animal", "imagenet_animal", "imagenet_artifact", "food")
TEXT_DATASETS = ("cub200_similar", "inat21_plant", "inat21_animal", "imagenet_animal", "imagenet_artifact")  # no Food text script
VLLMS = ("qwen2_5_vl_7b", "qwen2_5_vl_32b", "qwen2_5_vl_72b", "internvl2_5_8b", "internvl3_8b", "llava_ov_7b")
CLIPS = ("openclip_vit_l_14", "siglip_so400m")
LLMS = ("qwen2_5_7b_instruct",)  # the paper's "original LLM" runs (evaluation/og_llm)

# --prompt_order per (model, dataset) in scripts/all_image_benchmarks.sh; unlisted = 0.
IMAGE_VARIANT = {
    "qwen2_5_vl_7b": {"inat21_animal": 1, "inat21_plant": 1},
    "qwen2_5_vl_32b": {"inat21_animal": 1},
    "qwen2_5_vl_72b": {"inat21_animal": 1},
    "internvl2_5_8b": {"inat21_animal": 1, "imagenet_animal": 2},
    "internvl3_8b": {"inat21_animal": 1},
    "llava_ov_7b": {},
}
# scripts/all_text_benchmarks.sh (the same for every VLM) and all_og_llm_on_text.sh (Qwen2.5-IT).
TEXT_VARIANT = {"cub200_similar": 1, "inat21_plant": 1, "inat21_animal": 1, "imagenet_animal": 2, "imagenet_artifact": 2}


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


def max_new_tokens(model: str, dataset: str, mode: str) -> int:
    """The scripts' generate lengths: Qwen image 10 (5 on iNat), LLaVA image 10, everything else 5."""
    if mode == "image" and model.startswith("qwen2_5_vl"):
        return 5 if dataset.startswith("inat") else 10
    if mode == "image" and model == "llava_ov_7b":
        return 10
    return 5


def differences(model: str, dataset: str, mode: str) -> list[str]:
    """What this preset does not do as the paper did, and why (docs/evaluation.md: "Paper presets")."""
    out = []
    if model in CLIPS:
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
        placement = ", '<image>\\n' prefixed to the question" if mode == "image" else ""
        out.append(
            "InternVL: loaded through the transformers-native port and its chat template, with hiertrain's "
            f"system prompt; the paper called the remote-code model.chat (InternVL's default system message{placement})"
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
                "LLaVA image: the paper's conv template 'qwen_animal' is not public; hiertrain sends its image "
                "system prompt through the HF chat template, without the paper's leading newline"
            )
        else:
            out.append("LLaVA text: the paper lower-cases the label in the question; this preset keeps the file's case (the Qwen scripts')")
    if model == "qwen2_5_vl_7b" and dataset == "food":
        out.append("the paper's shell script calls a missing eval_Food101.py; this preset uses eval_food.py's settings (variant 0, 10 tokens)")
    if mode == "text":
        out.append(
            "text leaf: the paper does not ask it but scores it as correct (it stores the label); hiertrain "
            "leaves it unasked, and `hiertrain score --protocol paper` counts it the paper's way"
        )
    return out


def condition_differences(model: str, dataset: str, condition: str) -> list[str]:
    """What a condition preset does not do as the paper's prompt-engineering script did."""
    out = differences(model, dataset, "image")
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


def compose_condition(model: str, dataset: str, condition: str) -> dict[str, Any]:
    """The image preset of (model, dataset) under a prompt-engineering condition."""
    doc = compose(model, dataset, "image")
    args = doc["data"]["init_args"]
    args["prompt_variant"] = CONDITION_RUNS[(model, dataset, condition)]
    args["condition"] = condition
    if condition == "cot":  # the Qwen scripts spell "Let’s" with U+2019, the InternVL/LLaVA ones with "'"
        args["cot_apostrophe"] = "typographic" if model.startswith("qwen") else "ascii"
    init = doc["model"]["init_args"]
    if model == "internvl2_5_8b" and condition == "taxonomy":
        init["max_new_tokens"] = 5
    if condition == "binary":
        init["max_new_tokens"] = 10  # eval_CUB_binary.py
    return doc


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def compose(model: str, dataset: str, mode: str) -> dict[str, Any]:
    """The preset's config: the model and data configs, then the paper's protocol on top."""
    doc = copy.deepcopy(_load(CONFIGS / "models" / f"{model}.yaml"))
    data = _load(CONFIGS / "data" / f"{dataset}.yaml")
    for key, value in data.items():
        doc[key] = copy.deepcopy(value)
    args = doc["data"]["init_args"]
    args["mode"] = mode
    args["prompt_variant"] = 0 if model in CLIPS else (
        TEXT_VARIANT[dataset] if mode == "text" else IMAGE_VARIANT[model].get(dataset, 0)
    )  # fmt: skip
    args["shuffle_options"] = mode == "image" and model not in CLIPS  # text and CLIP scripts keep the file's order
    if model not in CLIPS:
        init = doc["model"]["init_args"]
        init["answer"] = "generate"
        init["max_new_tokens"] = max_new_tokens(model, dataset, mode)
        init["answer_parser"] = "paper"
        if model == "llava_ov_7b":
            init["dtype"] = "float16"  # the paper's LLaVA runs were float16
    return doc


def presets() -> dict[str, tuple[dict[str, Any], list[str]]]:
    """relative path -> (config, header comment lines), for every preset."""
    out = {}
    runs = [(m, d, "image") for m in (*VLLMS, *CLIPS) for d in IMAGE_DATASETS]
    runs += [(m, d, "text") for m in (*VLLMS, *LLMS) for d in TEXT_DATASETS]
    for model, dataset, mode in runs:
        name = f"paper/{model}/{dataset}{'_text' if mode == 'text' else ''}.yaml"
        header = [
            f"The paper's {mode} protocol for {model} on {dataset} (written by configs/paper/compose.py: do not edit).",
            f"= configs/models/{model}.yaml + configs/data/{dataset}.yaml + the paper's protocol settings.",
            f"Run: hiertrain test --config configs/{name}; score like the paper: hiertrain score <run>/predictions.jsonl "
            f"--protocol paper{' --cub' if dataset.startswith('cub') else ''}",
            _data_line(compose(model, dataset, mode)["data"]["init_args"]["questions"]),
            "Differs from the paper:" if differences(model, dataset, mode) else "Differs from the paper: nothing known.",
            *[f"- {line}" for line in differences(model, dataset, mode)],
        ]
        out[name] = (compose(model, dataset, mode), header)
    for (model, dataset, condition) in CONDITION_RUNS:
        name = f"paper/{model}/{dataset}_{condition}.yaml"
        config = compose_condition(model, dataset, condition)
        header = [
            f"The paper's {condition} condition for {model} on {dataset}, image questions (written by configs/paper/compose.py: do not edit).",
            f"= configs/paper/{model}/{dataset}.yaml + data.condition {condition} (hiertrain.core.conditions).",
            f"Run: hiertrain test --config configs/{name}",
            _data_line(config["data"]["init_args"]["questions"]),
            "Differs from the paper:" if condition_differences(model, dataset, condition) else "Differs from the paper: nothing known.",
            *[f"- {line}" for line in condition_differences(model, dataset, condition)],
        ]
        out[name] = (config, header)
    return out


def _data_line(questions: str) -> str:
    if questions.startswith("hiertrain://"):
        return f"Questions: {questions} (packaged); images: --data.image_root DIR (the authors' paths are mapped there)."
    return (
        f"Questions: {questions} (the paper's file: hiertrain data fetch paper --out data/paper --what annotations); "
        "images: --data.image_root DIR."
    )


def render(config: dict[str, Any], header: list[str]) -> str:
    return "".join(f"# {line}\n" for line in header) + yaml.safe_dump(config, sort_keys=False, width=120)


def main() -> None:
    for name, (config, header) in presets().items():
        path = CONFIGS / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(config, header))
    print(f"wrote {len(presets())} presets under {CONFIGS / 'paper'}")


if __name__ == "__main__":
    main()
