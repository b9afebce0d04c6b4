"""Question batches for evaluation and LoRA tuning: one item is one image with all its levels.

An item carries every asked level of one record, so a model encodes the image once and answers
all levels from it. Items are served by `PaddedEvalSampler`, whose padding repeats come back
with `valid=False` so no sample is counted twice under DDP.
`level_questions` is the single place a record becomes per-level chat messages; it uses
`hiertrain.protocol.prompts` only, so evaluation and tuning see the same words.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from hiertrain.protocol.protocol import QuestionProtocol
from hiertrain.protocol import conditions
from hiertrain.protocol import prompts
from hiertrain.datamodules.sampling import PaddedEvalSampler, unpad_index
from hiertrain.base.errors import HierError
from hiertrain.taxonomy.images import BAD_IMAGE_ERRORS
from hiertrain.taxonomy.bank_index import LazyRecords, QuestionIndex
from hiertrain.taxonomy.question_bank import QuestionRecord

Mode = Literal["image", "text"]


@dataclass
class LevelQuestion:
    """One level of one record, as put to the model (a plain dataclass so Lightning can walk batches)."""

    level: int  # 0-based level index (depth)
    name: str
    truth: str
    options: list[str]  # in the shuffled order the letters refer to
    question: str  # prompt + lettered options + answer instruction ("" for binary: see statements)
    messages: list[dict] = field(repr=False)
    # binary condition: one (user text, messages) per option, in option order; empty otherwise
    statements: list[tuple[str, list[dict]]] = field(default_factory=list, repr=False)
    # circular evaluation: the same question under rotations 1.. of `options` (rotation 0 is the
    # level itself); empty otherwise (hiertrain.metrics.circular)
    rotations: list["RotatedQuestion"] = field(default_factory=list, repr=False)
    prompt: str = ""  # the level's question without its options (joint inference lists them all)


@dataclass
class RotatedQuestion:
    """One more rotation of a level's options, asked as one more suffix on the image's prefix."""

    options: list[str]
    question: str
    messages: list[dict] = field(repr=False)


def default_level_names(depth: int) -> list[str]:
    """"depth 1" .. "depth N": honest names when the data config gives none."""
    return [f"depth {k + 1}" for k in range(depth)]


def level_questions(
    record: QuestionRecord,
    protocol: QuestionProtocol,
) -> list[LevelQuestion]:
    """The asked levels of `record` (all levels with a truth; not the leaf in text mode), worded
    as the paper words dataset `family` (see `hiertrain.protocol.prompts.IMAGE_WORDINGS`) and put
    under `condition` (see `hiertrain.protocol.conditions`; `context` = the taxonomy text of the
    taxonomy condition).

    `inference` (hiertrain.protocol.conditions.INFERENCE_MODES): "independent" and "stepwise" give
    each level its own one-question chat (stepwise chains them at answer time, on the model's
    own replies); "oracle_parent" puts the earlier levels before it as chat turns, each answered
    with its true letter; "joint" gives every level the one question asking all of them
    (`prompts.joint_question`). `circular`: each level also carries its options' other
    rotations (`LevelQuestion.rotations`)."""
    mode, level_names, subject, variant = protocol.mode, protocol.level_names, protocol.subject, protocol.variant
    family, label_case, condition, context = protocol.family, protocol.label_case, protocol.condition, protocol.context
    seed, shuffle, cot_apostrophe = protocol.seed, protocol.shuffle, protocol.cot_apostrophe
    truths, choices = record.truths, record.choices
    if len(level_names) < len(truths):
        raise HierError(
            f"record {record.sample_id} has {len(truths)} levels but only {len(level_names)} level names were given"
        )
    out = []
    for i in prompts.asked_levels(truths, mode):
        name = level_names[i]
        if mode == "image":
            prompt = prompts.image_prompt(variant, name, subject, family)
        else:
            label = record.label.lower() if label_case == "lower" else record.label  # the paper's LLaVA text scripts lower-case it
            prompt = prompts.text_prompt(variant, name, label, family)
        cond = conditions.condition_of(condition)
        system = cond.system(mode, subject, context)
        if not cond.asks_options:  # open: the question alone
            question = cond.question(prompt, [], cot_apostrophe)
            out.append(LevelQuestion(i, name, truths[i], [], question, conditions.messages(question, mode, system)))
            continue
        options = prompts.shuffled_options(choices[i], seed, record.sample_id, i) if shuffle else list(choices[i])
        texts = cond.statements(subject, name, options)
        if texts is not None:  # binary: one yes/no question per option
            statements = [(text, conditions.messages(text, mode, system)) for text in texts]
            out.append(LevelQuestion(i, name, truths[i], options, "", [], statements))
            continue

        def closed(opts: list[str]) -> str:
            return cond.question(prompt, opts, cot_apostrophe)

        question = closed(options)
        lq = LevelQuestion(i, name, truths[i], options, question, conditions.messages(question, mode, system))
        if protocol.circular:
            from hiertrain.metrics.circular import rotations

            lq.rotations = [
                RotatedQuestion(opts, closed(opts), conditions.messages(closed(opts), mode, system)) for opts in rotations(options)[1:]
            ]
        lq.prompt = prompt
        out.append(lq)
    return with_inference(out, protocol.inference, mode, system)


def with_inference(levels: list[LevelQuestion], inference: str, mode: Mode, system: str | None) -> list[LevelQuestion]:
    """The levels' messages under an inference mode (independent and stepwise: as built)."""
    if inference == "oracle_parent":  # level k after levels < k, each answered with its true letter
        first = levels[0].messages if levels else []
        for k, lq in enumerate(levels):
            earlier = [prompts.LETTERS[p.options.index(p.truth)] for p in levels[:k]]
            later = [p.question for p in levels[1:k]]
            lq.messages = conditions.turn_messages(first, [*later, lq.question], earlier) if k else lq.messages
            for rot in lq.rotations:
                rot.messages = conditions.turn_messages(first, [*later, rot.question], earlier) if k else rot.messages
    elif inference == "joint":  # one question asking every level; each level keeps it (one prompt per image)
        question = prompts.joint_question([(lq.name, lq.prompt, lq.options) for lq in levels])
        joint_system = system if system is not None else prompts.joint_system(mode)
        messages = conditions.messages(question, mode, joint_system)
        for lq in levels:
            lq.question, lq.messages = question, messages
    elif inference not in conditions.INFERENCE_MODES:
        raise HierError(f"inference {inference!r} is not one of {', '.join(conditions.INFERENCE_MODES)}")
    return levels


def open_image(path: Path):
    """The image as RGB (`hiertrain.taxonomy.images.open_rgb`: bombs, truncation, 16-bit grey)."""
    from hiertrain.taxonomy.images import open_rgb

    return open_rgb(path)


class QuestionDataset(Dataset):
    """Records -> items; indices at or past len() are `PaddedEvalSampler` repeats (valid=False).

    `records` may be a `LazyRecords` (a bank's index): each item's record is parsed when served."""

    def __init__(
        self,
        records: Sequence[QuestionRecord],
        protocol: QuestionProtocol,
        image_dir: Path,
        on_bad_image: Literal["skip", "error"],
        image_root_map: dict[str, str] | None = None,
        deferred: Collection[int] = frozenset(),
    ) -> None:
        self.records, self.protocol, self.mode = records, protocol, protocol.mode
        self.image_dir, self.on_bad_image = image_dir, on_bad_image
        self.image_root_map = dict(image_root_map or {})
        # Samples whose image is decoded only if they are asked (`read_image`): a resume's finished
        # samples with a stored request digest, which is checked from the file's bytes alone.
        self.deferred = frozenset(deferred)

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, record: QuestionRecord) -> Path:
        """Where the image is (`hiertrain.taxonomy.images.resolve_image`, the one image-path rule)."""
        from hiertrain.taxonomy.images import resolve_image

        return resolve_image(record.image, self.image_dir, self.image_root_map)

    def __getitem__(self, index: int) -> dict[str, Any]:
        real, valid = unpad_index(index, len(self.records))
        record = self.records[real]
        item: dict[str, Any] = {
            "sample_id": record.sample_id,
            "valid": valid,
            "record": record,
            "levels": level_questions(record, self.protocol),
            "image": None,
            "error": None,
        }
        if self.mode == "image":
            item["path"] = str(self.image_path(record))
            if record.sample_id in self.deferred:
                item["deferred"] = True
            else:
                read_image(item, self.on_bad_image)
        return item


def read_image(item: dict[str, Any], on_bad_image: Literal["skip", "error"]) -> dict[str, Any]:
    """Decode the item's image (`item["path"]`) into `item["image"]`; an unreadable one becomes the
    item's `error` (a counted skip) or, under `on_bad_image: error`, a HierError naming it."""
    item.pop("deferred", None)
    path = item["path"]
    try:
        item["image"] = open_image(path)
    except BAD_IMAGE_ERRORS as err:  # missing, truncated, not an image, decompression bomb
        message = f"{path}: cannot read image of sample {item['sample_id']} ({type(err).__name__}: {err})"
        if on_bad_image == "error":
            raise HierError(message) from None
        item["error"] = message
    return item


def collate_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items stay a list: each has its own levels, options and image size."""
    return items


class HierVQADataModule(LightningDataModule):
    """Serves a question file (the paper's JSONL) for evaluation or tuning.

    Args:
        questions: the question file.
        mode: "image" asks about the image; "text" asks the text twin (the leaf's name).
        taxonomy: optional taxonomy JSON; every record's label must be in it, and its level
            names are used when `level_names` is not given.
        level_names: one name per depth (default: the taxonomy's, else "depth k").
        subject: the noun of the image questions ("bird", "plant"; default "object"); used by the
            "cub" and "inat" families (the other families' wordings name their noun themselves).
        prompt_family: whose wording: "cub" (default), "inat", "imagenet_animal",
            "imagenet_artifact" or "food" (image only); see `hiertrain.protocol.prompts`.
        prompt_variant: which of the paper's 5 wordings (0-4).
        shuffle_options: put the options in a seeded order (default); false keeps the file's
            order, as the paper's text-mode scripts do (its image scripts shuffle).
        drop_trivial_levels: the question file was built with `--drop-trivial-levels`: drop the
            taxonomy's single-class levels and their names from `level_names` too.
        seed: seeds the option order (per sample and level).
        limit: serve only the first `limit` records.
        image_dir: base folder of relative image paths (default: the question file's folder).
        image_root_map: leading path replacements, e.g. the authors' CUB folder -> yours; a
            relative target is taken from the working directory (docs/data.md, "Image paths").
        image_root: your download of the dataset of a paper file (e.g. your CUB_200_2011):
            the authors' absolute image paths are mapped there (hiertrain.paper.paper_image_paths);
            takes precedence over `image_root_map`. Image mode only.
        on_bad_image: "skip" (counted, named in the run's skipped list) or "error".
        name: short dataset name for run names and reports (default: the question file's stem).
        split: serve only records of this split (e.g. "test" when a file holds train/val/test).
        condition: how each level is asked (`hiertrain.protocol.conditions`): "plain" (default),
            "taxonomy" (the taxonomy file in the system prompt), "cot", "bio_cot" (iNat; subject
            "animal" or "plant"), "binary" (a yes/no statement per option) or "open" (no options,
            the reply matched to the taxonomy's nodes; needs `taxonomy` and a wording that names
            the level).
        cot_apostrophe: the cot condition's "Let’s": "typographic" (U+2019, the paper's Qwen
            scripts) or "ascii" (its InternVL and LLaVA scripts).
        max_skip_rate: warn at the end of a run that skipped more than this share of samples.
        label_case: text mode: "file" (default: the label as the question file spells it, as the
            paper's Qwen and InternVL scripts) or "lower" (lower-cased in the question, as the
            paper's LLaVA text scripts: evaluation/llm/llava/eval_text_cub.py:27).
        inference: how an image's levels relate (`hiertrain.protocol.conditions.INFERENCE_MODES`):
            "independent" (default, the paper), "oracle_parent", "stepwise" or "joint"; plain
            condition only for the last three.
        circular: ask each level under every cyclic rotation of its options; a level counts
            right only if every rotation is (`hiertrain.metrics.circular`).
    """

    def __init__(
        self,
        questions: str,
        mode: Mode = "image",
        taxonomy: str | None = None,
        level_names: list[str] | None = None,
        subject: str = prompts.DEFAULT_SUBJECT,
        prompt_variant: int = 0,
        seed: int = 0,
        limit: int | None = None,
        image_dir: str | None = None,
        image_root_map: dict[str, str] | None = None,
        image_root: str | None = None,
        on_bad_image: Literal["skip", "error"] = "skip",
        batch_size: int = 8,
        num_workers: int = 0,
        name: str | None = None,
        split: str | None = None,
        prompt_family: str = prompts.DEFAULT_FAMILY,
        drop_trivial_levels: bool = False,
        shuffle_options: bool = True,
        condition: str = "plain",
        cot_apostrophe: str = "typographic",
        max_skip_rate: float = 0.05,
        label_case: str = "file",
        inference: str = "independent",
        circular: bool = False,
    ) -> None:
        super().__init__()
        conditions.check_inference(inference, condition, circular)
        self.inference, self.circular = inference, circular
        if label_case not in ("file", "lower"):
            raise HierError(f"label_case {label_case!r} is not 'file' or 'lower'")
        conditions.check_condition(condition, mode, subject, cot_apostrophe)
        if mode not in ("image", "text"):
            raise HierError(f"data mode {mode!r} is not 'image' or 'text'")
        if on_bad_image not in ("skip", "error"):
            raise HierError(f"on_bad_image {on_bad_image!r} is not 'skip' or 'error'")
        if limit is not None and limit < 1:
            raise HierError(f"limit must be at least 1, got {limit}")
        if batch_size < 1:
            raise HierError(f"data.batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise HierError(f"data.num_workers must be 0 (load in this process) or more, got {num_workers}")
        if not 0 <= max_skip_rate <= 1:
            raise HierError(f"data.max_skip_rate must be in [0, 1], got {max_skip_rate}")
        self.questions, self.mode, self.taxonomy_path = questions, mode, taxonomy
        self.given_level_names, self.subject = level_names, subject
        self.prompt_variant, self.seed, self.limit = prompt_variant, seed, limit
        self.image_dir = Path(image_dir) if image_dir else Path(questions).parent
        self.image_root_map = dict(image_root_map or {})
        self.image_root = image_root
        self.on_bad_image, self.batch_size, self.num_workers = on_bad_image, batch_size, num_workers
        self.name = name or Path(questions).stem
        self.split = split
        self.prompt_family, self.drop_trivial_levels = prompt_family, drop_trivial_levels
        self.shuffle_options = shuffle_options
        self.condition, self.cot_apostrophe = condition, cot_apostrophe
        self.label_case = label_case
        self.context: str | None = None  # the taxonomy text of the taxonomy condition
        self.taxonomy = None  # the Taxonomy, when data.taxonomy is given
        self.split, self.max_skip_rate = split, max_skip_rate
        self.records: LazyRecords | None = None  # served records, parsed when asked for
        self.level_names: list[str] = []
        self.exclude_ids: set[int] = set()  # finished samples of a resumed run
        self.deferred_ids: set[int] = set()  # finished samples served again to check their request digest

    def setup(self, stage: str | None = None) -> None:
        if self.records is not None:
            return
        prompts.check_family(self.prompt_family, self.mode)  # unknown family/variant fail now, not per item
        prompts.image_prompt(self.prompt_variant, "x", family=self.prompt_family)
        path = Path(self.questions)
        # The bank's index (one pass, cached by content; every line checked as read_questions does);
        # records are parsed again only when served.
        index = None if path.is_file() and path.stat().st_size == 0 else QuestionIndex.of(path)
        if index is None or not len(index):
            raise HierError(f"{self.questions}: no questions (empty file)")
        records = index.records()
        if self.split is not None:
            found = records.splits()
            records = records.with_split(self.split)
            if not len(records):
                raise HierError(f"{self.questions}: no records with split {self.split!r} (splits found: {', '.join(found)})")
        depth = records.depth()
        taxonomy = self._taxonomy()
        self._check_condition(taxonomy)
        if taxonomy is not None:
            self._check_labels(taxonomy, records)
        self.level_names = self._names(taxonomy, records, depth)
        self.records = records[: self.limit] if self.limit else records
        if self.image_root and self.mode == "image":
            from hiertrain.paper.paper_image_paths import image_root_map

            found = image_root_map([r.image for r in self.records], self.image_root, source=str(self.questions))
            self.image_root_map = {**found, **self.image_root_map}
        self._warn_single_options()

    def _check_labels(self, taxonomy, records: LazyRecords) -> None:
        """Every label of `records` (the served split, before `limit`) is in the taxonomy; the
        first record in file order with one that is not is the error (each label looked up once)."""
        index = records.index
        codes = records.label_codes()
        bad = []
        for code in np.unique(codes):
            try:
                taxonomy.path(index.labels[code])
            except HierError:
                bad.append(code)
        if bad:
            row = int(records.rows[np.flatnonzero(np.isin(codes, bad))[0]])
            label = index.labels[index.label_codes[row]]
            raise HierError(f"{self.questions}:{row + 1}: label {label!r} is not in taxonomy {self.taxonomy_path}")

    def _warn_single_options(self) -> None:
        """A question with one option is always right: say so instead of counting it silently."""
        from lightning.pytorch.utilities import rank_zero_warn

        index, rows = self.records.index, self.records.rows
        counts = index.single[self.mode][rows]
        if counts.any():
            first = int(np.flatnonzero(counts)[0])
            sample_id, level = int(rows[first]), int(index.first_single[self.mode][rows[first]])
            rank_zero_warn(
                f"{self.questions}: {int(counts.sum())} questions have a single option and are always counted correct "
                f"(first: line {sample_id + 1}, level {level + 1}); `hiertrain score --ignore-level N` leaves a level out"
            )

    def _check_condition(self, taxonomy) -> None:
        """What a condition needs: the taxonomy (taxonomy, open) and, for open, a wording that
        names the level (otherwise the question does not say which level to name)."""
        cond = conditions.condition_of(self.condition)
        if cond.needs_taxonomy and taxonomy is None:
            raise HierError(f"condition {self.condition!r} needs the taxonomy (data.taxonomy)")
        context = cond.context(self.taxonomy_path)
        if context is not None:
            self.context = context
        cond.check_wording(self.mode, self.prompt_family, self.prompt_variant)
        self.taxonomy = taxonomy

    def _names(self, taxonomy, records: LazyRecords, depth: int) -> list[str]:
        """One name per level of the records: a name list that does not fit them is an error,
        so a "phylum" question is never asked as "kingdom" after a level was dropped."""
        dropped = " after dropping trivial levels" if self.drop_trivial_levels else ""
        hint = "questions built with --drop-trivial-levels need data.drop_trivial_levels: true, and the other way round"
        if taxonomy is not None:
            names = list(taxonomy.level_names)  # the given names, minus the dropped levels' names
            # Each record's levels are its leaf's path, name for name. A dropped (or kept) level shifts
            # every record; a node the taxonomy re-parented (on_multi_parent="first") only its leaves.
            index, codes = records.index, records.label_codes()
            lengths = np.zeros(len(index.labels), dtype=np.int64)  # path length per label (each looked up once)
            for code in np.unique(codes):
                lengths[code] = len(taxonomy.path(index.labels[code]))
            off = np.flatnonzero(index.depths[records.rows] != lengths[codes])
            if 2 * len(off) > len(records):
                row = int(records.rows[off[0]])
                label, length = index.labels[index.label_codes[row]], int(lengths[index.label_codes[row]])
                raise HierError(
                    f"{self.questions}:{row + 1}: {int(index.depths[row])} levels but the taxonomy's path of "
                    f"{label!r}{dropped} has {length}, named {names[:length]} ({len(off)} of {len(records)} "
                    f"records differ; {hint})"
                )
            return names
        if self.drop_trivial_levels:
            raise HierError("drop_trivial_levels needs the taxonomy (data.taxonomy) to know which levels to drop")
        names = list(self.given_level_names) if self.given_level_names else default_level_names(depth)
        if len(names) != depth:
            raise HierError(f"{self.questions}: its records have {depth} levels but {len(names)} level names were given: {names}")
        return names

    def _taxonomy(self):
        if not self.taxonomy_path:
            return None
        from hiertrain.taxonomy.taxonomy import Taxonomy

        return Taxonomy.from_json(  # membership and level names
            self.taxonomy_path,
            level_names=self.given_level_names,
            on_multi_parent="first",
            drop_trivial_levels=self.drop_trivial_levels,
        )

    @property
    def depth(self) -> int:
        """Most levels of any served record (the width of the metric tensors)."""
        self.setup()
        return self.served_records().depth()

    def served_records(self) -> LazyRecords:
        """Every record this run is responsible for (finished ones included), parsed when read."""
        self.setup()
        return self.records

    def served_ids(self) -> list[int]:
        """The sample ids of `served_records()`, from the index (nothing parsed)."""
        return self.served_records().sample_ids

    @property
    def protocol(self) -> QuestionProtocol:
        """This data's question protocol (after `setup()`: level names and taxonomy context known)."""
        return QuestionProtocol(
            mode=self.mode, level_names=tuple(self.level_names), subject=self.subject, variant=self.prompt_variant,
            seed=self.seed, family=self.prompt_family, shuffle=self.shuffle_options, condition=self.condition,
            context=self.context, cot_apostrophe=self.cot_apostrophe, label_case=self.label_case,
            inference=self.inference, circular=self.circular,
        )

    def dataset(self) -> QuestionDataset:
        self.setup()
        todo = self.records.excluding(self.exclude_ids)
        return QuestionDataset(todo, self.protocol, self.image_dir, self.on_bad_image, self.image_root_map, self.deferred_ids)

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()

    def _loader(self) -> DataLoader:
        return self.eval_loader(self.dataset())

    def eval_loader(self, dataset: QuestionDataset) -> DataLoader:
        """Ordered batches of `dataset` for scoring; under DDP each rank gets its shard, padding marked."""
        if len(dataset) == 0:  # everything already finished: nothing to iterate, still a loader
            return DataLoader([], batch_size=self.batch_size, collate_fn=collate_items)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=PaddedEvalSampler(dataset),
            num_workers=self.num_workers,
            collate_fn=collate_items,
            persistent_workers=False,
        )
