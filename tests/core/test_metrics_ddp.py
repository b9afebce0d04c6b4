"""Real 2-process DDP (CPU, gloo) through Lightning: metrics match a 1-process run and the hand values.

7 samples on 2 ranks: the DistributedSampler pads to 8 by repeating sample 0, which is all
wrong, so counting the repeat would lower every score. The module keeps two metric collections,
one fed the `valid` mask and one not, to show the mask is what keeps the numbers exact.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    '''
    import json, sys
    from pathlib import Path

    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, Dataset

    from hiertrain.datamodules.sampling import PaddedEvalSampler, unpad_index
    from hiertrain.core.metrics import hierarchical_metrics, metrics_dict

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
HAND = {
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


def _script(tmp_path: Path) -> Path:
    script = tmp_path / "ddp_metrics.py"
    script.write_text(SCRIPT)
    return script


def _results(out: Path, devices: int) -> tuple[dict, list[dict]]:
    seen = [json.loads((out / f"seen{r}.json").read_text()) for r in range(devices)]
    return json.loads((out / "metrics.json").read_text()), seen


def _run_ddp(tmp_path: Path) -> tuple[dict, list[dict]]:
    """Two processes: `strategy="ddp"` re-launches the script for rank 1."""
    out = tmp_path / "ddp"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(_script(tmp_path)), str(out), "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _results(out, 2)


def _run_single(tmp_path: Path) -> dict:
    """The same module and data in this process, on one device."""
    out = tmp_path / "single"
    out.mkdir()
    spec = importlib.util.spec_from_file_location("ddp_metrics_script", _script(tmp_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.run(str(out), 1)
    return _results(out, 1)[0]


def _assert_hand(metrics: dict) -> None:
    for key, expected in HAND.items():
        assert metrics[key] == pytest.approx(expected, abs=1e-12), key


@pytest.mark.slow
def test_two_process_ddp_is_exact(tmp_path):
    ddp, seen = _run_ddp(tmp_path)
    single = _run_single(tmp_path)

    assert [s["world"] for s in seen] == [2, 2]
    assert {s["sampler"] for s in seen} == {"PaddedEvalSampler"}  # Lightning kept ours
    valid_ids = sorted(i for s in seen for i, v in s["seen"] if v)
    assert valid_ids == list(range(7))  # each sample exactly once
    assert [i for s in seen for i, v in s["seen"] if not v] == [0]  # one padding copy of sample 0

    _assert_hand(single["masked"])
    assert ddp["masked"] == single["masked"]  # bit-identical, not merely close
    assert single["unmasked"] == single["masked"]  # one process: no padding at all

    # Without the mask sample 0 (all wrong) counts twice: 3/8 instead of 3/7, and so on.
    assert ddp["unmasked"]["hca"] == pytest.approx(3 / 8)
    assert ddp["unmasked"]["point_overlap"] == pytest.approx((59 / 12) / 8)
    assert ddp["unmasked"] != ddp["masked"]
