"""Predictions files: our JSONL (append, kill-truncated tail) and the paper's result JSON."""

from __future__ import annotations

import json

import pytest

from hiertrain.base.errors import HierError
from hiertrain.metrics.classes import hierarchical_metrics, metrics_dict
from hiertrain.metrics.predictions import (
    LevelPrediction,
    SamplePrediction,
    append_predictions,
    from_paper_results,
    load_predictions,
    read_predictions,
    to_paper_results,
    to_tensors,
    write_paper_results,
    write_predictions,
)

OPTS = {
    1: ["Passeriformes", "Anseriformes", "Procellariiformes", "Piciformes"],
    2: ["Laridae", "Diomedeidae", "Corvidae", "Anatidae"],
    3: ["Larus", "Phoebastria", "Corvus", "Anas"],
    4: ["Laysan Albatross", "Black-footed Albatross", "Sooty Albatross", "Common Raven"],
}
TRUTH = {1: "Procellariiformes", 2: "Diomedeidae", 3: "Phoebastria", 4: "Black-footed Albatross"}


def _level(n: int, answer: int | None, asked: bool = True) -> LevelPrediction:
    """Level n answered with option `answer` (None = unparseable reply)."""
    predicted = None if answer is None else OPTS[n][answer]
    return LevelPrediction(
        level=n,
        name=["order", "family", "genus", "species"][n - 1],
        truth=TRUTH[n],
        options=OPTS[n],
        reply="???" if answer is None else "ABCD"[answer],
        letter=None if answer is None else "ABCD"[answer],
        predicted=predicted,
        correct=predicted == TRUTH[n],
        asked=asked,
    )


def _samples() -> list[SamplePrediction]:
    return [
        SamplePrediction(0, [_level(1, 2), _level(2, 1), _level(3, 1), _level(4, 1)], "a.jpg", "Black-footed Albatross", "test"),
        SamplePrediction(1, [_level(1, 2), _level(2, 0), _level(3, 1)], "b.jpg", "Black-footed Albatross", "test"),
        SamplePrediction(2, [_level(1, None), _level(2, 1)], "c.jpg", "Black-footed Albatross", "test"),
    ]


def _metrics(samples: list[SamplePrediction]) -> dict:
    correct, asked, parsed = to_tensors(samples)
    m = hierarchical_metrics(asked.shape[1])
    m.update(correct, asked, parsed)
    return metrics_dict(m)


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "p.jsonl"
    samples = _samples()
    samples[1].label = "line\u2028separator"  # written raw with ensure_ascii=False; not a line break
    write_predictions(samples, path)
    first = json.loads(path.read_text().splitlines()[0])
    assert list(first) == ["id", "image", "label", "split", "mode", "levels"]
    assert list(first["levels"][0]) == ["level", "name", "truth", "options", "reply", "letter", "predicted", "correct", "asked",
                                      "question"]
    assert load_predictions(path) == samples


def test_question_round_trips_and_old_files_without_it_still_read(tmp_path):
    samples = _samples()
    samples[0].levels[0].question = "Based on taxonomy, what is the order of the bird in this image?\nA. x\nB. y"
    path = tmp_path / "p.jsonl"
    write_predictions(samples, path)
    assert load_predictions(path)[0].levels[0].question == samples[0].levels[0].question
    old = []
    for line in path.read_text().splitlines():  # a file written before the key existed
        obj = json.loads(line)
        for level in obj["levels"]:
            del level["question"]
        old.append(json.dumps(obj))
    path.write_text("\n".join(old) + "\n")
    loaded = load_predictions(path)
    assert [lv.question for lv in loaded[0].levels] == [None] * len(loaded[0].levels)
    assert [lv.correct for lv in loaded[0].levels] == [lv.correct for lv in samples[0].levels]


def test_to_tensors_unequal_depths():
    correct, asked, parsed = to_tensors(_samples())
    assert asked.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]
    assert correct.tolist() == [[1, 1, 1, 1], [1, 0, 1, 0], [0, 1, 0, 0]]
    assert parsed.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]]


def test_to_tensors_pads_to_the_data_depth():
    """The one pad-to-depth step: columns past a batch's deepest level are unasked padding."""
    short = _samples()[1:]  # deepest level 3
    correct, asked, parsed = to_tensors(short, depth=5)
    assert asked.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    assert correct.tolist() == [[1, 0, 1, 0, 0], [0, 1, 0, 0, 0]]
    assert parsed.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]
    assert [t.shape for t in to_tensors([], depth=4)] == [(0, 4)] * 3  # a rank with no sample
    with pytest.raises(HierError, match=r"sample 0: level 4 is deeper than the data's depth 3"):
        to_tensors(_samples(), depth=3)
    deep = SamplePrediction(7, [LevelPrediction(level=21, truth="x", letter="A", predicted="x", correct=True)])
    with pytest.raises(HierError, match=r"sample 7: level 21 is deeper than the 20 levels supported"):
        to_tensors([deep])


def test_append_and_truncated_last_line(tmp_path):
    path = tmp_path / "p.jsonl"
    samples = _samples()
    append_predictions(samples[:2], path)
    append_predictions(samples[2:], path)
    whole = path.read_text()
    path.write_text(whole + whole.splitlines()[0][:25])  # a 4th line cut off by a kill
    loaded = read_predictions(path)
    assert loaded.samples == samples and loaded.truncated_line == 4
    with pytest.warns(UserWarning, match=r"p\.jsonl:4: cut-off last line"):
        assert len(load_predictions(path)) == 3


def test_bad_lines_name_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    write_predictions(_samples(), path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "{not json\n" + lines[2])
    with pytest.raises(HierError, match=r"p\.jsonl:2: not valid JSON"):
        read_predictions(path)
    path.write_text(lines[0] + lines[0])
    with pytest.raises(HierError, match=r"p\.jsonl:2: sample id 0 already on line 1"):
        read_predictions(path)
    path.write_text(lines[0] + "\n" + lines[1])
    with pytest.raises(HierError, match=r"p\.jsonl:2: blank line"):
        read_predictions(path)
    bad = json.loads(lines[1])
    bad["levels"][0].update(letter=None, predicted=None)  # still says correct
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(HierError, match=r"p\.jsonl:1: level 1 is marked correct but has no parsed answer"):
        read_predictions(path)
    del bad["levels"][0]["asked"]
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(HierError, match=r"p\.jsonl:1: missing key 'asked'"):
        read_predictions(path)


def test_paper_format_keys_and_round_trip(tmp_path):
    path = tmp_path / "results.json"
    write_paper_results(_samples(), path)
    items = json.loads(path.read_text())
    assert items[0]["choices_level4"] == {"A": "Laysan Albatross", "B": "Black-footed Albatross", "C": "Sooty Albatross", "D": "Common Raven"}
    assert items[0]["predicted_level4_letter"] == "B" and items[0]["predicted_level4"] == "Black-footed Albatross"
    assert items[2]["predicted_level1"] == "Unknown" and items[2]["predicted_level1_letter"] == "Unknown"
    assert "ground_truth_level4" not in items[2]  # depth 2: no key, as the paper skips None levels
    back = read_predictions(path)
    assert back.format == "paper" and len(back.samples) == 3
    assert _metrics(back.samples) == _metrics(_samples())


def test_paper_text_mode_leaf(tmp_path):
    samples = _samples()
    for s in samples:
        s.mode = "text"
        s.levels[-1] = _level(s.levels[-1].level, None, asked=False)  # the leaf is not asked
    items = to_paper_results(samples)
    # The paper's text files answer the leaf with the label itself.
    assert items[0]["predicted_level4"] == "Black-footed Albatross" and items[0]["predicted_level4_letter"] == "B"
    assert items[1]["predicted_level3"] == "Black-footed Albatross"
    back = from_paper_results(items)
    assert [lv.asked for lv in back[1].levels] == [True, True, False]
    assert _metrics(back) == _metrics(samples)
    # Without our "mode" key the file reads as image mode unless told.
    for item in items:
        del item["mode"]
    assert all(lv.asked for s in from_paper_results(items) for lv in s.levels)
    assert not from_paper_results(items, mode="text")[0].levels[-1].asked


def test_unasked_level_outside_text_leaf_cannot_be_written():
    samples = _samples()
    samples[0].levels[0].asked = False
    with pytest.raises(HierError, match="sample 0: level 1 is not asked"):
        to_paper_results(samples)


def test_paper_level10_sorts_numerically_and_labels_normalise():
    item = {"image": "x.jpg", "label": "leaf"}
    for n in sorted(range(1, 11), key=str):  # keys arrive as level1, level10, level2, ...
        item[f"ground_truth_level{n}"] = f"Node-{n}"
        item[f"choices_level{n}"] = {"A": f"node {n}", "B": "other"}
        item[f"predicted_level{n}"] = f"node  {n}" if n != 10 else "other"
        item[f"predicted_level{n}_letter"] = "A" if n != 10 else "B"
        item[f"prediction_level{n}"] = "A"
    item["predicted_level9"] = "Error"
    (sample,) = from_paper_results([item])
    assert [lv.level for lv in sample.levels] == list(range(1, 11))
    assert [lv.correct for lv in sample.levels] == [True] * 8 + [False, False]
    assert sample.levels[8].parsed is False and sample.levels[8].letter is None
    assert list(to_paper_results([sample])[0])[-5:] == [
        "ground_truth_level10", "prediction_level10", "predicted_level10_letter", "predicted_level10", "choices_level10",
    ]


def test_paper_file_errors(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('[{"image": "x", "ground_truth_level1": "A", "choices_level1": {"A": "A"}}]')
    with pytest.raises(HierError, match=r"r\.json: record 0: missing key 'predicted_level1'"):
        read_predictions(path)
    path.write_text('[{"image": "x"')  # the paper's scripts rewrite the whole list; a kill can cut it
    with pytest.raises(HierError, match=r"r\.json:1: not valid JSON"):
        read_predictions(path)


def test_real_cub_questions_as_paper_results(reference_data):
    """The shipped CUB questions, answered by always taking option A, scored two independent ways."""
    lines = (reference_data / "annotations" / "CUB200_with_random_choice.jsonl").read_text().splitlines()[:40]
    items, hits, asked = [], 0, 0
    for line in lines:
        rec = json.loads(line)
        item = {"image": rec["image"], "label": rec["label"]}
        for n in range(1, 5):
            choices = rec[f"choices_level{n}"]
            item[f"ground_truth_level{n}"] = rec[f"level{n}"]
            item[f"choices_level{n}"] = {"ABCD"[i]: c for i, c in enumerate(choices)}
            item[f"predicted_level{n}"] = choices[0]
            item[f"predicted_level{n}_letter"] = "A"
            hits += choices[0].lower() == rec[f"level{n}"].lower()
            asked += 1
        items.append(item)
    samples = from_paper_results(items)
    assert len(samples) == 40
    correct, asked_t, _ = to_tensors(samples)
    assert int(asked_t.sum()) == asked and int(correct.sum()) == hits
