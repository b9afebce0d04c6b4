"""The bank index (issue 24): the same records and the same one-line errors as `read_questions`,
records parsed only when served, cached by content."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from hiertrain.taxonomy import bank_index
from hiertrain.protocol import prompts
from hiertrain.taxonomy.bank_index import QuestionIndex
from hiertrain.base.errors import HierError
from hiertrain.taxonomy.question_bank import read_questions

RECORD = {
    "image": "img/a.png", "label": "Red Solid Circle", "split": "test",
    "level1": "round", "choices_level1": ["round", "angular"],
    "level2": "circle", "choices_level2": ["circle", "square", "triangle", "ellipse"],
    "level3": "red solid circle", "choices_level3": ["red solid circle", "blue solid circle"],
}  # fmt: skip


def _varied() -> list[dict]:
    """Splits, depths, null truths, single options, non-ASCII text, levels out of key order."""
    out = []
    for i in range(23):
        r = dict(RECORD, image=f"img/{i}.png", split=("train", "test", "val")[i % 3])
        if i % 4 == 1:
            r["level3"] = None
            del r["choices_level3"]
        if i % 5 == 2:
            r["choices_level2"] = ["circle"]
        if i % 6 == 3:
            r = {"level4": "Ünïcode", "choices_level4": ["Ünïcode", "ascii"], **r, "label": "Bläck Stär"}
        if i == 7:
            r["choices_level1"] = ["round"]
            r["choices_level3"] = ["red solid circle"]
        out.append(r)
    return out


def _write(path: Path, records: list[dict], end: str = "\n", last: bool = True) -> Path:
    text = end.join(json.dumps(r, ensure_ascii=False) for r in records) + (end if last else "")
    path.write_bytes(text.encode("utf-8"))
    return path


def _single(records, mode: str) -> tuple[int, tuple[int, int] | None]:
    """The data module's former count: (questions with < 2 options, (first line, level))."""
    found = [(r.sample_id, i) for r in records for i in prompts.asked_levels(r.truths, mode) if len(r.choices[i]) < 2]
    return len(found), found[0] if found else None


@pytest.mark.parametrize(("end", "last"), [("\n", True), ("\r\n", True), ("\n", False)])
def test_records_and_fields_equal_read_questions(tmp_path, end, last):
    path = _write(tmp_path / "q.jsonl", _varied(), end, last)
    expected = read_questions(path)
    index = QuestionIndex.of(path)
    records = index.records()
    assert len(records) == len(expected) == len(index)
    assert [(r.sample_id, r.raw) for r in records] == [(r.sample_id, r.raw) for r in expected]
    assert [records[i].raw for i in (5, 0, 22)] == [expected[i].raw for i in (5, 0, 22)]  # random access
    assert [index.splits[c] for c in index.split_codes] == [r.split for r in expected]
    assert [index.labels[c] for c in index.label_codes] == [r.label for r in expected]
    assert index.depths.tolist() == [len(r.truths) for r in expected]
    for mode in ("image", "text"):
        count, first = _single(expected, mode)
        rows = np.flatnonzero(index.single[mode])
        assert int(index.single[mode].sum()) == count and count > 0
        assert (int(rows[0]), int(index.first_single[mode][rows[0]])) == first


def test_selections_work_on_the_index(tmp_path):
    path = _write(tmp_path / "q.jsonl", _varied())
    expected = read_questions(path)
    records = QuestionIndex.of(path).records()
    test = records.with_split("test")
    assert test.sample_ids == [r.sample_id for r in expected if r.split == "test"]
    assert records.splits() == ["test", "train", "val"] and test.splits() == ["test"]
    assert len(records.with_split("dev")) == 0
    kept = test[:4].excluding({test.sample_ids[1], 999})
    assert [r.sample_id for r in kept] == [test.sample_ids[i] for i in (0, 2, 3)]
    assert test.depth() == max(len(r.truths) for r in expected if r.split == "test")


def _expected_error(path: Path) -> str:
    with pytest.raises(HierError) as err:
        read_questions(path)
    return str(err.value)


@pytest.mark.parametrize(
    "bad_line",
    [
        b"",  # blank line
        b"   ",
        b'{"image": "x"',  # not JSON
        b"[1, 2]",  # not an object
        json.dumps({**RECORD, "level2": "hexagon"}).encode(),  # truth not among its options
        json.dumps({k: v for k, v in RECORD.items() if k != "split"}).encode(),
        json.dumps({**RECORD, "choices_level1": ["round", "round"]}).encode(),
        b'{"image": "caf\xe9", "label": "x", "split": "test"}',  # not UTF-8
    ],
)
def test_bad_lines_are_the_same_one_line_errors(tmp_path, bad_line):
    good = [json.dumps({**RECORD, "image": f"img/{i}.png"}).encode() for i in range(3)]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join([*good[:2], bad_line, good[2]]) + b"\n")
    expected = _expected_error(path)
    with pytest.raises(HierError) as err:
        QuestionIndex.of(path)
    assert str(err.value) == expected and "\n" not in expected


def test_a_bad_byte_after_a_bad_line_is_reported_first_as_before(tmp_path):
    # read_questions decodes the whole file first: the bad byte on line 4 wins over line 2's JSON
    path = tmp_path / "q.jsonl"
    path.write_bytes(json.dumps(RECORD).encode() + b"\n{oops\n" + json.dumps(RECORD).encode() + b"\n\xff\n")
    expected = _expected_error(path)
    assert "not UTF-8" in expected
    with pytest.raises(HierError, match="not UTF-8") as err:
        QuestionIndex.of(path)
    assert str(err.value) == expected


def test_served_records_are_parsed_when_read_and_checked_again(tmp_path, monkeypatch):
    path = _write(tmp_path / "q.jsonl", _varied())
    index = QuestionIndex.of(path)
    parsed = []
    real = QuestionIndex.record
    monkeypatch.setattr(QuestionIndex, "record", lambda self, row, source=None: parsed.append(row) or real(self, row, source))
    sub = index.records().with_split("val")[:2]
    assert parsed == []  # selecting parses nothing
    assert [r.sample_id for r in sub] == [2, 5] and parsed == [2, 5]
    # the file changed under the index: the served record is checked again, with read_questions' message
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"round"', b'"rounX"', 1)
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(HierError, match=r"q\.jsonl:3: 'level1' truth 'rounX' is not among"):
        index.records()[2]


def test_index_is_cached_by_content(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("HIERTRAIN_INDEX_CACHE", str(cache))
    path = _write(tmp_path / "q.jsonl", _varied())
    first = QuestionIndex.of(path)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].name.endswith(f"-v{bank_index.INDEX_VERSION}.npz")
    built = []
    monkeypatch.setattr(bank_index, "_build", lambda *a: built.append(a) or pytest.fail("rebuilt"))
    again = QuestionIndex.of(path)  # from the cache
    assert again.offsets.tolist() == first.offsets.tolist() and again.labels == first.labels
    assert [r.raw for r in again.records()] == [r.raw for r in read_questions(path)]
    monkeypatch.undo()
    monkeypatch.setenv("HIERTRAIN_INDEX_CACHE", str(cache))
    _write(path, _varied()[:5])  # new content: a new index, never the old one
    assert len(QuestionIndex.of(path)) == 5 and len(list(cache.iterdir())) == 2


def test_no_cache_and_an_unwritable_cache_still_index(tmp_path, monkeypatch):
    path = _write(tmp_path / "q.jsonl", _varied())
    monkeypatch.setenv("HIERTRAIN_INDEX_CACHE", "off")
    assert bank_index.index_cache_dir() is None and len(QuestionIndex.of(path)) == 23
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("HIERTRAIN_INDEX_CACHE", str(blocker / "sub"))  # cannot be created
    assert len(QuestionIndex.of(path)) == 23


def test_gzipped_and_packaged_banks(tmp_path):
    gz = tmp_path / "q.jsonl.gz"
    gz.write_bytes(gzip.compress(_write(tmp_path / "q.jsonl", _varied()).read_bytes()))
    assert [r.raw for r in QuestionIndex.of(gz).records()] == [r.raw for r in read_questions(gz)]
    name = "hiertrain://annotations/CUB200_with_random_choice.jsonl"
    packaged = QuestionIndex.of(name).records()
    expected = read_questions(name)
    assert len(packaged) == len(expected) == 5794
    assert [packaged[i].raw for i in (0, 2896, 5793)] == [expected[i].raw for i in (0, 2896, 5793)]


def test_the_first_bad_line_is_named_whatever_its_kind(tmp_path):
    # index and read_questions both read line by line: a repeat or a failed check on line 2 is
    # reported before a line 4 that is not JSON (read_questions once parsed every line first)
    first = json.dumps({**RECORD, "image": "img/0.png"})
    for second in (first, json.dumps({**RECORD, "image": "img/1.png", "level2": "hexagon"})):
        path = tmp_path / "two_bad.jsonl"
        path.write_text("\n".join([first, second, json.dumps({**RECORD, "image": "img/2.png"}), '{"image": ']) + "\n")
        expected = _expected_error(path)
        assert expected.startswith(f"{path}:2: ")
        with pytest.raises(HierError) as err:
            QuestionIndex.of(path)
        assert str(err.value) == expected
