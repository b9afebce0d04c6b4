"""The per-sample request digest: each ingredient changes it, nothing else does."""

from __future__ import annotations

import json

import pytest

from hiertrain.base.errors import HierError
from hiertrain.metrics.predictions import LevelPrediction, SamplePrediction, read_predictions, write_predictions
from hiertrain.runs.eval_outputs import RunDirectory
from hiertrain.runs.request_digest import image_sha256, request_digest

BASE = dict(
    backend="transformers:VLLMEvaluator",
    model="abc123",
    texts=["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhich?<|im_end|>"],
    options=[["cat", "dog", "fish"]],
    image="f" * 64,
    generation={"answer": "generate", "max_new_tokens": 5},
)


def test_digest_is_a_deterministic_sha256():
    digest = request_digest(**BASE)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert request_digest(**BASE) == digest
    reordered = dict(reversed(list(BASE.items())))  # keyword order and dict key order do not matter
    reordered["generation"] = {"max_new_tokens": 5, "answer": "generate"}
    assert request_digest(**reordered) == digest


@pytest.mark.parametrize(
    "field, value",
    [
        ("backend", "served:ServedEvaluator"),
        ("model", "abc124"),
        ("texts", [BASE["texts"][0].replace("helpful", "careful")]),  # the system prompt
        ("texts", [BASE["texts"][0].replace("Which?", "Which one?")]),
        ("options", [["dog", "cat", "fish"]]),  # option order
        ("image", "e" * 64),
        ("image", None),
        ("generation", {"answer": "generate", "max_new_tokens": 10}),
        ("generation", {"answer": "logits", "max_new_tokens": 5}),
    ],
)
def test_each_ingredient_changes_the_digest(field, value):
    assert request_digest(**{**BASE, field: value}) != request_digest(**BASE)


def test_non_json_objects_in_messages_are_placeholders_not_reprs():
    class Image:  # its repr would hold a memory address
        pass

    texts = [[{"role": "user", "content": [{"type": "image", "image": Image()}, {"type": "text", "text": "Q"}]}]]
    assert request_digest(**{**BASE, "texts": texts}) == request_digest(**{**BASE, "texts": json.loads(json.dumps(texts, default=lambda o: "<Image>"))})


def test_image_digest_follows_bytes_not_path(tmp_path):
    a, b = tmp_path / "root1" / "x.png", tmp_path / "root2" / "x.png"
    for path in (a, b):
        path.parent.mkdir()
        path.write_bytes(b"same bytes")
    assert image_sha256(a) == image_sha256(b)  # moved to another root: same digest
    first = image_sha256(a)
    a.write_bytes(b"other bytes!")  # rewritten (another size): the cache does not hide it
    assert image_sha256(a) != first
    assert image_sha256(None) is None


def _sample(sample_id: int, predicted: str, request: str | None) -> SamplePrediction:
    level = LevelPrediction(level=1, truth="cat", options=["cat", "dog"], predicted=predicted, correct=predicted == "cat")
    return SamplePrediction(id=sample_id, levels=[level], request=request)


def test_request_round_trips_and_is_absent_when_unset(tmp_path):
    path = tmp_path / "p.jsonl"
    write_predictions([_sample(0, "cat", "a" * 64), _sample(1, "dog", None)], path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["request"] == "a" * 64 and "request" not in lines[1]
    assert [s.request for s in read_predictions(path).samples] == ["a" * 64, None]
    path.write_text(json.dumps({**lines[0], "request": 7}) + "\n")
    with pytest.raises(HierError, match="request must be a digest string"):
        read_predictions(path)


def test_consolidate_takes_the_reasked_line_and_still_refuses_a_conflict(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    write_predictions([_sample(0, "cat", "a" * 64), _sample(1, "cat", "b" * 64)], run.predictions_path)
    write_predictions([_sample(1, "dog", "c" * 64)], run.part("predictions"))  # re-asked: another request
    merged = run.consolidate()
    assert [(s.id, s.levels[0].predicted) for s in merged] == [(0, "cat"), (1, "dog")]
    assert run.finished_requests() == {0: "a" * 64, 1: "c" * 64}
    write_predictions([_sample(1, "cat", "c" * 64)], run.part("predictions"))  # same request, another answer
    with pytest.raises(HierError, match="sample 1 differs"):
        run.consolidate()


def test_finished_requests_of_lines_without_a_digest_are_none(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    write_predictions([_sample(0, "cat", None), _sample(3, "dog", "d" * 64)], run.predictions_path)
    assert run.finished_requests() == {0: None, 3: "d" * 64}
