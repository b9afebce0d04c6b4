"""Write configs/paper/<model>/<dataset>[_text].yaml: one preset per model x dataset x mode the paper reports,
and configs/paper/<model>/<dataset>_<condition>.yaml for its prompt-engineering runs (hiertrain.protocol.conditions).

A preset is configs/models/<model>.yaml + configs/data/<dataset>.yaml + the paper's protocol for
that pair (prompt variant from its scripts/*.sh, reply length, answer rule, option order), written
out in full because LightningCLI configs cannot include other files. The protocol itself (which
runs, which settings, what differs from the paper, with the paper's sources) is the table in
hiertrain/paper/presets.py; this file only composes YAML. Run from the repository root after
editing a model or data config or that table (tests/cli/test_configs.py fails until the presets match):

    python configs/paper/compose.py
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's table, also where another is installed
from hiertrain.paper.presets import PaperRun, data_settings, differences, model_settings, paper_runs  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1]


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def compose(run: PaperRun) -> dict[str, Any]:
    """The preset's config: the model and data configs, then the paper's protocol for the run on top."""
    doc = copy.deepcopy(_load(CONFIGS / "models" / f"{run.model}.yaml"))
    data = _load(CONFIGS / "data" / f"{run.dataset}.yaml")
    for key, value in data.items():
        doc[key] = copy.deepcopy(value)
    doc["data"]["init_args"].update(data_settings(run))
    doc["model"]["init_args"].update(model_settings(run))
    return doc


def _header(run: PaperRun, config: dict[str, Any]) -> list[str]:
    """The preset's comment lines: what it is, how to run it, where its questions are, what differs."""
    model, dataset, name = run.model, run.dataset, run.preset
    if not run.chat:
        lines = [
            f"The paper's raw-prompt (--base) text protocol for {model} on {dataset} (written by configs/paper/compose.py: do not edit).",
            f"= configs/paper/{model}/{dataset}_text.yaml + model.chat false: the prompt is question + ' Answer:' "
            "without the chat template (evaluation/og_llm/qwen/eval_text_og_natural.py:168-169; scripts/all_og_llm_on_text.sh '# Qwen2.5' block).",
            f"Run: hiertrain test --config configs/{name}",
        ]
    elif run.condition != "plain":
        lines = [
            f"The paper's {run.condition} condition for {model} on {dataset}, image questions (written by configs/paper/compose.py: do not edit).",
            f"= configs/paper/{model}/{dataset}.yaml + data.condition {run.condition} (hiertrain.protocol.conditions).",
            f"Run: hiertrain test --config configs/{name}",
        ]
    else:
        lines = [
            f"The paper's {run.mode} protocol for {model} on {dataset} (written by configs/paper/compose.py: do not edit).",
            f"= configs/models/{model}.yaml + configs/data/{dataset}.yaml + the paper's protocol settings.",
            f"Run: hiertrain test --config configs/{name}; score like the paper: hiertrain score <run>/predictions.jsonl "
            f"--protocol paper{' --cub' if dataset.startswith('cub') else ''}",
        ]
    diffs = differences(run)
    return [
        *lines,
        _data_line(config["data"]["init_args"]["questions"]),
        "Differs from the paper:" if diffs else "Differs from the paper: nothing known.",
        *[f"- {line}" for line in diffs],
    ]


def presets() -> dict[str, tuple[dict[str, Any], list[str]]]:
    """relative path -> (config, header comment lines), for every preset."""
    out = {}
    for run in paper_runs():
        config = compose(run)
        out[run.preset] = (config, _header(run, config))
    out.update(probing_presets())
    out.update(lora_presets())
    return out


# ---- probing and LoRA presets: a shipped configs/probing|lora file + the paper's settings -------------
# Probing: probing/vlm_probing.py, llm_probing.py, vlm_probe_data_gen.py, vlm_probe_data_gen_llm.py,
# text_probing_data_gen.py; LoRA: finetuning/scripts/finetune_lora_{vqa,text}.sh, src/training/*.
PROBE_PAPER_MODEL = {"lr": 1.0e-4, "weight_decay": 0.0, "optimizer": "adam", "init": "torch_default", "normalize": False}
PROBE_PAPER_DATA = {"selection": "test", "shuffle": False, "batch_size": 512}
PROBE_PAPER_EPOCHS = 500
# per site family: (max_image_side, max_pixels) of the paper's extraction scripts
PROBE_RESIZE = {"vision": (1680, 1280 * 28 * 28), "llm": (1024, 640 * 28 * 28)}
QWEN7B_LAST_LAYER = 28  # vlm_probe_data_gen_llm.py:198 keeps hidden_states[0][-1] only (after the final norm)
PROBE_RUNS = ("cub_qwen7b", "inat_plant_qwen7b")


def _probe_header(what: str, source: str, run: str, lines: list[str]) -> list[str]:
    return [
        f"The paper's {what} (written by configs/paper/compose.py from configs/probing/{source}: do not edit).",
        f"Run: hiertrain {run}",
        *lines,
    ]


def _paper_probes(doc: dict[str, Any], sites: list[str] | None, inat: bool) -> dict[str, Any]:
    """A shipped probes config under the paper's training protocol."""
    model, data = doc["model"]["init_args"], doc["data"]["init_args"]
    model.update(PROBE_PAPER_MODEL)
    data.update(PROBE_PAPER_DATA)
    data.pop("val_fraction", None)
    if sites is not None:
        data["sites"] = sites
    if inat:
        data["paper_inat_level_bug"] = True
    doc["trainer"]["max_epochs"] = PROBE_PAPER_EPOCHS
    doc["trainer"]["callbacks"] = [c for c in doc["trainer"]["callbacks"] if not c["class_path"].endswith("EarlyStopping")]
    return doc


def _rename_dirs(doc: Any, old: str, new: str) -> Any:
    """Every run path of a shipped config moved to the preset's own directory."""
    if isinstance(doc, dict):
        return {k: _rename_dirs(v, old, new) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_rename_dirs(v, old, new) for v in doc]
    return doc.replace(old, new) if isinstance(doc, str) else doc


PROBE_COMMON = [
    "Paper's training protocol (vlm_probing.py / llm_probing.py at c86f23a): Adam lr 1e-4, no weight decay "
    "(vlm_probing.py:111, llm_probing.py:152), nn.Linear's default init (vlm_probing.py:16, 107), raw .float() "
    "features (vlm_probing.py:245: normalize false), batches of 512 in file order, never shuffled "
    "(vlm_probing.py:114, 121-126), 500 epochs (vlm_probing.py:212), no early stopping.",
    "SELECTION: test = THE PAPER'S OPTIMISTIC PROTOCOL: each probe's best epoch is chosen on the test split "
    "(vlm_probing.py:163-173, llm_probing.py:206-216), so test figures are not held out (run.json, probes.json "
    "and hiertrain report say so). hiertrain's sound default: --data.selection val (10% of train carved out).",
]
INAT_BUG = [
    "paper_inat_level_bug: true reproduces the paper's iNat numbers: its level indices (vlm_probing.py:254-263, "
    "llm_probing.py:68-77) make the 'order', 'family' and 'genus' probes train on phylum, class and order labels "
    "(kingdom/phylum/class/species are right); --data.paper_inat_level_bug false probes the real levels.",
]


def probing_presets() -> dict[str, tuple[dict[str, Any], list[str]]]:
    out: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for run in PROBE_RUNS:
        inat = run.startswith("inat")
        base_dir = f"runs/probing/{run}"
        for family, (side, pixels) in PROBE_RESIZE.items():
            # extraction: one store per site family, each with its script's resizing
            name = f"paper/probing/{run}_extract_image_{family}.yaml"
            doc = _load(CONFIGS / "probing" / f"{run}_extract_image.yaml")
            doc = _rename_dirs(doc, f"{base_dir}/features_image", f"runs/paper/probing/{run}/features_image_{family}")
            doc["data"]["init_args"].update({"max_image_side": side, "max_pixels": pixels})
            doc["model"]["init_args"]["llm_layers"] = [] if family == "vision" else [QWEN7B_LAST_LAYER]
            doc["model"]["init_args"]["pools"] = ["avg", "last"]
            script = "vlm_probe_data_gen.py:122-137" if family == "vision" else "vlm_probe_data_gen_llm.py:156-171"
            out[name] = (doc, _probe_header(
                f"image-feature extraction for the {'vision/projector' if family == 'vision' else 'LLM'} probes of {run}",
                f"{run}_extract_image.yaml", f"predict --config configs/{name}",
                [f"Resizing ({script}): an image whose longest side exceeds {side} px is scaled to {side}, then "
                 f"smart_resize to <= {pixels // 784}*28*28 px (LANCZOS); smaller images go to the processor as they are.",
                 "System 'You are an assistant.', user 'Describe this image.' (vlm_probe_data_gen.py:97-111)." +
                 (" LLM site: the last hidden state only (vlm_probe_data_gen_llm.py:198, hidden_states[0][-1]) at the image tokens."
                  if family == "llm" else " Sites: vision (the projector's input) and projector (its output)."),
                 "Differs from the paper: the paper's extraction returns zero features for a sample whose forward fails "
                 "(vlm_probe_data_gen_llm.py:206-210); hiertrain skips and counts it."]))  # fmt: skip
            name = f"paper/probing/{run}_probes_image_{family}.yaml"
            doc = _load(CONFIGS / "probing" / f"{run}_probes_image.yaml")
            doc = _rename_dirs(doc, f"{base_dir}/features_image", f"runs/paper/probing/{run}/features_image_{family}")
            doc = _rename_dirs(doc, f"{base_dir}/probes_image", f"runs/paper/probing/{run}/probes_image_{family}")
            doc = _paper_probes(doc, ["vision", "projector"] if family == "vision" else [f"llm.{QWEN7B_LAST_LAYER}"], inat)
            out[name] = (doc, _probe_header(
                f"image probes ({'vision/projector' if family == 'vision' else 'LLM'} sites) on {run}",
                f"{run}_probes_image.yaml", f"fit --config configs/{name}",
                [*PROBE_COMMON, *(INAT_BUG if inat else [])]))  # fmt: skip
        name = f"paper/probing/{run}_extract_text.yaml"
        doc = _load(CONFIGS / "probing" / f"{run}_extract_text.yaml")
        doc = _rename_dirs(doc, f"{base_dir}/features_text", f"runs/paper/probing/{run}/features_text")
        doc["data"]["init_args"].update({"label_in_text": True, "probe_leaf": True})
        out[name] = (doc, _probe_header(
            f"text-feature extraction (LLM probing) of {run}", f"{run}_extract_text.yaml", f"predict --config configs/{name}",
            ["Prompt (text_probing_data_gen.py:86): 'Given the {leaf}, what is its taxonomic classification at the {level} "
             "level? It belongs to {label}.' (label_in_text: true, the answer is in the text); system 'You are a helpful "
             "assistant.' (:30); every LLM layer, averaged over all prompt tokens (:56).",
             "probe_leaf: true adds the species prompt, which the paper's llm_probing.py:76 probes but its generator never "
             "writes (:83 skips the species): that slot is hiertrain's, worded like the others.",
             "Differs from the paper: its generator names the levels kingdom..genus for every dataset (:75), so on CUB its "
             "files are misnamed and llm_probing.py finds no order.pt; hiertrain words each dataset's own levels."]))  # fmt: skip
        name = f"paper/probing/{run}_probes_text.yaml"
        doc = _load(CONFIGS / "probing" / f"{run}_probes_text.yaml")
        doc = _rename_dirs(doc, f"{base_dir}/features_text", f"runs/paper/probing/{run}/features_text")
        doc = _rename_dirs(doc, f"{base_dir}/probes_text", f"runs/paper/probing/{run}/probes_text")
        doc = _paper_probes(doc, None, inat)
        out[name] = (doc, _probe_header(
            f"text probes (LLM probing) on {run}", f"{run}_probes_text.yaml", f"fit --config configs/{name}",
            [*PROBE_COMMON, *(INAT_BUG if inat else []),
             "Leaf-disjoint train/test taxonomies (llm_probing.py:36-37): test species are unseen classes of the species probe."]))  # fmt: skip
    name = "paper/probing/synth_probes.yaml"
    doc = _rename_dirs(_load(CONFIGS / "probing" / "synth_probes.yaml"), "runs/demo/probing/probes_image", "runs/demo/probing/probes_image_paper")
    doc = _paper_probes(doc, None, False)
    doc["data"]["init_args"].pop("val_split", None)
    out[name] = (doc, _probe_header("probe protocol on the synthetic demo store", "synth_probes.yaml",
                                    f"fit --config configs/{name} (after the demo's extraction)", PROBE_COMMON))
    return out


LORA_RUNS = {"qwen2_5_vl_7b_paper_plant_img": "finetune_lora_vqa.sh", "qwen2_5_vl_7b_paper_plant_text": "finetune_lora_text.sh"}


def lora_presets() -> dict[str, tuple[dict[str, Any], list[str]]]:
    out = {}
    for run, script in LORA_RUNS.items():
        name = f"paper/lora/{run}.yaml"
        doc = _rename_dirs(_load(CONFIGS / "lora" / f"{run}.yaml"), f"runs/lora/{run}", f"runs/paper/lora/{run}")
        doc["seed_everything"] = 42  # HF TrainingArguments' default seed; params.py sets none
        doc["model"]["init_args"]["export"] = "last"
        doc["data"]["init_args"].update({"min_pixels": 256 * 28 * 28, "max_pixels": 1280 * 28 * 28})
        out[name] = (doc, [
            f"The paper's LoRA run {script} (written by configs/paper/compose.py from configs/lora/{run}.yaml: do not edit).",
            f"Run: hiertrain fit --config configs/{name} --data.image_root <iNat21 download>",
            f"Paper's settings on top of the shipped config: training images min/max_pixels 256*28*28 / 1280*28*28 "
            f"({script}:48-49; data.py:46-70 resizes with qwen_vl_utils: a 1800x1200 image is 1247 visual tokens, not 2752), "
            "the final adapter after the 1 epoch (model.export last: train.py:211-223 saves the last weights), seed 42 "
            "(HF Trainer's default).",
            "Differs from the paper: hiertrain validates on the question file's val split during the epoch (the paper has no "
            "validation); the best-validation checkpoint stays on disk (export best would use it); sdpa instead of "
            "flash-attention 2 and no liger kernels (numerics only); PEFT's LoRA on the LLM projections (the paper: "
            "lora_namespan_exclude lm_head/embed_tokens, vision tower and merger frozen, the same modules).",
        ])
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
