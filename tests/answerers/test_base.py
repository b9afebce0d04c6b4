"""The answerer interface: a backend is `prompts` + `logits`/`generate` + `pick`; reading the
outputs into predictions (letters, rotations, binary statements, the joint reply) is shared."""

from __future__ import annotations

import pytest
import torch

from hiertrain.answerers.base import Answerer
from hiertrain.base.errors import HierError
from hiertrain.datamodules.questions import HierVQADataModule
from hiertrain.protocol.prompts import LETTERS


class Scripted(Answerer):
    """Answers every prompt with the truth's letter (or `wrong` for the prompts listed there)."""

    def __init__(self, protocol, answer, wrong=()):
        super().__init__(protocol, answer)
        self.wrong, self.seen = set(wrong), []

    def _truth_indices(self, item):
        out = []
        for lq in item["levels"]:
            for options in (lq.options, *(rot.options for rot in lq.rotations)):
                out.append((options.index(lq.truth), len(options)))
        return out

    def logits(self, items):
        self.seen.append(len(items))
        rows = []
        for item in items:
            scores = []
            for k, (index, n) in enumerate(self._truth_indices(item)):
                row = torch.zeros(n)
                row[(index + 1) % n if k in self.wrong else index] = 1.0
                scores.append(row)
            rows.append(scores)
        return rows

    def pick(self, output, options):
        index = int(output.argmax())
        return LETTERS[index], index

    def generate(self, items):
        if self.condition.per_statement:  # binary: "yes" for the truth's statement only
            return [[("yes" if o == lq.truth else "no") for lq in item["levels"] for o in lq.options] for item in items]
        if self.protocol.inference == "joint":
            return [["\n".join(f"{lq.name}: {LETTERS[lq.options.index(lq.truth)]}" for lq in item["levels"])] for item in items]
        return [[f"({LETTERS[i]})" for i, _ in self._truth_indices(item)] for item in items]


def _items(synth_dir, n=3, mode="text", **data):
    dm = HierVQADataModule(str(synth_dir / "questions_random.jsonl"), taxonomy=str(synth_dir / "taxonomy.json"),
                           mode=mode, limit=n, **data)  # fmt: skip
    return dm, [dm.dataset()[i] for i in range(n)]


@pytest.mark.parametrize("answer", ["logits", "generate"])
def test_truthful_outputs_score_every_asked_level_right(synth_dir, answer) -> None:
    dm, items = _items(synth_dir)
    preds = Scripted(dm.protocol, answer).answer(items)
    assert [p.id for p in preds] == [item["sample_id"] for item in items]
    asked = [lv for p in preds for lv in p.levels if lv.asked]
    assert asked and all(lv.correct and lv.predicted == lv.truth for lv in asked)
    assert all(not lv.asked for p in preds for lv in p.levels[-1:])  # text mode: the leaf is named, not asked


def test_a_circular_level_is_right_only_if_every_rotation_is(synth_dir) -> None:
    dm, items = _items(synth_dir, n=1, circular=True)
    protocol = dm.protocol
    rotations = len(items[0]["levels"][0].rotations) + 1
    assert rotations > 1
    right = Scripted(protocol, "logits").answer(items)[0]
    wrong = Scripted(protocol, "logits", wrong={rotations - 1}).answer(items)[0]  # the first level's last rotation
    first = [lv for lv in right.levels if lv.asked][0], [lv for lv in wrong.levels if lv.asked][0]
    assert first[0].correct and not first[1].correct
    assert first[1].letter == first[0].letter  # rotation 0's answer is kept; the level is wrong all the same


def test_binary_and_joint_replies_are_read_by_their_condition(synth_dir) -> None:
    dm, items = _items(synth_dir, mode="image", subject="shape", condition="binary")
    preds = Scripted(dm.protocol, "generate").answer(items)
    asked = [lv for p in preds for lv in p.levels if lv.asked]
    assert all(lv.correct and lv.detail["statements"] for lv in asked)
    dm, items = _items(synth_dir, inference="joint")
    preds = Scripted(dm.protocol, "generate").answer(items)
    asked = [lv for p in preds for lv in p.levels if lv.asked]
    assert all(lv.correct for lv in asked) and len({lv.reply for lv in asked[:2]}) == 1  # one reply for every level


def test_an_answer_kind_the_backend_lacks_is_one_clear_error(synth_dir) -> None:
    dm, items = _items(synth_dir, n=1)

    class LogitsOnly(Answerer):
        pass

    with pytest.raises(HierError, match="does not generate replies"):
        LogitsOnly(dm.protocol, "generate").answer(items)
    with pytest.raises(HierError, match="does not score letters"):
        LogitsOnly(dm.protocol, "logits").answer(items)
    assert LogitsOnly(dm.protocol, "logits").answer([]) == []
