"""The answerer interface: what every backend does with a batch of question items.

An answerer is built once per run from the run's `QuestionProtocol` and its backend's settings,
then handed batches of dataset items (`hiertrain.datamodules.questions.QuestionDataset`). For
each item it renders the prompts it sends (`prompts`; `request_texts` is what the per-sample
request digest hashes), asks its model for `logits` (a score row per prompt) or `generate` (a
reply per prompt), and reads the outputs into `SamplePrediction`s by the protocol's condition
(`answer`). `hiertrain test`, LoRA validation and the before/after comparison all call `answer`
through `hiertrain.modules.evaluation_loop.score_batch`, so a backend is one class
(`HFAnswerer`, `ServedAnswerer`, `CLIPAnswerer`) and the reading of replies exists once, here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from hiertrain.base.errors import HierError
from hiertrain.metrics.predictions import LevelPrediction, SamplePrediction
from hiertrain.protocol import conditions
from hiertrain.protocol.prompts import LETTERS
from hiertrain.protocol.protocol import QuestionProtocol

Item = dict[str, Any]
Pick = Callable[[Any, list[str]], tuple[str | None, int | None]]  # (output, options) -> (reply, option index)


def sample_prediction(
    item: Item, mode: str, answers: list[tuple[str | None, int | None]], asks_text: bool = True
) -> SamplePrediction:
    """One finished sample: `answers[k]` = (reply, chosen option index or None) of asked level k.
    `asks_text` False (CLIP) leaves `question` empty: that model never saw the question text."""
    record = item["record"]
    asked = {lq.level: (lq, answer) for lq, answer in zip(item["levels"], answers, strict=True)}
    levels = []
    for i, truth in enumerate(record.truths):
        if truth is None:
            continue
        if i not in asked:  # the text-mode leaf: named in the question, not asked
            levels.append(LevelPrediction(level=i + 1, truth=truth, options=record.choices[i], asked=False))
            continue
        lq, (reply, index) = asked[i]
        predicted = None if index is None else lq.options[index]
        levels.append(
            LevelPrediction(
                level=i + 1,
                name=lq.name,
                truth=truth,
                options=list(lq.options),
                reply=reply,
                letter=None if index is None else LETTERS[index],
                predicted=predicted,
                correct=predicted == truth,
                question=lq.question if asks_text else None,
            )
        )
    return SamplePrediction(
        id=record.sample_id, levels=levels, image=record.image, label=record.label, split=record.split, mode=mode
    )


class Answerer:
    """One backend answering question items under one `QuestionProtocol`.

    Subclasses give `prompts` (what is sent per item, one entry per output), `logits` and/or
    `generate` (outputs per item, in `prompts` order) and `pick` (a logits output -> an option);
    `answer` and the reading of replies are shared."""

    backend: ClassVar[str] = "transformers"  # how the model runs (run.json `backend`)
    generates: ClassVar[tuple[str, ...]] = ("generate",)  # answer kinds whose outputs are replies
    asks_text: ClassVar[bool] = True  # False: the model never sees the question text (CLIP)

    def __init__(self, protocol: QuestionProtocol, answer: str, answer_parser: str = "strict", matcher: Any = None) -> None:
        self.protocol, self.answer_kind, self.answer_parser = protocol, answer, answer_parser
        self.matcher = matcher  # open condition: hiertrain.protocol.open_set.OpenSetMatcher

    @property
    def mode(self) -> str:
        return self.protocol.mode

    @property
    def condition(self) -> conditions.Condition:
        return conditions.condition_of(self.protocol.condition)

    # ---------------------------------------------------------------- requests

    def prompts(self, item: Item) -> list[Any]:
        """What this backend sends for one item, one entry per output (the default: each asked
        level's chat messages, each rotation right after its level; each statement for binary; the
        one joint question)."""
        if self.condition.per_statement:
            return [messages for lq in item["levels"] for _, messages in lq.statements]
        if self.protocol.inference == "joint":  # one question asking every level
            return [item["levels"][0].messages] if item["levels"] else []
        return [messages for lq in item["levels"] for messages in (lq.messages, *(rot.messages for rot in lq.rotations))]

    def request_texts(self, item: Item) -> Any:
        """The text part of the item's request digest (`hiertrain.runs.request_digest`)."""
        return self.prompts(item)

    def image_refusal(self, item: Item) -> str | None:
        """Why this model cannot take the item's (readable) image, or None (default: it can)."""
        return None

    # ---------------------------------------------------------------- outputs

    def logits(self, items: list[Item]) -> list[list[Any]]:
        """Per item, one score output per prompt (`pick` reads it)."""
        raise HierError(f"{type(self).__name__} does not score letters (answer {self.answer_kind!r})")

    def generate(self, items: list[Item]) -> list[list[str]]:
        """Per item, one generated reply per prompt."""
        raise HierError(f"{type(self).__name__} does not generate replies (answer {self.answer_kind!r})")

    def pick(self, output: Any, options: list[str]) -> tuple[str | None, int | None]:
        """(reply, option index or None) from one `logits` output."""
        raise NotImplementedError

    def answer(self, items: list[Item]) -> list[SamplePrediction]:
        """The items' predictions: outputs of the backend read by the protocol's condition."""
        if not items:
            return []
        if self.answer_kind in self.generates:
            return [self.read_replies(item, replies) for item, replies in zip(items, self.generate(items), strict=True)]
        return [self.closed_prediction(item, outputs, self.pick) for item, outputs in zip(items, self.logits(items), strict=True)]

    # ---------------------------------------------------------------- reading replies

    def letter_of(self, reply: str, options: list[str]) -> int | None:
        """The option index a generated reply chooses, by `answer_parser` (None = unparseable);
        a chain-of-thought reply's final letter under the strict parser."""
        return self.condition.read(reply, options, self.answer_parser)

    def read_replies(self, item: Item, replies: list[str]) -> SamplePrediction:
        """One sample from its generated replies (one per prompt), read as the condition reads them."""
        if not self.condition.lettered:  # binary, open: read by the condition
            return self.condition.sample(self, item, self.mode, replies)
        if self.protocol.inference == "joint":
            return self.joint_prediction(item, self.mode, replies)
        return self.closed_prediction(item, replies, lambda reply, options: (reply, self.letter_of(reply, options)))

    def replies_prediction(self, item: Item, mode: str, replies: list[str]) -> SamplePrediction:
        """One sample from a reply per asked level (per statement for binary), read as the
        run's condition reads them (`Condition.sample`)."""
        return self.condition.sample(self, item, mode, replies)

    def letters_prediction(self, item: Item, mode: str, replies: list[str]) -> SamplePrediction:
        """A reply per asked level, each read to an option (`letter_of`)."""
        answers = [(reply, self.letter_of(reply, lq.options)) for lq, reply in zip(item["levels"], replies, strict=True)]
        return sample_prediction(item, mode, answers, self.asks_text)

    def closed_prediction(self, item: Item, outputs: list[Any], pick: Pick) -> SamplePrediction:
        """One output per prompt of `prompts` (each level, then its rotations) -> the sample. A
        circular level keeps rotation 0's answer and is right only if every rotation is
        (`hiertrain.metrics.circular.combine`)."""
        from hiertrain.metrics.circular import combine, rotation_record

        answers, records, start = [], [], 0
        for lq in item["levels"]:
            asked = [lq.options, *(rot.options for rot in lq.rotations)]
            mine = [pick(o, opts) for o, opts in zip(outputs[start : start + len(asked)], asked, strict=True)]
            start += len(asked)
            answers.append(mine[0])
            records.append([rotation_record(opts, lq.truth, *a) for opts, a in zip(asked, mine)] if lq.rotations else None)
        if start != len(outputs):
            raise HierError(f"sample {item['sample_id']}: {len(outputs)} answers for {start} questions")
        prediction = sample_prediction(item, self.mode, answers, self.asks_text)
        asked_levels = [lv for lv in prediction.levels if lv.asked]
        for lv, recs in zip(asked_levels, records, strict=True):
            if recs is not None:
                combine(lv, recs)
        return prediction

    def binary_prediction(self, item: Item, mode: str, replies: list[str]) -> SamplePrediction:
        """A level's statements' replies -> the paper's binary verdict (`conditions.binary_choice`);
        `reply` holds the statements' replies joined by " | ", `detail` each statement."""
        answers, details, start = [], [], 0
        for lq in item["levels"]:
            mine = replies[start : start + len(lq.statements)]
            start += len(lq.statements)
            values = [conditions.binary_value(r) for r in mine]
            answers.append((" | ".join(mine), conditions.binary_choice(values)))
            details.append(
                {"statements": [{"option": o, "question": q, "reply": r, "value": v}
                                for o, (q, _), r, v in zip(lq.options, lq.statements, mine, values)]}
            )  # fmt: skip
        if start != len(replies):
            raise HierError(f"sample {item['sample_id']}: {len(replies)} replies for {start} statements")
        prediction = sample_prediction(item, mode, answers)
        asked = [lv for lv in prediction.levels if lv.asked]
        for lv, detail in zip(asked, details, strict=True):
            lv.detail, lv.question = detail, None  # the statements carry their own texts
            lv.correct = lv.predicted is not None and lv.predicted.lower() == lv.truth.lower()  # metric_binary: case-insensitive
        return prediction

    def open_prediction(self, item: Item, mode: str, replies: list[str]) -> SamplePrediction:
        """Each reply matched to the taxonomy's nodes at its level (`OpenSetMatcher`): the named
        node is `predicted`; correct when it is the truth; the verdict and matches in `detail`."""
        if self.matcher is None:
            raise HierError("condition 'open' needs the taxonomy's matcher (data.taxonomy)")
        prediction = sample_prediction(item, mode, [(reply, None) for reply in replies])
        asked = [lv for lv in prediction.levels if lv.asked]
        for lv, lq, reply in zip(asked, item["levels"], replies, strict=True):
            found = self.matcher.match(reply, lq.level)
            lv.predicted = found.node
            lv.correct = found.node is not None and self.matcher.same(found.node, lq.truth)
            lv.detail = {**found.to_json(), "candidates": self.matcher.candidates(lq.level)}
        return prediction

    def joint_prediction(self, item: Item, mode: str, replies: list[str]) -> SamplePrediction:
        """The one reply to the joint question, read line by line (`answers.joint_letters`); every
        level keeps the whole reply and the joint question, so a score can re-read it."""
        from hiertrain.protocol.answers import joint_letters

        levels = item["levels"]
        if len(replies) != (1 if levels else 0):
            raise HierError(f"sample {item['sample_id']}: {len(replies)} replies to one joint question")
        reply = replies[0] if replies else ""
        picks = joint_letters(reply, [lq.name for lq in levels], [lq.options for lq in levels])
        return sample_prediction(item, mode, [(reply, index) for index in picks])
