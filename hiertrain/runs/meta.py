"""The run contract: what a run is (`RunMeta`), how it is named, and its `run.json`.

Every run kind (evaluation, probing, LoRA) builds its `run.json` here, so the fields `hiertrain
report` groups by (model name, dataset name) are derived once, and the W&B run name equals
the run directory name. `run.json` keys (docs/ARCHITECTURE.md, "Run directories"):
kind, model, model_name, dataset, questions, questions_sha256, mode, prompt_variant, answer,
seed, num_samples, skipped, created, plus the kind's own fields (probe: sites, pooling, side,
store; lora: base, adapter, hparams; eval and lora: the question protocol's fields (`for_questions`:
prompt_family, shuffle_options, subject, level_names, condition, inference, circular, label_case,
cot_apostrophe under cot); eval: limit, split, weights, settings, run_name, taxonomy).

A run's identity is every run.json key except `NOT_IDENTITY` (what only names, locates or counts
a run), so it is everything that decides its numbers by construction: the question
file's bytes, the split, the mode, the prompt family, variant and subject, the seed, the
option order, the answer mode and parser, generation length, the processor settings (image
side cap, processor kwargs, aspect-ratio mode), the backend, the evaluator's settings (dtype,
attention kernel, CLIP template), the question condition, the system prompt policy and chat
mode, the label case of text questions, the CoT apostrophe, the inference mode and circular
evaluation, and a fingerprint of the weights. A resumed run must match it field by field.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hiertrain.base.atomic import write_atomic
from hiertrain.base.errors import HierError
from hiertrain.runs.schema import RUN_JSON, checked_run_json, load_json

# Where an evaluation says which W&B run holds its logged sample table (read by `hiertrain report`).
WANDB_JSON = "wandb.json"

# A run's identity is every run.json key except these: what only names, locates or counts a
# run. So a new protocol setting written to run.json is identity by construction; forgetting to
# list a key here makes resume stricter (refused, naming it), never silently looser.
# `limit` is left out on purpose: it only selects which samples are served, and the metrics
# are computed over exactly the served ids, so a changed limit can never reuse a wrong answer.
NOT_IDENTITY = frozenset({
    "kind", "model_name", "dataset", "questions", "taxonomy", "limit", "run_name", "created", "num_samples",
    "skipped", "image_dir", "image_root_map", "served_model", "usage", "base_url_host", "schema_version",
})  # fmt: skip
# (`schema_version` only says how run.json is laid out, hiertrain.runs.schema: a run written before it resumes.)
# What a run.json written before an identity key existed meant by it (the question condition,
# hiertrain.protocol.conditions: runs before it were asked the plain way).
IDENTITY_DEFAULTS: dict[str, Any] = {
    "condition": "plain", "system_prompt": "paper", "chat": True, "label_case": "file", "cot_apostrophe": None,
    "system_text": None, "inference": "independent", "circular": False,
}  # fmt: skip

# The flag that starts a run afresh in its directory (named in every refusal).
FRESH_FLAG = "--fresh true"

# Files at most this size are hashed whole by `weights_fingerprint`; larger ones by their size,
# first and last `_EDGE` bytes (the safetensors header, the first and the last tensor).
_WHOLE = 64 << 20
_EDGE = 1 << 20


def now() -> str:
    """The `created` timestamp (UTC, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def model_name(pretrained: str | os.PathLike) -> str:
    """Short display name: the last path component of a hub id or directory."""
    return Path(str(pretrained).rstrip("/")).name or str(pretrained)


def dataset_name(name: str | None = None, questions: str | os.PathLike | None = None, source: str | os.PathLike | None = None) -> str:
    """The dataset name report groups by: an explicit `name`; else the question file's stem;
    else (probes, which read a feature store) the folder of the taxonomy/store, lower-cased."""
    if name:
        return str(name)
    if questions:
        return Path(str(questions)).stem
    if source:
        return Path(str(source)).parent.name.lower() or "features"
    return "features"


def default_run_name(
    model_name: str, dataset: str, mode: str, answer: str, prompt_variant: Any, condition: str | None = None,
    inference: str | None = None, circular: bool = False,
) -> str:
    """`<model>-<dataset>-<mode>-<answer>-v<variant>[-<condition>][-<inference>][-circular]`: reruns
    of one setting land in one dir (the question condition is named unless it is "plain", the
    inference mode unless it is "independent", so plain runs keep their names)."""
    name = f"{model_name}-{dataset}-{mode}-{answer}-v{prompt_variant}"
    if (condition or "plain") != "plain":
        name = f"{name}-{condition}"
    if (inference or "independent") != "independent":
        name = f"{name}-{inference}"
    return f"{name}-circular" if circular else name


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a data file's content: a gzipped or packaged (`hiertrain://`) file hashes as
    its decompressed bytes, so the same questions give the same hash however they are stored
    (`hiertrain.base.resources.data_sha256`, remembered per file in this process)."""
    from hiertrain.base.resources import data_sha256

    return data_sha256(path)


def weights_fingerprint(pretrained: str | os.PathLike) -> str | None:
    """A cheap hash that changes when the weights at a local path change; None for a hub id.

    Covers every file of the model folder (not hidden ones): its name, size, and its bytes
    (whole for files up to 64 MiB, else the first and last MiB: the safetensors header, first
    and last tensors), so rebuilt weights at the same path give another fingerprint.
    """
    root = Path(str(pretrained))
    if not root.exists():
        return None  # a hub id: the id is the identity (the hub keeps revisions)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root) if path != root else path.name}\0{size}\0".encode())
        with open(path, "rb") as f:
            if size <= _WHOLE:
                digest.update(f.read())
            else:
                digest.update(f.read(_EDGE))
                f.seek(size - _EDGE)
                digest.update(f.read(_EDGE))
    return digest.hexdigest()[:16]


@dataclass
class RunMeta:
    """What a run is. `fields` holds the kind's own keys (written after the common ones)."""

    kind: str  # "eval" | "probe" | "lora"
    model: str
    dataset: str
    mode: str
    answer: str
    seed: int
    prompt_variant: int | None = None
    questions: str | None = None
    questions_sha256: str | None = None
    num_samples: int | None = None
    skipped: int = 0
    created: str = field(default_factory=now)
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return model_name(self.model)

    @property
    def run_name(self) -> str:
        """The given run name (`fields["run_name"]`) or the default one."""
        return self.fields.get("run_name") or default_run_name(
            self.model_name, self.dataset, self.mode, self.answer, self.prompt_variant, self.fields.get("condition"),
            self.fields.get("inference"), bool(self.fields.get("circular", False)),
        )

    def to_json(self) -> dict[str, Any]:
        """The run.json object (existing keys keep their names; kinds add theirs)."""
        common = {
            "kind": self.kind,
            "model": self.model,
            "model_name": self.model_name,
            "dataset": self.dataset,
            "questions": self.questions,
            "questions_sha256": self.questions_sha256,
            "mode": self.mode,
            "prompt_variant": self.prompt_variant,
            "answer": self.answer,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "skipped": self.skipped,
            "created": self.created,
        }
        return {**common, **self.fields}

    @classmethod
    def for_questions(
        cls, kind: str, model: str | os.PathLike, data: Any, answer: str, *, hashed: bool = False,
        fields: dict[str, Any] | None = None, **common: Any,
    ) -> RunMeta:
        """The `RunMeta` of a run over question data (an evaluation, a tuner's W&B identity, a
        LoRA run): its question protocol's fields (`QuestionProtocol.to_json`, the one writer of
        them: mode, seed, variant, wording, options, condition, inference ...) and the data's
        name and file, so no kind can record one setting and forget another. `hashed` adds the
        question file's SHA-256; `fields` (the kind's own keys) follow the protocol's; `common`
        sets other RunMeta fields."""
        questions = getattr(data, "questions", None)
        protocol = data.protocol.to_json()
        return cls(
            kind=kind,
            model=str(model),
            dataset=dataset_name(getattr(data, "name", None), questions),
            mode=protocol.pop("mode"),
            answer=answer,
            seed=protocol.pop("seed"),
            prompt_variant=protocol.pop("prompt_variant"),
            questions=None if questions is None else str(questions),
            questions_sha256=file_sha256(questions) if hashed else None,
            fields={**protocol, **(fields or {})},
            **common,
        )

    def wandb_identity(self, taxonomy: str | None = None) -> dict[str, Any]:
        """W&B name/group/tags: name = run directory name, group = dataset (runs of one
        question set side by side), tags = model, dataset, mode, answer (+ taxonomy)."""
        tags = [self.model_name, self.dataset, self.mode, str(self.answer)]
        if taxonomy:
            tags.append(Path(str(taxonomy)).stem)
        return {"name": self.run_name, "group": self.dataset, "tags": tags}


def to_json_text(obj: Any, indent: int = 2) -> str:
    """The JSON text every run file uses (UTF-8 kept, trailing newline)."""
    return json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"


def write_run_json(run_dir: str | os.PathLike, meta: RunMeta | dict[str, Any]) -> Path:
    """Write `<run_dir>/run.json` atomically (the only writer of run.json), versioned and checked
    against `hiertrain.runs.schema.RunJson` (a field of the wrong type fails here, named)."""
    path = Path(run_dir) / RUN_JSON
    obj = meta.to_json() if isinstance(meta, RunMeta) else dict(meta)
    return write_atomic(path, to_json_text(checked_run_json(obj, path)))


def read_run_json(run_dir: str | os.PathLike) -> dict[str, Any]:
    """`<run_dir>/run.json` (or that file itself); HierError naming the file when it is not JSON."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / RUN_JSON
    obj = load_json(path)
    if not isinstance(obj, dict):
        raise HierError(f"{path}: not a run.json object")
    return obj


def _key_order(old: dict[str, Any], new: dict[str, Any]):
    """Keys in run.json order (this run's first), so a refusal names fields as run.json lists them."""
    order = {key: i for i, key in enumerate([*new, *(k for k in old if k not in new)])}
    return order.__getitem__


def identity_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The identity fields that differ, as `name (old, this run new)`; nested settings by key.

    Identity = every key of either run.json except `NOT_IDENTITY`; a key one of them lacks is
    read as its `IDENTITY_DEFAULTS` value (None if it has none)."""
    out = []
    for key in sorted((set(old) | set(new)) - NOT_IDENTITY, key=_key_order(old, new)):
        a, b = old.get(key, IDENTITY_DEFAULTS.get(key)), new.get(key, IDENTITY_DEFAULTS.get(key))
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    out.append(f"{sub} ({a.get(sub)!r}, this run {b.get(sub)!r})")
        else:
            out.append(f"{key} ({a!r}, this run {b!r})")
    return out
