"""Letter bias: counts per letter, Pearson's chi-square against the truth rates, exact under DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from hiertrain.base.errors import HierError
from hiertrain.metrics.letter_bias import letter_bias, letter_compute, letter_counts, letter_update


def test_counts_per_letter_skip_unparsed_picks():
    truths, picks = letter_update(torch.tensor([0, 1, 1, 3]), torch.tensor([2, -1, 1, 2]), 4)
    assert truths.tolist() == [1, 2, 0, 1]
    assert picks.tolist() == [0, 1, 2, 0]  # the -1 (unparseable) is no pick


def test_chi_square_by_hand_df3():
    # picks 10, 0, 0, 10 against truths 5 each: expected 5 per letter, chi2 = 4 * 25 / 5 = 20
    out = letter_compute(torch.tensor([5, 5, 5, 5]), torch.tensor([10, 0, 0, 10]))
    assert out["chi2"] == pytest.approx(20.0) and out["df"] == 3
    # chi-square survival with 3 df in closed form: erfc(sqrt(x/2)) + sqrt(2x/pi) exp(-x/2)
    x = 20.0
    assert out["p_value"] == pytest.approx(math.erfc(math.sqrt(x / 2)) + math.sqrt(2 * x / math.pi) * math.exp(-x / 2), rel=1e-10)
    assert out["pick_rate"] == [0.5, 0.0, 0.0, 0.5] and out["truth_rate"] == [0.25] * 4


def test_chi_square_uses_the_truth_rates_and_df2():
    # three letters hold truths 2:1:1; picks 6, 1, 1 of 8: expected 4, 2, 2 -> (4 + 1 + 1) / ... by hand
    out = letter_compute(torch.tensor([2, 1, 1, 0]), torch.tensor([6, 1, 1, 0]))
    stat = (6 - 4) ** 2 / 4 + (1 - 2) ** 2 / 2 + (1 - 2) ** 2 / 2
    assert out["chi2"] == pytest.approx(stat) and out["df"] == 2
    assert out["p_value"] == pytest.approx(math.exp(-stat / 2), rel=1e-10)  # 2 df: exp(-x/2)
    assert out["letters"] == ["A", "B", "C"]


def test_unbiased_picks_have_p_one_and_no_picks_no_test():
    assert letter_compute(torch.tensor([3, 3]), torch.tensor([3, 3]))["p_value"] == pytest.approx(1.0)
    empty = letter_compute(torch.tensor([3, 3]), torch.tensor([0, 0]))
    assert empty["chi2"] is None and empty["pick_rate"] is None


def test_from_questions_and_a_truth_outside_the_options_is_an_error():
    questions = [(["x", "y"], "y", "A"), (["x", "y", "z"], "x", None), (["y", "x"], "x", "B")]
    assert letter_counts(questions, 3) == ([1, 2, 0], [1, 1, 0])
    assert letter_bias(questions)["pick_counts"] == [1, 1]
    with pytest.raises(HierError, match="not among the options"):
        letter_bias([(["x"], "q", "A")])


SCRIPT = textwrap.dedent(
    """
    import json, sys
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, Dataset
    from hiertrain.metrics.classes import LetterBias
    from hiertrain.datamodules.sampling import PaddedEvalSampler, unpad_index

    TRUTH = [0, 1, 2, 3, 0, 1, 2]   # 7 questions: odd, so rank 1 gets a padding copy of question 0
    PICK = [3, 3, 3, -1, 0, 3, 2]

    class Fixed(Dataset):
        def __len__(self):
            return len(TRUTH)
        def __getitem__(self, index):
            i, valid = unpad_index(index, len(TRUTH))
            return {"truth": TRUTH[i], "pick": PICK[i], "valid": valid}

    class Data(pl.LightningDataModule):
        def test_dataloader(self):
            ds = Fixed()
            return DataLoader(ds, batch_size=2, sampler=PaddedEvalSampler(ds))

    class Scorer(pl.LightningModule):
        def __init__(self, out):
            super().__init__()
            self.out, self.layer, self.bias = out, torch.nn.Linear(1, 1), LetterBias(4)
        def test_step(self, batch, batch_idx):
            self.bias.update(batch["truth"], batch["pick"], batch["valid"])
        def on_test_epoch_end(self):
            result = self.bias.compute()
            if self.global_rank == 0:
                open(self.out, "w").write(json.dumps(result))

    if __name__ == "__main__":
        pl.Trainer(accelerator="cpu", devices=int(sys.argv[2]), strategy="ddp" if sys.argv[2] == "2" else "auto",
                   logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False).test(Scorer(sys.argv[1]), datamodule=Data(), verbose=False)
    """
)


@pytest.mark.slow
def test_letter_bias_is_exact_under_two_process_ddp(tmp_path):
    script = tmp_path / "ddp_letters.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    results = []
    for devices in (1, 2):
        out = tmp_path / f"out{devices}.json"
        proc = subprocess.run([sys.executable, str(script), str(out), str(devices)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=240)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(json.loads(out.read_text()))
    assert results[0] == results[1]  # bit-identical
    assert results[0]["truth_counts"] == [2, 2, 2, 1]  # the padding copy of question 0 not counted
    assert results[0]["pick_counts"] == [1, 0, 1, 4]
