"""What feature extraction reads: labelled images, or taxonomy statements about leaves.

Image side: an ``images.jsonl`` (``image``, ``label``, ``split``), one sample a line, with its
taxonomy path per level. Text side (the paper's LLM probing): the leaves of a train and a test
taxonomy file (leaf-disjoint), one prompt per non-leaf level, "Given the {leaf}, what is its
taxonomic classification at the {level} level?" — by default without the answer; the paper's
variant appends "It belongs to {label}." (``label_in_text: true``), which leaks the target.
Items carry a stable sample id so a resumed or distributed run writes every sample once.

Image resizing (``max_image_side`` + ``max_pixels``, default off: the processor's own) is the
paper's pre-step (probing/vlm_probe_data_gen.py:120-137 for the vision/projector sites: longest
side > 1680 px -> scaled to 1680, then `smart_resize` to <= 1280*28*28 px, LANCZOS;
vlm_probe_data_gen_llm.py:153-171 for the LLM sites: 1024 px and 640*28*28). Text mode:
``probe_leaf`` adds a prompt slot for the leaf level (the paper's llm_probing.py:76 probes
"species" from a species.pt its generator never writes; hiertrain's slot uses the same wording).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from hiertrain.datamodules.sampling import PaddedEvalSampler, unpad_index
from hiertrain.base.errors import HierError
from hiertrain.protocol.prompts import PROBE_ANSWER_SENTENCE as ANSWER_SENTENCE
from hiertrain.protocol.prompts import PROBE_IMAGE_PROMPT as IMAGE_PROMPT
from hiertrain.protocol.prompts import PROBE_TEXT_VARIANT as TEXT_VARIANT
from hiertrain.protocol.prompts import text_prompt
from hiertrain.taxonomy.question_bank import read_image_list
from hiertrain.taxonomy.taxonomy import Taxonomy
from hiertrain.runs.meta import file_sha256

def _padded_path(path: tuple[str, ...], depth: int) -> list[str | None]:
    return list(path) + [None] * (depth - len(path))


def paper_resize(image: Any, max_side: int | None, max_pixels: int | None, factor: int = 28, min_pixels: int = 56 * 56) -> Any:
    """The paper's probing pre-step: an image whose longest side exceeds `max_side` is scaled by
    `max_side / longest` (int truncation), then to transformers' Qwen2-VL `smart_resize` of that
    size (multiples of `factor`, at most `max_pixels`), LANCZOS; smaller images are unchanged."""
    if max_side is None or max(image.size) <= max_side:
        return image
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    width, height = image.size
    scale = max_side / max(width, height)
    width, height = int(width * scale), int(height * scale)
    if max_pixels is None:
        return image.resize((width, height), Image.LANCZOS)
    new_h, new_w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return image.resize((new_w, new_h), Image.LANCZOS)


class ImageProbeDataset(Dataset):
    """Labelled images; indices from `PaddedEvalSampler` past the end are padding copies."""

    def __init__(self, records: list[dict], root: Path, max_side: int | None = None, max_pixels: int | None = None) -> None:
        self.records = records
        self.root = root
        self.max_side, self.max_pixels = max_side, max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The item; an unreadable image (missing, truncated, decompression bomb) gives
        `image=None` and `error` naming the file: the collate leaves it out, counted."""
        from hiertrain.taxonomy.images import BAD_IMAGE_ERRORS, open_rgb

        real, valid = unpad_index(index, len(self.records))
        rec = self.records[real]
        path = self.root / rec["image"]
        try:
            image = paper_resize(open_rgb(path), self.max_side, self.max_pixels)
            return {"image": image, "record": rec, "valid": valid, "error": None, "path": str(path)}
        except BAD_IMAGE_ERRORS as err:
            message = f"{path}: cannot read image of sample {rec['id']} ({type(err).__name__}: {err})"
            return {"image": None, "record": rec, "valid": valid, "error": message}


class TextProbeDataset(Dataset):
    """One item per leaf: its per-level prompts (slot index, text)."""

    def __init__(self, records: list[dict], prompts: list[list[tuple[int, str]]]) -> None:
        self.records = records
        self.prompts = prompts

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        real, valid = unpad_index(index, len(self.records))
        return {"texts": self.prompts[real], "record": self.records[real], "valid": valid}


def collate_probe_inputs(items: list[dict]) -> dict[str, Any]:
    """Lists stay lists (PIL images, prompts, records): the model's processor batches them.
    Unreadable images are left out; `skipped` holds their reasons (real samples only)."""
    import torch

    skipped = [it["error"] for it in items if it.get("error") and it["valid"]]
    items = [it for it in items if not it.get("error")]
    if not items:
        return {"records": [], "valid": torch.zeros(0, dtype=torch.bool), "images": [], "skipped": skipped}
    out: dict[str, Any] = {
        "skipped": skipped,
        "records": [it["record"] for it in items],
        "valid": torch.tensor([bool(it["valid"]) for it in items]),
    }
    if "image" in items[0]:
        out["images"] = [it["image"] for it in items]
        out["paths"] = [it.get("path") for it in items]  # to name an image the model refuses
    else:
        out["texts"] = [it["texts"] for it in items]
    return out


class ProbeInputDataModule(LightningDataModule):
    """Feeds `FeatureExtractor` (`hiertrain predict`), in sample-id order, each sample once.

    ``describe()`` tells the feature writer the prompt slots and level names of the store;
    ``exclude_ids`` (set by the writer from an existing store) makes a rerun resume.
    """

    def __init__(
        self,
        mode: Literal["image", "text"] = "image",
        images: str | None = None,
        taxonomy: str | None = None,
        train_taxonomy: str | None = None,
        test_taxonomy: str | None = None,
        image_root: str | None = None,
        strip_prefix: str | None = None,
        level_names: list[str] | None = None,
        label_in_text: bool = False,
        text_variant: int = TEXT_VARIANT,
        limit: int | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        max_image_side: int | None = None,
        max_pixels: int | None = None,
        probe_leaf: bool = False,
    ) -> None:
        super().__init__()
        if mode not in ("image", "text"):
            raise HierError(f"probe inputs: mode must be 'image' or 'text', not {mode!r}")
        if num_workers < 0:
            raise HierError(f"data.num_workers must be 0 (load in this process) or more, got {num_workers}")
        if max_pixels is not None and max_image_side is None:
            raise HierError("probe inputs: max_pixels applies with max_image_side (the paper resizes only images larger than it)")
        if max_image_side is not None and max_image_side < 1:
            raise HierError(f"probe inputs: max_image_side must be a positive number of pixels, got {max_image_side}")
        self.max_image_side, self.max_pixels, self.probe_leaf = max_image_side, max_pixels, probe_leaf
        self.mode = mode
        self.images = images
        self.taxonomy_path = taxonomy
        self.train_taxonomy = train_taxonomy
        self.test_taxonomy = test_taxonomy
        self.image_root = image_root
        self.strip_prefix = strip_prefix
        self.level_names = level_names
        self.label_in_text = label_in_text
        self.text_variant = text_variant
        self.limit = limit
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.exclude_ids: set[int] = set()
        self.records: list[dict] = []
        self.taxonomy: Taxonomy | None = None
        self._prompts: list[list[tuple[int, str]]] = []

    # ---- reading ---------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self.records:
            return
        if self.mode == "image":
            self._setup_images()
        else:
            self._setup_text()
        if self.limit is not None:
            self.records = self.records[: self.limit]
            self._prompts = self._prompts[: self.limit]

    def _setup_images(self) -> None:
        if not self.images or not self.taxonomy_path:
            raise HierError("probe inputs (image mode): set both `images` (JSONL) and `taxonomy`")
        tax = Taxonomy.from_json(self.taxonomy_path, level_names=self.level_names)
        self.taxonomy = tax
        path = Path(self.images)
        root = Path(self.image_root) if self.image_root else path.parent
        for n, raw in enumerate(read_image_list(path), start=1):
            image = raw["image"]
            if self.strip_prefix and image.startswith(self.strip_prefix):
                image = image[len(self.strip_prefix) :].lstrip("/")  # e.g. the authors' absolute paths
            if raw["label"] not in tax:
                raise HierError(f"{path}:{n}: label '{raw['label']}' not in taxonomy {tax.source}")
            if not (root / image).is_file():
                raise HierError(f"{path}:{n}: image not found: {root / image}")
            leaf = tax.resolve(raw["label"])
            self.records.append(
                {
                    "id": n - 1,
                    "image": image,
                    "label": leaf,
                    "split": raw["split"],
                    "levels": _padded_path(tax.paths[leaf], tax.depth),
                }
            )
        self._image_root = root

    def _setup_text(self) -> None:
        if not self.train_taxonomy or not self.test_taxonomy:
            raise HierError("probe inputs (text mode): set `train_taxonomy` and `test_taxonomy` (leaf-disjoint)")
        parts = {
            "train": Taxonomy.from_json(self.train_taxonomy, level_names=self.level_names),
            "test": Taxonomy.from_json(self.test_taxonomy, level_names=self.level_names),
        }
        overlap = set(parts["train"].paths) & set(parts["test"].paths)
        if overlap:
            raise HierError(f"{self.test_taxonomy}: leaf '{sorted(overlap)[0]}' is also in {self.train_taxonomy}; text probing needs leaf-disjoint splits")
        union = {**parts["train"].paths, **parts["test"].paths}
        self.taxonomy = Taxonomy.from_paths(union, level_names=self.level_names, source=str(self.train_taxonomy))
        depth, names = self.taxonomy.depth, self.taxonomy.level_names
        for split, tax in parts.items():
            for leaf, path in tax.paths.items():
                # the leaf level is not probed by default: its name is in the text and test leaves are unseen
                asked = path if self.probe_leaf else path[:-1]
                levels = _padded_path(asked, depth)
                prompts = []
                for i, label in enumerate(asked):
                    prompt = text_prompt(self.text_variant, names[i], leaf)
                    if self.label_in_text:
                        prompt += ANSWER_SENTENCE.format(label=label)
                    prompts.append((i, prompt))
                self.records.append(
                    {"id": len(self.records), "label": leaf, "split": split, "levels": levels, "path": list(path)}
                )
                self._prompts.append(prompts)

    # ---- what the store records --------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Prompt slots, level names and which slot each level is probed from."""
        assert self.taxonomy is not None, "call setup() first"
        depth, names = self.taxonomy.depth, list(self.taxonomy.level_names)
        if self.mode == "image":
            return {
                "prompts": [IMAGE_PROMPT],
                "level_names": names,
                "prompt_for_level": [0] * depth,
                "info": {
                    "source": str(self.images),
                    "taxonomy": str(self.taxonomy_path),
                    "images_sha256": file_sha256(self.images),
                    "taxonomy_sha256": file_sha256(self.taxonomy_path),
                    "max_image_side": self.max_image_side,
                    "max_pixels": self.max_pixels,
                },
            }
        n_slots = depth if self.probe_leaf else depth - 1
        slots = [text_prompt(self.text_variant, names[i], "{leaf}") for i in range(n_slots)]
        if self.label_in_text:
            slots = [s + ANSWER_SENTENCE for s in slots]
        return {
            "prompts": slots,
            "level_names": names,
            "prompt_for_level": list(range(depth)) if self.probe_leaf else list(range(depth - 1)) + [-1],
            "info": {
                "train_taxonomy": str(self.train_taxonomy),
                "test_taxonomy": str(self.test_taxonomy),
                "train_taxonomy_sha256": file_sha256(self.train_taxonomy),
                "test_taxonomy_sha256": file_sha256(self.test_taxonomy),
                "label_in_text": self.label_in_text,
                "probe_leaf": self.probe_leaf,
            },
        }

    def predict_dataloader(self) -> DataLoader:
        keep = [i for i, r in enumerate(self.records) if r["id"] not in self.exclude_ids]
        records = [self.records[i] for i in keep]
        if self.mode == "image":
            ds: Dataset = ImageProbeDataset(records, self._image_root, self.max_image_side, self.max_pixels)
        else:
            ds = TextProbeDataset(records, [self._prompts[i] for i in keep])
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=PaddedEvalSampler(ds),
            num_workers=self.num_workers,
            collate_fn=collate_probe_inputs,
        )
