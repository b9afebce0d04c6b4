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
