"""The streaming columnar reader and the pattern bootstrap against the reference code paths.

The reference: `read_predictions` + `to_tensors` + `chance_levels` + the dense bootstrap
(`resample_counts` x `replicate_values`), all over `SamplePrediction` objects.
"""

from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from hiertrain.metrics import columnar
from hiertrain.metrics.bootstrap import (
    RATIO_METRICS,
    pattern_replicate_values,
    percentile_interval,
    replicate_values,
    resample_counts,
    sample_terms,
)
from hiertrain.metrics.chance import chance_levels
from hiertrain.base.errors import HierError
from hiertrain.metrics.functional import RATIO_SCALE, hierarchical_scores
from hiertrain.metrics.predictions import read_predictions, to_tensors


def _line(i: int, rng: random.Random) -> str:
    """A varied sample: 1-7 levels, gaps, unasked levels, unparsed answers, text mode, open-set."""
    depth = rng.randint(1, 7)
    levels = []
    for k in range(1, depth + 1):
        if depth > 2 and k == 2 and rng.random() < 0.1:
            continue  # a gap
        asked = rng.random() < 0.93
        letter = None if rng.random() < 0.05 else "A"
        open_set = rng.random() < 0.03
        level = {"level": k, "name": f"rank{k}" if rng.random() < 0.9 else None, "truth": f"t{k}",
                 "options": [] if open_set else ["a", "b", "c", "d"][: rng.randint(1, 4)], "reply": "A",
                 "letter": letter, "predicted": None, "correct": letter is not None and rng.random() < 0.6,
                 "asked": asked}  # fmt: skip
        if open_set:
            level["detail"] = {"candidates": rng.randint(2, 50)}
        levels.append(level)
    rng.shuffle(levels)  # the reader sorts them
    mode = "text" if rng.random() < 0.2 else "image"
    return json.dumps({"id": i, "image": f"{i}.jpg", "label": "x", "split": "test", "mode": mode, "levels": levels}) + "\n"


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("columnar") / "predictions.jsonl"
    order = list(range(100_000))
    rng.shuffle(order)  # written out of id order: both readers sort by id
    path.write_text("".join(_line(i, rng) for i in order), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(big_file: Path):
    """The reference path on the 100k file, once: SamplePrediction objects, then `to_tensors`'
    per-element loop (~6 s each on the 2-core machine: most of this file's time)."""
    samples = read_predictions(big_file).samples
    return samples, to_tensors(samples)


@pytest.mark.parametrize("fast", [True, False], ids=["msgspec-if-installed", "stdlib-json"])
@pytest.mark.slow
def test_100k_records_old_and_new_paths_agree(big_file: Path, reference, fast: bool, monkeypatch) -> None:
    if not fast:
        monkeypatch.setattr(columnar, "_decoder", lambda: None)
    samples, old = reference
    columns = columnar.read_columns(big_file)
    assert columns.ids.tolist() == [s.id for s in samples]
    new = columns.tensors()
    for a, b in zip(old, new):
        assert torch.equal(a, b)
    assert columns.chance(old[1].shape[1], {3}) == chance_levels(samples, old[1].shape[1], {3})
    assert columns.chance(old[1].shape[1]) == chance_levels(samples, old[1].shape[1])
    assert columns.modes == {"image", "text"}
    names = [None] * old[1].shape[1]
    for s in samples:
        for lv in s.levels:
            names[lv.level - 1] = names[lv.level - 1] or lv.name
    assert columns.names == names
    want, got, grouped = hierarchical_scores(*old), hierarchical_scores(*new), columnar.grouped_scores(*new)
    for key in want:
        assert torch.equal(want[key].nan_to_num(-1), got[key].nan_to_num(-1)), key
        assert want[key].shape == grouped[key].shape and torch.equal(want[key].nan_to_num(-1), grouped[key].nan_to_num(-1)), key


def test_bootstrap_patterns_match_dense_resampling(big_file: Path) -> None:
    """The same draws: count metrics bit for bit; ratio metrics within the dense sum's rounding."""
    correct, asked, parsed = columnar.read_columns(big_file).tensors()
    n_boot = 12
    dense = replicate_values(sample_terms(correct, asked, parsed), resample_counts(correct.shape[0], n_boot, 7))
    streamed = pattern_replicate_values(correct, asked, parsed, n_boot, 7)
    for name in dense:
        a, b = dense[name].nan_to_num(-1), streamed[name].nan_to_num(-1)
        if name in RATIO_METRICS:
            assert torch.allclose(a, b, rtol=0, atol=1e-12), name
        else:
            assert torch.equal(a, b), name
        assert (percentile_interval(dense[name], 0.95)[0] - percentile_interval(streamed[name], 0.95)[0]).abs().max() < 1e-12


def test_bootstrap_blocks_do_not_change_replicates(big_file: Path, monkeypatch) -> None:
    correct, asked, parsed = columnar.read_columns(big_file).tensors()
    one = pattern_replicate_values(correct, asked, parsed, 9, 3)
    import hiertrain.metrics.bootstrap as bootstrap

    monkeypatch.setattr(bootstrap, "_DRAWS", correct.shape[0] * 2)  # blocks of 2 replicates
    two = pattern_replicate_values(correct, asked, parsed, 9, 3)
    assert all(torch.equal(one[k].nan_to_num(-1), two[k].nan_to_num(-1)) for k in one)


def test_ratio_replicates_are_the_correctly_rounded_exact_value() -> None:
    gen = torch.Generator().manual_seed(2)
    correct = torch.rand(300, 5, generator=gen) < 0.6
    asked = torch.rand(300, 5, generator=gen) < 0.8
    values = pattern_replicate_values(correct, asked, None, 5, 1)
    counts = resample_counts(300, 5, 1).to(torch.long)
    from hiertrain.metrics import functional as F

    hit, a, _ = F.prepare(correct, asked)
    num, den = F.point_overlap_update(hit[None], a[None])
    for r in range(5):
        exact = Fraction(int((counts[r] * num).sum()), int((counts[r] * den).sum()) * RATIO_SCALE)
        assert values["point_overlap"][r, 0].item() == float(exact)


BAD = {
    "blank": '{"id": 0, "levels": []}\n\n',
    "not_json": '{"id": 0, "levels": []}\n{"id": 1,\n',
    "dup_id": '{"id": 0, "levels": []}\n{"id": 0, "levels": []}\n',
    "missing": '{"id": 0, "levels": [{"level": 1, "truth": "a", "asked": true}]}\n',
    "bool_level": '{"id": 0, "levels": [{"level": true, "truth": "a", "asked": true, "correct": false}]}\n',
    "float_id": '{"id": 1.0, "levels": []}\n',
    "correct_unparsed": '{"id": 0, "levels": [{"level": 1, "truth": "a", "asked": true, "correct": true}]}\n',
    "twice": '{"id": 0, "levels": [{"level": 1, "truth": "a", "asked": false, "correct": false}, {"level": 1, "truth": "a", "asked": false, "correct": false}]}\n',
    "mode": '{"id": 0, "mode": null, "levels": []}\n',
    "object": '{\n  "hca": 0.5\n}\n',
    "deep": '{"id": 4, "levels": [{"level": 30, "truth": "a", "asked": false, "correct": false}]}\n',
    "not_utf8": b'{"id": 0, "levels": [], "label": "\xff"}\n',
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_get_the_reference_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / "p.jsonl"
    content = BAD[name]
    path.write_bytes(content if isinstance(content, bytes) else content.encode())

    def outcome(read):
        try:
            return "ok", read()
        except HierError as err:
            return "error", str(err)

    ref = outcome(lambda: to_tensors(read_predictions(path).samples))
    new = outcome(lambda: columnar.read_columns(path).tensors())
    assert ref[0] == new[0] == "error", (ref, new)
    assert ref[1] == new[1]


def test_cut_off_last_line_is_left_out_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1, "levels": []}\n{"id": 0, "levels": [{"lev', encoding="utf-8")
    columns = columnar.read_columns(path)
    assert columns.truncated_line == read_predictions(path).truncated_line == 2
    assert columns.ids.tolist() == [1]


def test_paper_results_read_through_the_reference(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    item = {"ground_truth_level1": "a", "predicted_level1": "a", "choices_level1": {"A": "a", "B": "b"},
            "ground_truth_level2": "b", "predicted_level2": "Unknown", "choices_level2": {"A": "b", "B": "c"}}  # fmt: skip
    path.write_text(json.dumps([item, item]), encoding="utf-8")
    for a, b in zip(to_tensors(read_predictions(path).samples), columnar.read_columns(path).tensors()):
        assert torch.equal(a, b)
    assert columnar.read_columns(path).format == "paper"


def test_depth_limit_is_the_functional_cores() -> None:
    from hiertrain.metrics.functional import MAX_DEPTH

    assert columnar.MAX_DEPTH == MAX_DEPTH


@pytest.mark.slow
def test_paired_comparison_matches_the_dense_reference(big_file: Path) -> None:
    """B = A with some answers flipped; the paired replicates against the dense form's."""
    from hiertrain.metrics.paired import paired_comparison

    a = columnar.read_columns(big_file).tensors()
    gen = torch.Generator().manual_seed(5)
    flip = torch.rand(a[0].shape, generator=gen) < 0.1
    b = (a[0] ^ flip, a[1], a[2])
    result = paired_comparison(a, b, n_boot=8, seed=4)
    terms_a, terms_b = sample_terms(*a), sample_terms(*b)
    counts = resample_counts(a[0].shape[0], 8, 4)
    reps_a, reps_b = replicate_values(terms_a, counts), replicate_values(terms_b, counts)
    ones = torch.ones(1, a[0].shape[0], dtype=torch.float64)
    point_a = replicate_values(terms_a, ones)
    for name in ("hca", "leaf_accuracy", "top_overlap"):
        low, high = percentile_interval(reps_b[name] - reps_a[name], 0.95)
        got = result["metrics"][name]
        assert got["interval"] == pytest.approx([low[0].item(), high[0].item()], abs=1e-12)
        assert got["a"] == pytest.approx(point_a[name][0, 0].item(), abs=1e-12)
        if name != "top_overlap":
            assert got["interval"] == [low[0].item(), high[0].item()]  # counts: bit for bit
            right_a, right_b = terms_a.num[name][:, 0] > 0, terms_b.num[name][:, 0] > 0
            assert got["mcnemar"]["a_only"] == int((right_a & ~right_b & (terms_a.den[name][:, 0] > 0)).sum())


# ---------------------------------------------------------------- with a taxonomy: placement codes


def _tree(rng: random.Random):
    """A 4-level taxonomy, level 1 with 3 nodes (a forest), 2-3 children a node."""
    from hiertrain.taxonomy.taxonomy import Taxonomy

    paths, frontier = {}, [(f"n1_{i}",) for i in range(3)]
    for depth in range(2, 5):
        frontier = [p + (f"n{depth}_{len(p)}{p[-1][3:]}_{c}",) for p in frontier for c in range(rng.randint(2, 3))]
    for p in frontier:
        paths[p[-1]] = p
    return Taxonomy.from_paths(paths), frontier


def _placed_line(i: int, rng: random.Random, leaves: list, tree) -> str:
    """Picks drawn from each level's nodes (right about half the time), plus unparsed answers,
    open-set misses, a pick that is no node, gaps, text-mode leaves; levels shuffled."""
    path = rng.choice(leaves)
    mode = "text" if rng.random() < 0.2 else "image"
    levels = []
    for k, truth in enumerate(path, start=1):
        if k == 2 and rng.random() < 0.1:
            continue  # a gap
        asked = not (mode == "text" and k == len(path)) and rng.random() < 0.95
        nodes = tree.nodes_at(k - 1)
        roll = rng.random()
        pick = None if roll < 0.05 else "zebra" if roll < 0.08 else truth if roll < 0.55 else rng.choice(nodes)
        pick = pick.upper() if pick and rng.random() < 0.1 else pick  # names match after normalize_label
        level = {"level": k, "name": f"rank{k}", "truth": truth, "options": nodes[:3], "reply": "A",
                 "letter": None if pick is None else "A", "predicted": pick,
                 "correct": pick is not None and pick.lower() == truth.lower(), "asked": asked}  # fmt: skip
        levels.append(level)
    rng.shuffle(levels)
    if i % 97 == 0:
        levels[0]["options"] = "abc"  # a line only the reference reader takes (msgspec and the fast json path refuse it)
    return json.dumps({"id": i, "label": path[-1], "mode": mode, "levels": levels}) + "\n"


@pytest.fixture(scope="module")
def placed_file(tmp_path_factory):
    rng = random.Random(3)
    tree, leaves = _tree(rng)
    path = tmp_path_factory.mktemp("placed") / "predictions.jsonl"
    order = list(range(3001))
    rng.shuffle(order)
    path.write_text("".join(_placed_line(i, rng, leaves, tree) for i in order), encoding="utf-8")
    return path, tree


@pytest.mark.parametrize("fast", [True, False], ids=["msgspec-if-installed", "stdlib-json"])
def test_placement_codes_and_taxonomy_scores_match_the_reference(placed_file, fast: bool, monkeypatch) -> None:
    """Streaming reader with a taxonomy == read_predictions + placement_tensors + the functional core."""
    from hiertrain.metrics.functional import taxonomy_scores
    from hiertrain.metrics.placement import placement_tensors

    if not fast:
        monkeypatch.setattr(columnar, "_decoder", lambda: None)
    path, tree = placed_file
    samples = read_predictions(path).samples
    old, old_codes = to_tensors(samples), placement_tensors(samples, tree)
    columns = columnar.read_columns(path, taxonomy=tree)
    new, new_codes = columns.tensors(), columns.placement()
    for a, b in zip(old + old_codes, new + new_codes):
        assert a.dtype == b.dtype and torch.equal(a, b)
    want = {**hierarchical_scores(*old), **taxonomy_scores(*old, *old_codes)}
    got = columnar.grouped_scores(*new, *new_codes)
    assert set(got) == set(want)
    for key in want:
        assert want[key].shape == got[key].shape and torch.equal(want[key].nan_to_num(-1), got[key].nan_to_num(-1)), key
    assert 0 < float(got["path_consistency"]) < 1 and int(got["mistakes_unplaced"]) > 0  # the file has both kinds
    assert columnar.read_columns(path).lca is None  # no taxonomy: no codes


def test_taxonomy_bootstrap_replicates_are_the_resampled_scores(placed_file) -> None:
    """Each pattern replicate of the taxonomy measures equals `taxonomy_scores` on the resampled
    images themselves (the same seeded draws), bit for bit."""
    from hiertrain.metrics.functional import taxonomy_scores

    path, tree = placed_file
    columns = columnar.read_columns(path, taxonomy=tree)
    (correct, asked, parsed), (lca, links) = columns.tensors(), columns.placement()
    n_boot = 4
    reps = pattern_replicate_values(correct, asked, parsed, n_boot, 11, lca, links)
    counts = resample_counts(correct.shape[0], n_boot, 11).to(torch.long)
    for r in range(n_boot):
        rows = torch.repeat_interleave(torch.arange(correct.shape[0]), counts[r])
        direct = taxonomy_scores(correct[rows], asked[rows], parsed[rows], lca[rows], links[rows])
        for name in ("path_consistency", "mistake_lca_depth", "mistake_distance", "mistake_lca_depth_per_level"):
            assert torch.equal(reps[name][r].nan_to_num(-1), direct[name].reshape(-1).nan_to_num(-1)), name


def test_truth_outside_the_taxonomy_names_file_and_line(placed_file, tmp_path) -> None:
    path, tree = placed_file
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    obj = json.loads(lines[4])
    obj["levels"][0]["truth"] = "nowhere"
    lines[4] = json.dumps(obj) + "\n"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(HierError, match=rf"^{bad}:5: sample {obj['id']} level {obj['levels'][0]['level']}: truth 'nowhere'"):
        columnar.read_columns(bad, taxonomy=tree)
