"""`hiertrain score` against hand computations, in both file formats."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hiertrain.cli.main import main

HIERTRAIN = Path(sys.executable).with_name("hiertrain")


def _lv(n, name, truth, predicted, asked=True):
    """A level answered with `predicted` (None = unparseable)."""
    return {
        "level": n, "name": name, "truth": truth, "options": [truth, "decoy"],
        "reply": "??" if predicted is None else "A", "letter": None if predicted is None else "A",
        "predicted": predicted, "correct": predicted == truth, "asked": asked,
    }


def _sample(i, levels):
    names = ["order", "family", "genus", "species"]
    return {
        "id": i, "image": f"{i}.jpg", "label": "x", "split": "test", "mode": "image",
        "levels": [_lv(n + 1, names[n], t, p) for n, (t, p) in enumerate(levels)],
    }


# Written by hand. Per-sample right/asked, "." = level not in the path, U = unparseable:
#   s0 depth 4: R R R R     s1 depth 3: R R W .     s2 depth 4: R R W R     s3 depth 2: U R . .
SAMPLES = [
    _sample(0, [("O1", "O1"), ("F1", "F1"), ("G1", "G1"), ("S1", "S1")]),
    _sample(1, [("O1", "O1"), ("F1", "F1"), ("G2", "G9")]),
    _sample(2, [("O2", "O2"), ("F3", "F3"), ("G3", "decoy"), ("S3", "S3")]),
    _sample(3, [("O2", None), ("F4", "F4")]),
]
HAND = {
    "hca": 1 / 4,  # s0 only
    "leaf_accuracy": 3 / 4,  # s1's leaf (level 3) is wrong
    "point_overlap": 35 / 48,  # (4/4 + 2/3 + 3/4 + 1/2) / 4 = (35/12) / 4
    "strict_point_overlap": 13 / 24,  # (4/4 + 2/3 + 2/4 + 0/2) / 4
    "top_overlap": 11 / 24,  # (3/3 + 1/2 + 1/3 + 0/1) / 4
    "hierarchical_f1": 0.8,  # 10 right, 12 predicted, 13 asked: 20 / 25
    "unparseable_rate": 1 / 13,
    "per_level_accuracy": [3 / 4, 4 / 4, 1 / 3, 2 / 2],
}


def _write_jsonl(path: Path, samples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    return path


def _score_json(capsys, *argv: str) -> dict:
    assert main(["score", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _assert_close(got: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_score_jsonl_matches_hand(tmp_path, capsys):
    got = _score_json(capsys, str(_write_jsonl(tmp_path / "p.jsonl", SAMPLES)))
    _assert_close(got, HAND)
    assert got["num_samples"] == 4 and got["format"] == "jsonl" and got["truncated_line"] is None
    assert got["level_names"] == ["order", "family", "genus", "species"]
    assert got["level_asked"] == [4, 4, 3, 2]


def test_score_table_and_truncated_line(tmp_path, capsys):
    path = _write_jsonl(tmp_path / "p.jsonl", SAMPLES)
    path.write_text(path.read_text() + '{"id": 4, "levels": [{"lev')
    assert main(["score", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cut-off line 5 ignored" in out and "4 samples" in out
    assert re.search(r"^hierarchical consistent accuracy +25\.00%  \[\d+\.\d\d, \d+\.\d\d\]$", out, re.M)
    assert re.search(r"^unparseable answers +7\.69%$", out, re.M)  # 1/13
    assert re.search(r"^3 +genus +3 +33\.33%  \[\d+\.\d\d, \d+\.\d\d\]$", out, re.M)


def test_ignore_level(tmp_path, capsys):
    # Without level 1: s0 RRR, s1 RW, s2 RWR, s3 R -> HCA 2/4, POR (1 + 1/2 + 2/3 + 1) / 4.
    got = _score_json(capsys, str(_write_jsonl(tmp_path / "p.jsonl", SAMPLES)), "--ignore-level", "1")
    _assert_close(got, {"hca": 2 / 4, "point_overlap": (1 + 1 / 2 + 2 / 3 + 1) / 4, "unparseable_rate": 0.0})
    assert got["per_level_accuracy"][0] is None


def _paper_level(item: dict, n: int, truth: str, predicted: str) -> None:
    item[f"ground_truth_level{n}"] = truth
    item[f"prediction_level{n}"] = "A"
    item[f"predicted_level{n}_letter"] = "Unknown" if predicted in ("Unknown", "Error") else "A"
    item[f"predicted_level{n}"] = predicted
    item[f"choices_level{n}"] = {"A": predicted, "B": truth}


def test_score_paper_format_with_level10(tmp_path, capsys):
    # Record A, 10 levels: 1-8 right, 9 "Unknown", 10 wrong. Keys written level1, level10, level2, ...
    a = {"image": "a.jpg", "label": "n10"}
    for n in sorted(range(1, 11), key=str):
        _paper_level(a, n, f"N{n}", {9: "Unknown", 10: "wrong"}.get(n, f"n{n}"))
    # Record B, 3 levels: level 1 right up to case/hyphens, level 2 "Error", level 3 right.
    b = {"image": "b.jpg", "label": "Black-footed Albatross"}
    _paper_level(b, 1, "Black-footed Albatross", "black footed  albatross")
    _paper_level(b, 2, "Diomedeidae", "Error")
    _paper_level(b, 3, "Phoebastria", "Phoebastria")
    path = tmp_path / "results.json"
    path.write_text(json.dumps([a, b], indent=4))
    got = _score_json(capsys, str(path))
    _assert_close(
        got,
        {
            "hca": 0.0,
            "leaf_accuracy": 1 / 2,  # A's level 10 wrong, B's level 3 right
            "point_overlap": (8 / 10 + 2 / 3) / 2,
            "strict_point_overlap": (8 / 10 + 1 / 3) / 2,  # numeric order: the prefix stops at level 9
            "top_overlap": (7 / 9 + 0 / 2) / 2,
            "hierarchical_f1": 20 / 24,  # 10 right, 11 predicted, 13 asked
            "unparseable_rate": 2 / 13,
            "per_level_accuracy": [1, 1 / 2, 1, 1, 1, 1, 1, 1, 0, 0],
        },
    )
    assert got["format"] == "paper" and got["level_names"][9] == "level10"


def test_score_paper_text_mode(tmp_path, capsys):
    # 4 levels: right, wrong, right, and the leaf answered with the label (the paper's text files).
    item = {"image": "a.jpg", "label": "S1"}
    for n, (truth, pred) in enumerate([("O1", "O1"), ("F1", "F2"), ("G1", "G1"), ("S1", "S1")], start=1):
        _paper_level(item, n, truth, pred)
    path = tmp_path / "text.json"
    path.write_text(json.dumps([item]))
    as_image = _score_json(capsys, str(path))
    as_text = _score_json(capsys, str(path), "--mode", "text")
    _assert_close(as_image, {"point_overlap": 3 / 4, "strict_point_overlap": 1 / 4, "top_overlap": 1 / 3, "leaf_accuracy": 1.0})
    _assert_close(as_text, {"point_overlap": 2 / 3, "strict_point_overlap": 1 / 3, "top_overlap": 0.0, "leaf_accuracy": 1.0})
    assert as_text["level_asked"] == [1, 1, 1, 0]


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["score", str(tmp_path / "missing.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hiertrain: ") and "missing.jsonl: cannot read" in err and err.count("\n") == 1
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["score", str(empty)]) == 2
    assert "no predictions in the file" in capsys.readouterr().err
    deep = _sample(9, [("O1", "O1")])
    deep["levels"][0]["level"] = 21
    assert main(["score", str(_write_jsonl(tmp_path / "deep.jsonl", [deep]))]) == 2
    err = capsys.readouterr().err
    assert "deep.jsonl: sample 9: level 21 is deeper than the 20 levels supported" in err and err.count("\n") == 1


def test_entry_point_exit_code(tmp_path):
    """The console script passes run()'s status through: a bad file is rc 2 with one stderr line.

    (Full scoring runs through `main` above; a bad file fails before torch is imported, so this
    subprocess stays cheap.)
    """
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(SAMPLES[0]) + "\n{oops\n" + json.dumps(SAMPLES[1]) + "\n")
    proc = subprocess.run([str(HIERTRAIN), "score", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"hiertrain: {path}:2: not valid JSON (Expecting property name enclosed in double quotes)\n"


def test_score_intervals_and_chance(tmp_path, capsys):
    path = str(_write_jsonl(tmp_path / "p.jsonl", SAMPLES))
    got = _score_json(capsys, path, "--bootstrap", "300", "--ci", "0.9")
    again = _score_json(capsys, path, "--bootstrap", "300", "--ci", "0.9")
    assert got["intervals"] == again["intervals"]  # seeded
    assert got["intervals"]["bootstrap"] == 300 and got["intervals"]["ci"] == 0.9
    low, high = got["intervals"]["hca"]
    assert 0 <= low <= HAND["hca"] <= high <= 1
    assert len(got["intervals"]["per_level_accuracy"]) == 4
    # every level shows 2 options: 1/2 a level; HCA = mean of (1/16, 1/8, 1/16, 1/4) by hand
    assert got["chance"]["per_level_accuracy"] == [0.5] * 4
    assert got["chance"]["hca"] == pytest.approx(0.125)
    assert got["chance"]["leaf_accuracy"] == pytest.approx(0.5)
    none = _score_json(capsys, path, "--bootstrap", "0")
    assert "hca" not in none["intervals"]
    assert main(["score", path, "--ci", "2"]) == 2


# ---- --protocol paper: the paper's utils/metric.py, computed by hand on SAMPLES -----------------


def test_protocol_paper_keeps_level_1_with_cub(tmp_path, capsys):
    # The same paths as HAND; TOR also equal (no one-level path), the leaf is each path's last element.
    got = _score_json(capsys, str(_write_jsonl(tmp_path / "p.jsonl", SAMPLES)), "--protocol", "paper", "--cub")
    _assert_close(got, {k: HAND[k] for k in ("hca", "leaf_accuracy", "point_overlap", "strict_point_overlap",
                                             "top_overlap", "unparseable_rate", "per_level_accuracy")})  # fmt: skip
    assert got["protocol"] == "paper" and got["cub"] is True and got["num_scored"] == 4
    assert got["level_names"] == ["order", "family", "genus", "species"] and got["hierarchical_f1"] is None


def test_protocol_paper_drops_level_1(tmp_path, capsys):
    # From level 2: s0 [R R R], s1 [R W], s2 [R W R], s3 [R] (its unparseable level 1 is dropped).
    got = _score_json(capsys, str(_write_jsonl(tmp_path / "p.jsonl", SAMPLES)), "--protocol", "paper")
    _assert_close(
        got,
        {
            "hca": 2 / 4,  # s0 and s3
            "point_overlap": (1 + 1 / 2 + 2 / 3 + 1) / 4,
            "strict_point_overlap": (1 + 1 / 2 + 1 / 3 + 1) / 4,
            "top_overlap": (1 + 0 + 0 + 0) / 4,  # s3 has one level: 0, counted (hiertrain leaves it out)
            "leaf_accuracy": 3 / 4,
            "unparseable_rate": 0.0,
            "per_level_accuracy": [4 / 4, 1 / 3, 2 / 2],
        },
    )
    assert got["level_names"] == ["family", "genus", "species"] and got["level_asked"] == [4, 3, 2]
    assert main(["score", str(tmp_path / "p.jsonl"), "--protocol", "paper"]) == 0
    out = capsys.readouterr().out
    assert "level 1 dropped" in out and re.search(r"^hierarchical consistent accuracy +50\.0000%$", out, re.M)
    assert re.search(r"^3 +genus +3 +33\.33%$", out, re.M)


def test_protocol_paper_compares_lower_case_only(tmp_path, capsys):
    # The paper's script lower-cases; it does not fold hyphens or spaces as hiertrain's reader does.
    item = {"image": "b.jpg", "label": "Black-footed Albatross"}
    _paper_level(item, 1, "Black-footed Albatross", "black footed albatross")
    _paper_level(item, 2, "Diomedeidae", "DIOMEDEIDAE")
    path = tmp_path / "results.json"
    path.write_text(json.dumps([item]))
    assert _score_json(capsys, str(path))["per_level_accuracy"] == [1.0, 1.0]
    assert _score_json(capsys, str(path), "--protocol", "paper", "--cub")["per_level_accuracy"] == [0.0, 1.0]


def test_text_mode_leaf_under_each_protocol(tmp_path, capsys):
    # Text mode: order right, family wrong, genus right asked; the species is named, not asked.
    sample = _sample(0, [("O1", "O1"), ("F1", "F2"), ("G1", "G1"), ("S1", "S1")])
    sample["mode"], sample["label"] = "text", "S1"
    sample["levels"][3].update(asked=False, reply=None, letter=None, predicted=None, correct=False)
    path = _write_jsonl(tmp_path / "t.jsonl", [sample])
    ours = _score_json(capsys, str(path))
    assert ours["leaf_label"] == "deepest asked level" and ours["leaf_accuracy"] == 1.0  # the genus
    assert ours["per_level_accuracy"][3] is None
    paper = _score_json(capsys, str(path), "--protocol", "paper", "--cub")
    assert paper["per_level_accuracy"] == [1.0, 0.0, 1.0, 1.0]  # the paper fills the leaf in with the label
    assert paper["leaf_label"].startswith("leaf (named in the question")
    assert main(["score", str(path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^deepest asked level accuracy +100\.00%  \[[\d.]+, [\d.]+\]$", out, re.M) and "leaf accuracy" not in out


def test_one_level_file_scores_in_table_and_json(tmp_path, capsys):
    path = _write_jsonl(tmp_path / "one.jsonl", [_sample(0, [("O1", "O1")]), _sample(1, [("O1", "O2")])])
    got = _score_json(capsys, str(path))
    assert got["per_level_accuracy"] == [0.5] and got["hca"] == 0.5 and got["top_overlap"] is None
    assert main(["score", str(path)]) == 0
    assert re.search(r"^1 +order +2 +50\.00%  \[[\d.]+, [\d.]+\]$", capsys.readouterr().out, re.M)
    assert _score_json(capsys, str(path), "--protocol", "paper", "--cub")["per_level_accuracy"] == [0.5]
    assert main(["score", str(path), "--protocol", "paper"]) == 2  # nothing left once level 1 is dropped
    assert "pass --cub" in capsys.readouterr().err


def test_cub_flag_needs_the_paper_protocol(tmp_path, capsys):
    assert main(["score", str(_write_jsonl(tmp_path / "p.jsonl", SAMPLES)), "--cub"]) == 2
    assert "--cub only applies with --protocol paper" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, content",
    [
        ("run.json", json.dumps({"kind": "eval", "model": "m", "mode": "image"}, indent=2) + "\n"),
        ("metrics.json", json.dumps({"hca": 0.25, "per_level_accuracy": [0.5]}, indent=2) + "\n"),
        ("foo.json", '[{"foo": 1}]'),
        ("image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"),
    ],
    ids=["run.json", "metrics.json", "foo-list", "png"],
)
def test_non_prediction_inputs_are_one_line(tmp_path, capsys, name, content):
    # issue 11 case 8: "not valid JSON" for run.json/metrics.json; TypeError / UnicodeDecodeError before
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["score", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hiertrain: {path}") and err.count("\n") == 1
    assert "give a run's predictions.jsonl" in err


@pytest.mark.slow
def test_broken_pipe_ends_quietly(tmp_path):
    # issue 11: `hiertrain score x | head -1` must not print a BrokenPipeError traceback
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in SAMPLES))
    # `true` exits at once, so the reader is gone before hiertrain prints: a certain EPIPE
    proc = subprocess.run(f"'{HIERTRAIN}' score '{path}' --json | true", shell=True, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0  # the pipeline's status is `true`'s; stderr is what matters
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_score_with_taxonomy_shows_severity_and_path_consistency(tmp_path, capsys):
    """The toy of tests/metrics/test_placement.py (values worked out there) through `score --taxonomy`."""
    from hiertrain.metrics.predictions import write_predictions
    from severity_toy import HAND as SEVERITY, PREDS, TOY

    preds = tmp_path / "p.jsonl"
    write_predictions(PREDS, preds)
    taxonomy = TOY.to_json(tmp_path / "toy.json")
    got = _score_json(capsys, str(preds), "--taxonomy", str(taxonomy), "--bootstrap", "50")
    assert {k: got[k] for k in SEVERITY} == SEVERITY
    assert got["taxonomy"] == str(taxonomy) and "taxonomy_note" not in got
    assert got["hierarchical_precision"] == pytest.approx(8 / 17) and got["hierarchical_recall"] == pytest.approx(8 / 18)
    assert got["conditional_accuracy"] == [None, 0.5, 0.5]
    for key in ("path_consistency", "mistake_lca_depth", "mistake_distance", "hierarchical_precision"):
        low, high = got["intervals"][key]
        assert low <= got[key] <= high, key
    assert len(got["intervals"]["mistake_distance_per_level"]) == 3

    assert main(["score", str(preds), "--taxonomy", str(taxonomy), "--bootstrap", "0"]) == 0
    table = capsys.readouterr().out
    assert re.search(r"path consistency of the picks\s+50\.00%", table)
    assert re.search(r"mean LCA depth of wrong picks \(levels shared\)\s+0\.62", table)  # 5/8 = 0.625
    assert re.search(r"mean tree distance of wrong picks \(edges\)\s+3\.25", table)
    assert "  LCA depth 0: 4" in table and "  LCA depth 2: 1" in table
    assert "no taxonomy node (unparseable / not a node): 2" in table

    # without the taxonomy: said so, nothing guessed
    plain = _score_json(capsys, str(preds), "--bootstrap", "0")
    assert "path_consistency" not in plain and "mistake_severity" not in plain and plain["taxonomy"] is None
    assert "no taxonomy given" in plain["taxonomy_note"]
    assert plain["conditional_accuracy"] == [None, 0.5, 0.5]  # needs no taxonomy


def test_score_taxonomy_that_does_not_fit_is_one_line(tmp_path, capsys):
    from hiertrain.metrics.predictions import write_predictions
    from hiertrain.taxonomy.taxonomy import Taxonomy
    from severity_toy import PREDS

    write_predictions(PREDS, tmp_path / "p.jsonl")
    other = Taxonomy.from_paths({"a": ("A", "A1", "a")}).to_json(tmp_path / "other.json")
    assert main(["score", str(tmp_path / "p.jsonl"), "--taxonomy", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(r"p\.jsonl:\d+: sample \d+ level \d: truth '\w+' is not a level-\d node", err)


def test_taxonomy_flags_outside_their_protocol_are_one_line(tmp_path, capsys):
    preds = _write_jsonl(tmp_path / "p.jsonl", SAMPLES)
    assert main(["score", str(preds), "--protocol", "paper", "--taxonomy", str(tmp_path / "t.json")]) == 2
    assert "--taxonomy does not apply to --protocol paper" in capsys.readouterr().err
    assert main(["score", str(preds), "--drop-trivial-levels"]) == 2
    assert "--drop-trivial-levels only applies with --taxonomy" in capsys.readouterr().err
