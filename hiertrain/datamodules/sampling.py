"""Distributed evaluation that sees every sample exactly once.

A DistributedSampler makes every rank take the same number of items by repeating the first
ones, so metrics summed over ranks would count those samples twice. `PaddedEvalSampler` marks
each repeat by yielding ``i + len(dataset)`` instead of ``i``; a dataset turns that back into
``(i, valid=False)`` with `unpad_index` (or is wrapped in `PaddedDataset`), and the metrics drop
rows whose ``valid`` is False. Because it *is* a DistributedSampler, Lightning keeps it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler


def unpad_index(index: int, length: int) -> tuple[int, bool]:
    """Map a `PaddedEvalSampler` index to (dataset index, valid): valid is False for a padding repeat."""
    if not 0 <= index < 2 * length:
        raise IndexError(f"index {index} out of range for a padded dataset of {length} items")
    return index % length, index < length


class PaddedEvalSampler(DistributedSampler):
    """In-order DistributedSampler whose padding repeats are offset by len(dataset).

    Rank r gets items r, r + world, r + 2 world, ... of ``0..n-1`` followed by the repeats, as a
    plain unshuffled DistributedSampler would, so every rank runs the same number of steps.
    Outside a process group it acts as a single replica.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if shuffle or drop_last:
            raise ValueError("PaddedEvalSampler is for evaluation: shuffle and drop_last must be False")
        initialized = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialized else 1
        if rank is None:
            rank = dist.get_rank() if initialized else 0
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed, drop_last=False)

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)  # type: ignore[arg-type]
        indices = list(range(n)) + [n + j % n for j in range(self.total_size - n)]
        return iter(indices[self.rank : self.total_size : self.num_replicas])


class PaddedDataset(Dataset):
    """Wraps a dataset of dict items so `PaddedEvalSampler` indices come back with a ``valid`` flag."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        real, valid = unpad_index(index, len(self))
        item = self.dataset[real]
        if not isinstance(item, Mapping):
            raise TypeError(f"PaddedDataset needs dict items; {type(self.dataset).__name__} gave {type(item).__name__}")
        return {**item, "valid": valid}
