"""PaddedEvalSampler: every sample exactly once across ranks, padding repeats recognisable."""

from __future__ import annotations

import pytest
from torch.utils.data import DistributedSampler

from hiertrain.datamodules.sampling import PaddedDataset, PaddedEvalSampler, unpad_index


class _Items:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"x": i * 10}


def test_seven_items_two_ranks():
    # Plain DistributedSampler: 7 -> 8 by repeating item 0; rank 0 gets 0,2,4,6, rank 1 1,3,5,0.
    ranks = [list(PaddedEvalSampler(_Items(7), num_replicas=2, rank=r)) for r in range(2)]
    assert ranks == [[0, 2, 4, 6], [1, 3, 5, 7]]  # 7 = the repeat of item 0
    assert unpad_index(7, 7) == (0, False)
    assert unpad_index(6, 7) == (6, True)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_each_sample_once_and_same_order_as_distributed_sampler(n, world):
    real: list[int] = []
    for rank in range(world):
        ours = list(PaddedEvalSampler(_Items(n), num_replicas=world, rank=rank))
        plain = list(DistributedSampler(_Items(n), num_replicas=world, rank=rank, shuffle=False))
        assert [unpad_index(i, n)[0] for i in ours] == plain  # same items, same order
        real += [i for i in ours if unpad_index(i, n)[1]]
    assert sorted(real) == list(range(n))  # valid items: each sample exactly once


def test_outside_a_process_group_is_one_replica():
    sampler = PaddedEvalSampler(_Items(5))
    assert (sampler.num_replicas, sampler.rank) == (1, 0)
    assert list(sampler) == [0, 1, 2, 3, 4]
    assert isinstance(sampler, DistributedSampler)  # so Lightning does not replace it


def test_shuffle_and_drop_last_are_refused():
    with pytest.raises(ValueError, match="shuffle"):
        PaddedEvalSampler(_Items(5), num_replicas=2, rank=0, shuffle=True)
    with pytest.raises(ValueError, match="drop_last"):
        PaddedEvalSampler(_Items(5), num_replicas=2, rank=0, drop_last=True)


def test_padded_dataset_adds_valid_flag():
    ds = PaddedDataset(_Items(3))
    assert len(ds) == 3
    assert ds[1] == {"x": 10, "valid": True}
    assert ds[4] == {"x": 10, "valid": False}
    with pytest.raises(IndexError):
        ds[6]
    with pytest.raises(TypeError, match="dict items"):
        PaddedDataset([1, 2])[0]


# ---- issue 22 item 13: a training loader that resumes mid-epoch ---------------------------


def _epochs(loader, epochs: int) -> list[list[list[int]]]:
    return [[batch.tolist() for batch in loader] for _ in range(epochs)]


def test_resumable_sampler_and_loader_draw_as_a_shuffled_dataloader() -> None:
    """Same global RNG use and order as `DataLoader(shuffle=True)`: shipped fits are unchanged."""
    import torch
    from torch.utils.data import DataLoader

    from hiertrain.datamodules.sampling import ResumableLoader, ResumableRandomSampler

    data = list(range(10))
    torch.manual_seed(3)
    plain, after_plain = _epochs(DataLoader(data, batch_size=3, shuffle=True), 3), torch.rand(2)
    torch.manual_seed(3)
    ours = _epochs(ResumableLoader(data, batch_size=3, sampler=ResumableRandomSampler(data)), 3)
    assert ours == plain and torch.equal(torch.rand(2), after_plain)
    assert plain[0] != plain[1]  # it does shuffle


@pytest.mark.parametrize("stop_after", [1, 3, 4])
def test_loader_state_resumes_on_the_same_batches_and_draws(stop_after) -> None:
    """Stopped after `stop_after` of 4 batches (4 = an epoch's end), a new loader given the state
    serves the rest of the epoch, then the next ones, and leaves the RNG where the whole run did."""
    import random

    import numpy as np
    import torch

    from hiertrain.datamodules.sampling import LoaderPosition, ResumableLoader, ResumableRandomSampler

    data = list(range(10))

    def loader(position=None):
        return ResumableLoader(data, batch_size=3, sampler=ResumableRandomSampler(data), position=position)

    def draws():
        return torch.rand(1).item(), float(np.random.rand()), random.random()

    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    whole, noise, uninterrupted = [], [], loader()
    for _ in range(3):
        for batch in uninterrupted:
            whole.append(batch.tolist())
            noise.append(draws())  # dropout-like draws between batches

    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    first, seen, drawn = loader(), [], []
    iterator = iter(first)
    for _ in range(stop_after):
        seen.append(next(iterator).tolist())
        drawn.append(draws())
    state = first.state_dict()
    assert state["served"] == stop_after and state["length"] == 4

    torch.manual_seed(123), np.random.seed(5), random.seed(9)  # a new process: other RNG states
    position = LoaderPosition()
    position.load_state_dict(state)
    resumed = loader(position)
    for _ in range(2 if stop_after == 4 else 3):  # the rest of this epoch (if any), then the others
        for batch in resumed:
            seen.append(batch.tolist())
            drawn.append(draws())
    assert seen == whole and drawn == noise
