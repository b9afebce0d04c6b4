"""Metric harness in the manner of torchmetrics' `MetricTester`: class vs functional vs reference.

For random cases (several seeds; depths 1 to 7; samples with nothing asked, unasked gaps inside a
path, unparseable answers flagged "correct", padding copies flagged ``valid=False``):

- the metric classes (`hierarchical_metrics`, `ProbeAccuracy`), fed batch by batch (batches of
  different widths, an empty batch),
- the functional core (`hiertrain.metrics.functional`) on the concatenation of all batches,
- a plain-Python reference written from the definitions (paper arXiv 2505.24840 and
  docs/ARCHITECTURE.md, "metrics.py"; the severity and path measures from docs/evaluation.md),
  in exact fractions, on the valid rows only,

must agree: class and functional bit for bit, both with the reference to 1e-12. With DDP on,
the same cases run once per module in two real processes (CPU, gloo) with an odd number of
samples that `PaddedEvalSampler` pads; every rank's result must equal the 1-process class
result bit for bit. Last, the same through Lightning (`strategy="ddp"`): Lightning keeps
`PaddedEvalSampler`, the `valid` mask keeps the hand-computed values exact, an unmasked
collection shows the padding copy counting twice. The DDP tests are `slow`; the hand values are
also checked in the fast tier through the functional core.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from hiertrain.metrics import functional as hier
from hiertrain.metrics.classes import ProbeAccuracy, hierarchical_metrics, json_values, metrics_dict, taxonomy_metrics

SEEDS = [0, 1, 2, 3, 4, 5]

# A level is (asked, parsed, correct); stored as asked*4 + parsed*2 + correct so cases are JSON.
Level = tuple[bool, bool, bool]


def _decode(code: int) -> Level:
    return bool(code & 4), bool(code & 2), bool(code & 1)


def make_case(seed: int) -> dict:
    """One random case: depth, rows (level codes), probe correctness per site, valid flags."""
    rng = random.Random(seed)
    depth = [1, 2, 4, 5, 6, 7][seed % 6]
    n = rng.choice([1, 7, 13, 23, 31])  # odd: two DDP ranks need one padding copy
    rows = []
    for _ in range(n):
        path = rng.choice([0] + [depth] * 3 + list(range(1, depth + 1)))  # 0 = nothing asked
        row = []
        for i in range(depth):
            asked = i < path and rng.random() < 0.8  # unasked gaps inside the path
            parsed = rng.random() < 0.85  # unparseable answers ...
            correct = rng.random() < 0.65  # ... flagged correct at random: parsed must win
            row.append(asked * 4 + parsed * 2 + correct)
        rows.append(row)
    sites = 1 + seed % 3  # probe sites (1: torchmetrics squeezes one-element results)
    probe = [[[rng.random() < 0.6 for _ in range(depth)] for _ in range(sites)] for _ in range(n)]
    # ddp off: padding copies of random rows appended, flagged invalid
    copies = [rng.randrange(n) for _ in range(rng.randint(0, 3))]
    case = {
        "seed": seed, "depth": depth, "sites": sites, "rows": rows, "probe": probe, "copies": copies,
        "batch": rng.randint(1, 5),
    }
    return {**case, **placement_codes(case)}


def placement_codes(case: dict) -> dict:
    """Random `hiertrain.metrics.placement` codes that fit the rows (own generator: rows unchanged).

    lca: a right level (1-based k) shares k levels; a wrong parsed pick -1 (no place) or 0..k-1;
    unparseable picks and unasked levels get any value (the metrics must ignore it). links: random
    bits (is a node / each shallower level agrees), most of them set so some picks form paths."""
    rng = random.Random(1000 + case["seed"])
    lca, links = [], []
    for row in case["rows"]:
        lca.append([])
        links.append([])
        for i, code in enumerate(row):
            asked, parsed, correct = _decode(code)
            if asked and parsed and correct:
                lca[-1].append(i + 1)
            elif asked and parsed:
                lca[-1].append(rng.randint(-1, i))
            else:
                lca[-1].append(rng.randint(-1, i + 1))
            links[-1].append(sum(1 << j for j in range(i + 1) if rng.random() < 0.85))
    return {"lca": lca, "links": links}


# ---------------------------------------------------------------- the reference (plain Python)


def _right(level: Level) -> bool:
    asked, parsed, correct = level
    return asked and parsed and correct


def _mean(values: list[Fraction]) -> Fraction | None:
    return sum(values, Fraction(0)) / len(values) if values else None


def reference(rows: list[list[Level]], depth: int) -> dict:
    """Every metric from its definition, as exact fractions (None = nothing counted)."""
    seqs = [[lv for lv in row if lv[0]] for row in rows]  # asked sequence: asked levels, depth order
    scored = [s for s in seqs if s]  # a sample with nothing asked is in no denominator
    hca = _mean([Fraction(all(_right(lv) for lv in s)) for s in scored])  # every asked level right
    leaf = _mean([Fraction(_right(s[-1])) for s in scored])  # leaf = deepest asked level
    per_level = []
    for i in range(depth):
        at = [row[i] for row in rows if row[i][0]]
        per_level.append(_mean([Fraction(_right(lv)) for lv in at]))
    point = _mean([Fraction(sum(map(_right, s)), len(s)) for s in scored])
    strict = []
    for s in scored:
        prefix = 0
        while prefix < len(s) and _right(s[prefix]):
            prefix += 1
        strict.append(Fraction(prefix, len(s)))
    top = _mean([Fraction(sum(_right(a) and _right(b) for a, b in zip(s, s[1:])), len(s) - 1) for s in scored if len(s) > 1])
    right = sum(_right(lv) for s in seqs for lv in s)
    predicted = sum(lv[1] for s in seqs for lv in s)  # asked with a parsed answer
    asked = sum(len(s) for s in seqs)
    if asked == 0:
        f1 = None
    elif right == 0:
        f1 = Fraction(0)
    else:
        p, r = Fraction(right, predicted), Fraction(right, asked)
        f1 = 2 * p * r / (p + r)
    unparsed = Fraction(sum(not lv[1] for s in seqs for lv in s), asked) if asked else None
    conditional = [None]  # level 1 has no parent level
    for i in range(1, depth):
        given = [row[i] for row in rows if row[i][0] and row[i - 1][0] and _right(row[i - 1])]
        conditional.append(_mean([Fraction(_right(lv)) for lv in given]))
    return {
        "hierarchical_precision": Fraction(right, predicted) if predicted else None,
        "hierarchical_recall": Fraction(right, asked) if asked else None,
        "conditional_accuracy": conditional,
        "hca": hca,
        "leaf_accuracy": leaf,
        "per_level_accuracy": per_level,
        "point_overlap": point,
        "strict_point_overlap": _mean(strict),
        "top_overlap": top,
        "hierarchical_f1": f1,
        "unparseable_rate": unparsed,
    }


def reference_taxonomy(rows: list[list[Level]], lca: list[list[int]], links: list[list[int]], depth: int) -> dict:
    """The severity and path measures from their definitions (exact fractions, None = nothing counted).

    A wrong pick is an asked level that is not right; it is placed when parsed with lca >= 0, and
    then sits 2 (k - lca) edges from the truth (1-based level k). A sample with 2+ asked levels is a
    path when each asked pick is a node (bit c of its links) whose ancestor at the previous asked
    level is the pick there (bit j)."""
    placed = [
        (i, lca[b][i]) for b, row in enumerate(rows) for i, lv in enumerate(row)
        if lv[0] and not _right(lv) and lv[1] and lca[b][i] >= 0
    ]
    unplaced = sum(1 for b, row in enumerate(rows) for i, lv in enumerate(row) if lv[0] and not _right(lv)) - len(placed)
    paths = []
    for b, row in enumerate(rows):
        seq = [i for i, lv in enumerate(row) if lv[0]]
        if len(seq) < 2:
            continue
        node = all(row[c][1] and links[b][c] >> c & 1 for c in seq)
        paths.append(Fraction(node and all(links[b][c] >> j & 1 for j, c in zip(seq, seq[1:]))))
    return {
        "path_consistency": _mean(paths),
        "mistake_lca_depth": _mean([Fraction(d) for _, d in placed]),
        "mistake_lca_depth_per_level": [_mean([Fraction(d) for i, d in placed if i == k]) for k in range(depth)],
        "mistake_distance": _mean([Fraction(2 * (i + 1 - d)) for i, d in placed]),
        "mistake_distance_per_level": [_mean([Fraction(2 * (i + 1 - d)) for i, d in placed if i == k]) for k in range(depth)],
        "mistake_severity": [sum(1 for _, d in placed if d == k) for k in range(depth)],
        "mistakes_unplaced": unplaced,
    }


def reference_probe(rows: list[list[Level]], probe: list[list[list[bool]]], depth: int, sites: int) -> list[dict]:
    """Per site: the reference HCA and per-level accuracy with the site's answers (all parsed)."""
    out = []
    for s in range(sites):
        site_rows = [[(row[i][0], True, probe[b][s][i]) for i in range(depth)] for b, row in enumerate(rows)]
        ref = reference(site_rows, depth)
        out.append({"hca": ref["hca"], "per_level_accuracy": ref["per_level_accuracy"]})
    return out


def assert_matches_reference(got: dict, ref: dict) -> None:
    """JSON values (None = NaN) equal the exact reference to 1e-12, key by key."""
    assert set(ref) <= set(got)
    for key, expected in ref.items():
        values, wanted = (got[key], expected) if isinstance(expected, list) else ([got[key]], [expected])
        assert len(values) == len(wanted), key
        for v, w in zip(values, wanted):
            if w is None:
                assert v is None, key
            else:
                assert v == pytest.approx(float(w), abs=1e-12), key


# ---------------------------------------------------------------- tensors of a case


def case_rows(case: dict) -> list[list[Level]]:
    return [[_decode(c) for c in row] for row in case["rows"]]


def case_tensors(case: dict, with_copies: bool) -> tuple[torch.Tensor, ...]:
    """(correct, asked, parsed, valid, probe_correct) of the case; copies appended as invalid."""
    index = list(range(len(case["rows"]))) + (case["copies"] if with_copies else [])
    codes = torch.tensor([case["rows"][i] for i in index], dtype=torch.long).reshape(len(index), case["depth"])
    probe = torch.tensor([case["probe"][i] for i in index], dtype=torch.bool).reshape(len(index), case["sites"], case["depth"])
    valid = torch.arange(len(index)) < len(case["rows"])
    return codes & 1 > 0, codes & 4 > 0, codes & 2 > 0, valid, probe


def case_codes(case: dict, with_copies: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(lca int8, links int32) of the case, rows as in `case_tensors`."""
    index = list(range(len(case["rows"]))) + (case["copies"] if with_copies else [])
    shape = (len(index), case["depth"])
    lca = torch.tensor([case["lca"][i] for i in index], dtype=torch.int8).reshape(shape)
    return lca, torch.tensor([case["links"][i] for i in index], dtype=torch.int32).reshape(shape)


def _batches(n: int, size: int) -> list[slice]:
    """Consecutive slices of `size`, plus an empty one (a rank with nothing to do)."""
    return [slice(a, min(n, a + size)) for a in range(0, n, size)] + [slice(n, n)]


def class_result(case: dict) -> dict:
    """`hierarchical_metrics` fed batch by batch (forward: each batch's own value is checked against
    the functional on that batch, as MetricTester does); each batch cut to the width its rows use."""
    correct, asked, parsed, valid, _ = case_tensors(case, with_copies=True)
    collection = hierarchical_metrics(case["depth"])
    for part in _batches(len(valid), case["batch"]):
        used = asked[part].any(0).nonzero()
        width = int(used.max()) + 1 if len(used) else 1
        batch = collection(correct[part, :width], asked[part, :width], parsed[part, :width], valid[part])
        for key in ("per_level_accuracy", "conditional_accuracy"):
            batch[key] = batch[key].reshape(-1)  # torchmetrics squeezes 1 level
        assert json_values(batch) == json_values(hier.hierarchical_scores(correct[part], asked[part], parsed[part], valid[part]))
    return metrics_dict(collection)


def taxonomy_class_result(case: dict) -> dict:
    """`taxonomy_metrics` fed batch by batch, each batch cut to the width its rows use."""
    correct, asked, parsed, valid, _ = case_tensors(case, with_copies=True)
    lca, links = case_codes(case, with_copies=True)
    collection = taxonomy_metrics(case["depth"])
    for part in _batches(len(valid), case["batch"]):
        used = asked[part].any(0).nonzero()
        width = int(used.max()) + 1 if len(used) else 1
        cut = (correct[part, :width], asked[part, :width], parsed[part, :width], valid[part])
        collection.update(*cut, lca=lca[part, :width], links=links[part, :width])
    return metrics_dict(collection)


def probe_class_result(case: dict) -> dict:
    correct, asked, parsed, valid, probe = case_tensors(case, with_copies=True)
    metric = ProbeAccuracy(case["sites"], case["depth"])
    for part in _batches(len(valid), case["batch"]):
        metric.update(probe[part], asked[part], valid[part])
    acc, hca = metric.shaped(*metric.compute())
    return {"accuracy": acc, "hca": hca}


def _probe_sites(result: dict) -> list[dict]:
    """ProbeAccuracy's tensors as one JSON-values dict per site."""
    return [
        json_values({"hca": hca, "per_level_accuracy": acc}) for hca, acc in zip(result["hca"], result["accuracy"])
    ]


# ---------------------------------------------------------------- ddp off


@pytest.mark.parametrize("seed", SEEDS)
def test_class_functional_and_reference_agree(seed):
    case = make_case(seed)
    correct, asked, parsed, valid, _ = case_tensors(case, with_copies=True)
    from_class = class_result(case)
    functional = json_values(hier.hierarchical_scores(correct, asked, parsed, valid))
    assert from_class == functional  # bit for bit, None (NaN) included
    one_shot = {
        "hca": hier.hierarchical_consistent_accuracy,
        "leaf_accuracy": hier.leaf_accuracy,
        "per_level_accuracy": hier.per_level_accuracy,
        "point_overlap": hier.point_overlap_ratio,
        "strict_point_overlap": hier.strict_point_overlap,
        "top_overlap": hier.top_overlap_ratio,
        "hierarchical_f1": hier.hierarchical_f1,
        "unparseable_rate": hier.unparseable_rate,
        "hierarchical_precision": hier.hierarchical_precision,
        "hierarchical_recall": hier.hierarchical_recall,
        "conditional_accuracy": hier.conditional_accuracy,
    }
    for key, fn in one_shot.items():
        assert json_values({key: fn(correct, asked, parsed, valid)}) == {key: functional[key]}, key
    assert_matches_reference(functional, reference(case_rows(case), case["depth"]))


@pytest.mark.parametrize("seed", SEEDS)
def test_taxonomy_metrics_class_functional_and_reference_agree(seed):
    case = make_case(seed)
    correct, asked, parsed, valid, _ = case_tensors(case, with_copies=True)
    lca, links = case_codes(case, with_copies=True)
    functional = json_values(hier.taxonomy_scores(correct, asked, parsed, lca, links, valid))
    assert taxonomy_class_result(case) == functional  # bit for bit
    assert_matches_reference(functional, reference_taxonomy(case_rows(case), case["lca"], case["links"], case["depth"]))


@pytest.mark.parametrize("seed", SEEDS)
def test_probe_metric_matches_reference_and_functional(seed):
    case = make_case(seed)
    correct, asked, parsed, valid, probe = case_tensors(case, with_copies=True)
    got = _probe_sites(probe_class_result(case))
    ref = reference_probe(case_rows(case), case["probe"], case["depth"], case["sites"])
    for site, (g, r) in enumerate(zip(got, ref)):
        assert_matches_reference(g, r)
        # the functional with a sites dim equals it, and equals the functional run per site
        per_site = json_values(hier.hierarchical_scores(probe[:, site], asked, valid=valid))
        assert g == {k: per_site[k] for k in g}, site
    all_sites = hier.hierarchical_scores(probe, asked, valid=valid)
    assert json_values({"hca": all_sites["hca"]})["hca"] == [g["hca"] for g in got]


def test_reference_has_teeth():
    """The harness can fail: counting an unparseable 'correct' answer as right changes HCA."""
    rows = [[(True, False, True), (True, True, True)]]
    ref = reference(rows, 2)
    correct, asked, parsed = (torch.tensor([[lv[k] for lv in rows[0]]]) for k in (2, 0, 1))
    assert ref["hca"] == 0
    assert float(hier.hierarchical_consistent_accuracy(correct, asked, parsed)) == 0.0
    assert float(hier.hierarchical_consistent_accuracy(correct, asked)) == 1.0  # parsed ignored


def test_cases_cover_the_edge_cases():
    """Across the seeds: nothing-asked samples, gaps, unparseable answers, padding copies, depth 1."""
    rows = [row for seed in SEEDS for row in case_rows(make_case(seed))]
    assert any(not any(lv[0] for lv in row) for row in rows)
    assert any(
        any(not row[i][0] and any(lv[0] for lv in row[:i]) and any(lv[0] for lv in row[i + 1 :]) for i in range(len(row)))
        for row in rows
    )
    assert any(lv[0] and not lv[1] and lv[2] for row in rows for lv in row)
    assert any(make_case(seed)["copies"] for seed in SEEDS)
    assert min(make_case(seed)["depth"] for seed in SEEDS) == 1


# ---------------------------------------------------------------- ddp on (2 processes, gloo)

DDP_SCRIPT = textwrap.dedent(
    '''
    import json, sys
    from pathlib import Path

    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, Dataset

    from hiertrain.metrics.classes import ProbeAccuracy, hierarchical_metrics, metrics_dict, taxonomy_metrics
    from hiertrain.datamodules.sampling import PaddedEvalSampler, unpad_index


    class Rows(Dataset):
        def __init__(self, case):
            self.case = case

        def __len__(self):
            return len(self.case["rows"])

        def __getitem__(self, index):
            i, valid = unpad_index(index, len(self))
            codes = torch.tensor(self.case["rows"][i], dtype=torch.long)
            return {
                "id": i, "valid": valid, "correct": codes & 1 > 0, "asked": codes & 4 > 0,
                "parsed": codes & 2 > 0, "probe": torch.tensor(self.case["probe"][i]),
                "lca": torch.tensor(self.case["lca"][i], dtype=torch.int8),
                "links": torch.tensor(self.case["links"][i], dtype=torch.int32),
            }


    def worker(rank, cases, out):
        dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=2)
        results = {}
        for case in cases:
            ds = Rows(case)
            sampler = PaddedEvalSampler(ds)
            collection = hierarchical_metrics(case["depth"])
            probe = ProbeAccuracy(case["sites"], case["depth"])
            taxonomy = taxonomy_metrics(case["depth"])
            seen = []
            for b in DataLoader(ds, batch_size=case["batch"], sampler=sampler):
                collection.update(b["correct"], b["asked"], b["parsed"], b["valid"])
                taxonomy.update(b["correct"], b["asked"], b["parsed"], b["valid"], lca=b["lca"], links=b["links"])
                probe.update(b["probe"], b["asked"], b["valid"])
                seen += [[int(i), bool(v)] for i, v in zip(b["id"], b["valid"])]
            acc, hca = probe.shaped(*probe.compute())  # synced across both processes
            results[case["seed"]] = {
                "metrics": metrics_dict(collection), "taxonomy": metrics_dict(taxonomy), "probe_accuracy": acc.tolist(), "probe_hca": hca.tolist(),
                "seen": seen, "world": dist.get_world_size(), "sampler_replicas": sampler.num_replicas,
            }
        Path(out, f"rank{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()


    if __name__ == "__main__":
        worker(int(sys.argv[3]), json.loads(Path(sys.argv[1]).read_text()), sys.argv[2])
    '''
)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> list[dict]:
    """Every case through 2 real processes, spawned once for the whole module."""
    tmp = tmp_path_factory.mktemp("metrics_ddp")
    (tmp / "cases.json").write_text(json.dumps([make_case(seed) for seed in SEEDS]))
    (tmp / "ddp_harness.py").write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    argv = [sys.executable, str(tmp / "ddp_harness.py"), str(tmp / "cases.json"), str(tmp)]
    procs = [
        subprocess.Popen([*argv, str(rank)], cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in range(2)
    ]
    for rank, proc in enumerate(procs):
        try:
            _, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        assert proc.returncode == 0, f"rank {rank}: {err[-3000:]}"
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_ddp_matches_one_process_and_reference(ddp_results, seed):
    case = make_case(seed)
    ranks = [r[str(seed)] for r in ddp_results]
    assert [r["world"] for r in ranks] == [2, 2] and [r["sampler_replicas"] for r in ranks] == [2, 2]
    seen = [pair for r in ranks for pair in r["seen"]]
    assert sorted(i for i, v in seen if v) == list(range(len(case["rows"])))  # each sample once
    assert len([i for i, v in seen if not v]) == 1  # odd count: the sampler padded one copy

    single = class_result(case)  # 1 process, with its own padding copies dropped
    for r in ranks:  # both ranks hold the synced result
        assert r["metrics"] == single  # bit for bit
    assert_matches_reference(ranks[0]["metrics"], reference(case_rows(case), case["depth"]))
    single_taxonomy = taxonomy_class_result(case)
    for r in ranks:
        assert r["taxonomy"] == single_taxonomy  # severity and path counts: bit for bit
    assert_matches_reference(
        ranks[0]["taxonomy"], reference_taxonomy(case_rows(case), case["lca"], case["links"], case["depth"])
    )

    probe = probe_class_result(case)
    for r in ranks:
        for got, want in ((r["probe_accuracy"], probe["accuracy"]), (r["probe_hca"], probe["hca"])):
            torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), want, rtol=0, atol=0, equal_nan=True)
    got_sites = [
        {"hca": None if math.isnan(h) else h, "per_level_accuracy": [None if math.isnan(a) else a for a in acc]}
        for h, acc in zip(ranks[0]["probe_hca"], ranks[0]["probe_accuracy"])
    ]
    for g, ref in zip(got_sites, reference_probe(case_rows(case), case["probe"], case["depth"], case["sites"])):
        assert_matches_reference(g, ref)


# ---------------------------------------------------------------- ddp through Lightning (2 processes)
# 7 samples on 2 ranks: the DistributedSampler pads to 8 by repeating sample 0, which is all
# wrong, so counting the repeat would lower every score. The module keeps two metric collections,
# one fed the `valid` mask and one not, to show the mask is what keeps the numbers exact.
# (Formerly tests/metrics/test_classes_ddp.py.)

LIGHTNING_SCRIPT = textwrap.dedent(
    '''
    import json, sys
    from pathlib import Path

    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, Dataset

    from hiertrain.datamodules.sampling import PaddedEvalSampler, unpad_index
    from hiertrain.metrics.classes import hierarchical_metrics, metrics_dict

    # 'C' right, 'W' wrong, 'U' unparseable, '.' level not in the path.
    ROWS = ["WWWW", "CCCC", "CCW.", "CWCC", "UC..", "CCCC", "C..."]


    class Fixed(Dataset):
        def __len__(self):
            return len(ROWS)

        def __getitem__(self, index):
            i, valid = unpad_index(index, len(ROWS))
            r = ROWS[i]
            return {
                "id": i,
                "valid": valid,
                "correct": torch.tensor([c == "C" for c in r]),
                "asked": torch.tensor([c != "." for c in r]),
                "parsed": torch.tensor([c != "U" for c in r]),
            }


    class Data(pl.LightningDataModule):
        def test_dataloader(self):
            ds = Fixed()
            return DataLoader(ds, batch_size=3, sampler=PaddedEvalSampler(ds))


    class Scorer(pl.LightningModule):
        def __init__(self, out):
            super().__init__()
            self.out = Path(out)
            self.layer = torch.nn.Linear(1, 1)  # a module with no parameters upsets DDP
            self.masked = hierarchical_metrics(4)
            self.unmasked = hierarchical_metrics(4)
            self.seen = []

        def test_step(self, batch, batch_idx):
            self.masked.update(batch["correct"], batch["asked"], batch["parsed"], batch["valid"])
            self.unmasked.update(batch["correct"], batch["asked"], batch["parsed"])
            self.seen += [[int(i), bool(v)] for i, v in zip(batch["id"], batch["valid"])]

        def on_test_epoch_end(self):
            result = {"masked": metrics_dict(self.masked), "unmasked": metrics_dict(self.unmasked)}
            sampler = self.trainer.test_dataloaders.sampler
            rank = self.global_rank
            (self.out / f"seen{rank}.json").write_text(
                json.dumps({"seen": self.seen, "sampler": type(sampler).__name__, "world": self.trainer.world_size})
            )
            if rank == 0:
                (self.out / "metrics.json").write_text(json.dumps(result))


    def run(out, devices):
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=devices,
            strategy="ddp" if devices > 1 else "auto",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.test(Scorer(out), datamodule=Data(), verbose=False)


    if __name__ == "__main__":
        run(sys.argv[1], int(sys.argv[2]))
    '''
)

# Hand values for ROWS (per-sample: hits / asked):
#   0 WWWW 0/4, 1 CCCC 4/4, 2 CCW. 2/3, 3 CWCC 3/4, 4 UC.. 1/2, 5 CCCC 4/4, 6 C... 1/1
LIGHTNING_HAND = {
    "hca": 3 / 7,  # samples 1, 5, 6
    "leaf_accuracy": 5 / 7,  # wrong leaf: 0 and 2
    "point_overlap": 59 / 84,  # (0 + 1 + 2/3 + 3/4 + 1/2 + 1 + 1) / 7 = (59/12) / 7
    "strict_point_overlap": 47 / 84,  # prefixes 0, 1, 2/3, 1/4, 0, 1, 1 -> (47/12) / 7
    "top_overlap": 17 / 36,  # pairs 0/3, 3/3, 1/2, 1/3, 0/1, 3/3; sample 6 has none -> (17/6) / 6
    "hierarchical_f1": 30 / 43,  # 15 right, 21 predicted, 22 asked: 2*15 / (21 + 22)
    "unparseable_rate": 1 / 22,
    "hierarchical_precision": 15 / 21,
    "hierarchical_recall": 15 / 22,
    # level k right given k - 1 right (both asked): L2 s1 s2 s5 of s1 s2 s3 s5; L3 s1 s5 of s1 s2 s5
    # (s4's L2 is right but its L3 not asked); L4 s1 s3 s5 of the same
    "conditional_accuracy": [None, 3 / 4, 2 / 3, 1.0],
    "per_level_accuracy": [5 / 7, 4 / 6, 3 / 5, 3 / 4],
}


LIGHTNING_ROWS = ["WWWW", "CCCC", "CCW.", "CWCC", "UC..", "CCCC", "C..."]  # the script's ROWS


def test_lightning_hand_values_through_the_functional():
    """The hand values hold for the functional core too (fast tier; the DDP run below is slow)."""
    assert f"ROWS = {json.dumps(LIGHTNING_ROWS)}" in LIGHTNING_SCRIPT  # one set of rows
    correct, asked, parsed = (
        torch.tensor([[c in keep for c in row] for row in LIGHTNING_ROWS]) for keep in ("C", "CWU", "CW.")
    )
    _assert_lightning_hand(json_values(hier.hierarchical_scores(correct, asked, parsed)))


def _lightning_script(tmp_path: Path) -> Path:
    script = tmp_path / "ddp_metrics.py"
    script.write_text(LIGHTNING_SCRIPT)
    return script


def _lightning_results(out: Path, devices: int) -> tuple[dict, list[dict]]:
    seen = [json.loads((out / f"seen{r}.json").read_text()) for r in range(devices)]
    return json.loads((out / "metrics.json").read_text()), seen


def _lightning_ddp(tmp_path: Path) -> tuple[dict, list[dict]]:
    """Two processes: `strategy="ddp"` re-launches the script for rank 1."""
    out = tmp_path / "ddp"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(_lightning_script(tmp_path)), str(out), "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _lightning_results(out, 2)


def _lightning_single(tmp_path: Path) -> dict:
    """The same module and data in this process, on one device."""
    out = tmp_path / "single"
    out.mkdir()
    spec = importlib.util.spec_from_file_location("ddp_metrics_script", _lightning_script(tmp_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.run(str(out), 1)
    return _lightning_results(out, 1)[0]


def _assert_lightning_hand(metrics: dict) -> None:
    for key, expected in LIGHTNING_HAND.items():
        assert metrics[key] == pytest.approx(expected, abs=1e-12), key


@pytest.mark.slow
def test_lightning_two_process_ddp_is_exact(tmp_path):
    ddp, seen = _lightning_ddp(tmp_path)
    single = _lightning_single(tmp_path)

    assert [s["world"] for s in seen] == [2, 2]
    assert {s["sampler"] for s in seen} == {"PaddedEvalSampler"}  # Lightning kept ours
    valid_ids = sorted(i for s in seen for i, v in s["seen"] if v)
    assert valid_ids == list(range(7))  # each sample exactly once
    assert [i for s in seen for i, v in s["seen"] if not v] == [0]  # one padding copy of sample 0

    _assert_lightning_hand(single["masked"])
    assert ddp["masked"] == single["masked"]  # bit-identical, not merely close
    assert single["unmasked"] == single["masked"]  # one process: no padding at all

    # Without the mask sample 0 (all wrong) counts twice: 3/8 instead of 3/7, and so on.
    assert ddp["unmasked"]["hca"] == pytest.approx(3 / 8)
    assert ddp["unmasked"]["point_overlap"] == pytest.approx((59 / 12) / 8)
    assert ddp["unmasked"] != ddp["masked"]
