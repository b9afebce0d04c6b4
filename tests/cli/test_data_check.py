"""`hiertrain data check`: summaries of the real taxonomies, and every kind of question-file
problem counted and listed with FILE:LINE."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hiertrain.cli.main import main
from hiertrain.base.errors import HierError

HIERTRAIN = Path(sys.executable).parent / "hiertrain"


def tax_file(reference_data, name):
    return str(reference_data / "taxonomies" / f"hierarchy_{name}.json")


def test_inat_plantae_summary(reference_data, capsys):
    assert main(["data", "check", "--taxonomy", tax_file(reference_data, "Inat_plantae")]) == 0
    out = capsys.readouterr().out
    assert "leaves: 4271" in out
    assert "levels: 7\n" in out
    assert "classes per level: 1/5/14/85/286/1702/4271" in out
    assert "  level1   kingdom      1 classes" in out
    assert "warning: level 1 (kingdom) has a single class 'Plantae'" in out
    assert out.rstrip().endswith("OK")


def test_strict_makes_warnings_fail(reference_data, capsys):
    assert main(["data", "check", "--taxonomy", tax_file(reference_data, "Inat_plantae"), "--strict"]) == 1
    assert main(["data", "check", "--taxonomy", tax_file(reference_data, "CUB200"), "--strict"]) == 1
    assert main(["data", "check", "--taxonomy", tax_file(reference_data, "Inat_plantae"), "--strict",
                 "--drop-trivial-levels"]) == 1  # the note that a level was dropped is still a warning


def test_json_output(reference_data, capsys):
    assert main(["data", "check", "--taxonomy", tax_file(reference_data, "Food"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["errors"] == []
    tax = report["taxonomy"]
    assert tax["leaves"] == 84 and tax["depth"] == 5 and tax["path_lengths"] == [3, 5]
    assert [lvl["name"] for lvl in tax["levels"]] == [f"depth {k}" for k in range(1, 6)]
    assert sum(lvl["classes"] for lvl in tax["levels"][-1:]) >= 1


def test_multi_parent_choice(reference_data, capsys):
    path = tax_file(reference_data, "imagenet_artifact")
    assert main(["data", "check", "--taxonomy", path]) == 1
    out = capsys.readouterr().out
    assert f"error: {path}: node 'sports equipment' at level 4 has 2 parents: 'implement'" in out
    assert main(["data", "check", "--taxonomy", path, "--on-multi-parent", "first"]) == 0
    out = capsys.readouterr().out
    assert "leaves: 494" in out and "levels: 8 (paths of 3..8 nodes)" in out


def test_cub_question_files_are_clean(reference_data, capsys):
    for name in ("random", "similar"):
        questions = reference_data / "annotations" / f"CUB200_with_{name}_choice.jsonl"
        code = main(["data", "check", "--taxonomy", tax_file(reference_data, "CUB200"), "--questions", str(questions)])
        out = capsys.readouterr().out
        assert code == 0, out
        assert f"questions: {questions} (5794 records; test: 5794)" in out
        assert "problems: 0" in out


def test_image_list_labels_checked(reference_data, capsys):
    images = reference_data / "probing" / "CUB200" / "images_split.jsonl"
    assert main(["data", "check", "--taxonomy", tax_file(reference_data, "CUB200"), "--questions", str(images)]) == 0
    assert "(11788 records; test: 5794, train: 5994)" in capsys.readouterr().out
    # against the leaf-disjoint probing test taxonomy most labels are unknown
    test_tax = str(reference_data / "probing" / "CUB200" / "test_taxonomy.json")
    assert main(["data", "check", "--taxonomy", test_tax, "--questions", str(images), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    q = report["questions"]
    assert q["problems"] == q["by_kind"]["unknown label"] > 0
    assert len(q["listed"]) == 10


TAXONOMY = {
    "Black-footed Albatross": ["Procellariiformes", "Diomedeidae", "Black-footed Albatross"],
    "Laysan Albatross": ["Procellariiformes", "Diomedeidae", "Laysan Albatross"],
    "Crested Auklet": ["Charadriiformes", "Alcidae", "Crested Auklet"],
}


_IMAGES = itertools.count()


def _q(label, *levels):
    rec = {"image": f"{next(_IMAGES)}.jpg", "label": label, "split": "test"}  # one record per image
    for n, (truth, choices) in enumerate(levels, 1):
        rec[f"level{n}"] = truth
        if choices is not None:
            rec[f"choices_level{n}"] = choices
    return json.dumps(rec)


ORDERS = ["procellariiformes", "charadriiformes"]
FAMILIES = ["diomedeidae", "alcidae"]
LINES = [
    # 1: fine, label spelled as in the CUB image list
    _q("Black footed Albatross", ("procellariiformes", ORDERS), ("diomedeidae", FAMILIES),
       ("black-footed albatross", ["black-footed albatross", "crested auklet"])),
    # 2: unknown label
    _q("Sooty Albatross", ("procellariiformes", ORDERS)),
    # 3: family truth disagrees with the taxonomy
    _q("Laysan Albatross", ("procellariiformes", ORDERS), ("alcidae", FAMILIES),
       ("laysan albatross", ["laysan albatross", "crested auklet"])),
    # 4: two options equal after normalisation
    _q("Laysan Albatross", ("procellariiformes", ORDERS), ("diomedeidae", FAMILIES),
       ("Laysan Albatross", ["Laysan Albatross", "laysan-albatross", "crested auklet"])),
    # 5: not JSON
    "{not json",
    # 6: truth not among its options (read_questions' rule)
    _q("Crested Auklet", ("charadriiformes", ["procellariiformes", "podicipediformes"])),
    # 7: two levels for a three-level path
    _q("Crested Auklet", ("charadriiformes", ORDERS), ("alcidae", FAMILIES)),
    # 8: a null level inside the path
    _q("Crested Auklet", ("charadriiformes", ORDERS), (None, None), ("crested auklet", ["crested auklet", "x"])),
]


def test_question_problems_counted_and_listed(tmp_path, capsys):
    tax = tmp_path / "tax.json"
    tax.write_text(json.dumps(TAXONOMY))
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(LINES) + "\n")
    argv = ["data", "check", "--taxonomy", str(tax), "--questions", str(questions), "--json"]
    assert main(argv) == 1
    q = json.loads(capsys.readouterr().out)["questions"]
    assert q["records"] == 8
    assert q["by_kind"] == {
        "unknown label": 1,
        "truth mismatch": 1,
        "duplicate options": 1,
        "malformed record": 2,
        "level count": 1,
        "missing level": 1,
    }
    assert q["problems"] == 7
    listed = q["listed"]
    assert [line.split(":")[1] for line in listed] == ["2", "3", "4", "5", "6", "7", "8"]
    assert listed[0] == f"{questions}:2: label 'Sooty Albatross' not in {tax}"
    assert listed[1] == f"{questions}:3: level2 'alcidae' != taxonomy 'Diomedeidae' for 'Laysan Albatross'"
    assert listed[2] == (
        f"{questions}:4: 'choices_level3' repeats an option after normalisation (case, spaces, -/_): "
        "['Laysan Albatross', 'laysan-albatross']"
    )
    assert listed[3].startswith(f"{questions}:5: not valid JSON")
    assert listed[4].startswith(f"{questions}:6: 'level1' truth 'charadriiformes' is not among")
    assert listed[5] == f"{questions}:7: label 'Crested Auklet' has 2 levels, taxonomy path has 3"
    assert listed[6] == f"{questions}:8: level2 is missing or null; taxonomy has 'Alcidae'"

    assert main(argv[:-1] + ["--max-listed", "2"]) == 1
    out = capsys.readouterr().out
    assert "problems: 7" in out and "  ... 5 more (--max-listed to see them)" in out
    assert out.rstrip().endswith("FAILED")

    questions.write_text(LINES[0] + "\n")
    assert main(argv[:-1]) == 0


def test_missing_files(tmp_path, capsys):
    assert main(["data", "check", "--taxonomy", str(tmp_path / "none.json")]) == 1
    assert f"error: {tmp_path / 'none.json'}: no such file" in capsys.readouterr().out
    tax = tmp_path / "tax.json"
    tax.write_text(json.dumps(TAXONOMY))
    assert main(["data", "check", "--taxonomy", str(tax), "--questions", str(tmp_path / "q.jsonl")]) == 1
    assert "error: " in capsys.readouterr().out


def test_entry_point(reference_data):
    done = subprocess.run(
        [str(HIERTRAIN), "data", "check", "--taxonomy", tax_file(reference_data, "imagenet_artifact")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert "has 2 parents: 'implement' (leaf 'racket') and 'equipment' (leaf 'parallel bars')" in done.stdout


def test_what_the_loader_refuses_is_a_problem_here(tmp_path, capsys):
    """Issue 22 item 18: a repeated record, options equal but for case/spaces, an empty image
    field: `data check` lists each with its line(s), and the question loader refuses the file."""
    from hiertrain.base.errors import HierError
    from hiertrain.taxonomy.question_bank import read_questions

    tax = tmp_path / "tax.json"
    tax.write_text(json.dumps(TAXONOMY))
    good = json.loads(LINES[0])
    lines = [
        good,  # 1
        dict(good, image="b.jpg"),  # 2
        good,  # 3: line 1 again
        dict(good, image="c.jpg", choices_level1=["procellariiformes", "Procellariiformes "]),  # 4
        dict(good, image=""),  # 5
        dict(good, image="b.jpg", split="train"),  # 6: line 2's image again
    ]
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(HierError) as err:
        read_questions(questions)
    assert str(err.value) == f"{questions}:3: record '0.jpg' repeats line 1 (one record per image: it would be scored twice)"

    assert main(["data", "check", "--taxonomy", str(tax), "--questions", str(questions), "--json"]) == 1
    q = json.loads(capsys.readouterr().out)["questions"]
    assert q["records"] == 6 and q["problems"] == 4
    assert q["by_kind"] == {"repeated record": 2, "duplicate options": 1, "malformed record": 1}
    assert q["listed"] == [
        f"{questions}:3: record '0.jpg' repeats line 1 (one record per image: it would be scored twice)",
        f"{questions}:4: 'choices_level1' repeats an option after normalisation (case, spaces, -/_): "
        "['Procellariiformes ', 'procellariiformes']",
        f"{questions}:5: empty 'image' field (a record names its image file)",
        f"{questions}:6: record 'b.jpg' repeats line 2 (one record per image: it would be scored twice)",
    ]
    for bad in lines[3:5]:  # each alone is refused at load as well, naming its line
        questions.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(HierError, match=rf"^{questions}:2: "):
            read_questions(questions)


def test_streamed_check_equals_the_whole_file_check(tmp_path, monkeypatch):
    # issue 24: a plain bank is checked line by line (counters and problem lines only); the
    # report equals the whole-file reader's (`_check_whole`, the former code path) on banks
    # with every kind of problem, image-list lines, CRLF, no final newline and a lone CR.
    from hiertrain.cli.commands import data_check
    from hiertrain.taxonomy.taxonomy import Taxonomy

    tax_path = tmp_path / "tax.json"
    tax_path.write_text(json.dumps(TAXONOMY))
    taxonomy = Taxonomy.from_json(tax_path)
    image_line = json.dumps({"image": "y.jpg", "label": "Laysan Albatross", "split": "train"})
    banks = {
        "clean": LINES[0] + "\n" + LINES[0] + "\n",
        "problems": "\n".join(LINES) + "\n",
        "mixed": "\r\n".join([*LINES, image_line, "", "[1]"]),
        "lone_cr": LINES[0] + "\r" + LINES[2] + "\n",
    }
    whole = data_check._check_whole
    for name, text in banks.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(text.encode("utf-8"))
        expected = whole(taxonomy, path)
        calls = []
        monkeypatch.setattr(data_check, "_check_whole", lambda *a: calls.append(a) or whole(*a))
        got = data_check.check_questions(taxonomy, path)
        monkeypatch.undo()
        assert (got.records, got.splits, got.kinds, got.lines) == (expected.records, expected.splits, expected.kinds, expected.lines)
        assert bool(calls) == (name == "lone_cr")  # only the lone CR needs the whole-file reader
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(LINES[0].encode() + b"\n{oops\n\xff\n")
    with pytest.raises(HierError) as streamed:
        data_check.check_questions(taxonomy, bad)
    with pytest.raises(HierError) as old:
        whole(taxonomy, bad)
    assert str(streamed.value) == str(old.value) and "not UTF-8" in str(old.value)
