"""Distributed evaluation that sees every sample exactly once.

A DistributedSampler makes every rank take the same number of items by repeating the first
ones, so metrics summed over ranks would count those samples twice. `PaddedEvalSampler` marks
each repeat by yielding ``i + len(dataset)`` instead of ``i``; a dataset turns that back into
``(i, valid=False)`` with `unpad_index` (or is wrapped in `PaddedDataset`), and the metrics drop
rows whose ``valid`` is False. Because it *is* a DistributedSampler, Lightning keeps it.

Training: `ResumableLoader` + `ResumableRandomSampler` let `--ckpt_path last` resume a killed
fit (mid-epoch too) on exactly the batches and random draws the uninterrupted fit would use.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sized
from typing import Any

import torch
import torch.distributed as dist
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler


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


class ResumableRandomSampler(RandomSampler):
    """`RandomSampler` (the same one draw from the global torch RNG per pass, the same order)
    that remembers its pass's seed, so a fit resumed mid-epoch replays that epoch's order."""

    def __init__(self, data_source: Sized) -> None:
        super().__init__(data_source)
        self.seed: int | None = None  # seed of the pass in progress
        self.replay: int | None = None  # seed the next pass uses instead of drawing one

    def __iter__(self) -> Iterator[int]:
        if self.replay is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())  # RandomSampler's own draw
        else:
            seed, self.replay = self.replay, None
        self.seed = seed
        generator = torch.Generator()
        generator.manual_seed(seed)
        return iter(RandomSampler(self.data_source, generator=generator))


class _SkipFirst(Sampler):
    """An index (batch) sampler less its first `skip` items: the batches a killed fit already trained on."""

    def __init__(self, sampler: Any, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


class LoaderPosition:
    """Where a training loader stands, shared by the loader that Lightning iterates (in DDP a
    copy it rebuilds with a DistributedSampler, handed the same object) and the data module
    that checkpoints it: `loader` is the one last iterated, `pending` a state to resume from."""

    def __init__(self) -> None:
        self.loader: ResumableLoader | None = None
        self.served = 0
        self.pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict() if self.loader is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = dict(state) if state else None


class ResumableLoader(DataLoader):
    """A training DataLoader whose epoch position is checkpointed and resumed.

    Its state: batches served in the epoch, the epoch's shuffle seed (`ResumableRandomSampler`;
    a DistributedSampler's order is already fixed by its seed and epoch), and the global torch /
    numpy / python RNG states at the save. Resumed mid-epoch it replays the epoch's order without
    the served batches (indices are skipped, nothing is loaded); resumed at an epoch's end the
    next epoch starts from the saved RNG states as it would have. The RNG states are set when
    the first batch is fetched, so whatever ran in between (restoring, sanity checks, hooks) does
    not shift dropout or the next shuffle: killed + resumed trains on what an uninterrupted fit
    would. The data module stores the state (`HierTuningDataModule.state_dict`): Lightning
    restores a data module before it builds loaders, while the fit loop's own loader state comes
    after `trainer.estimated_stepping_batches` (the LR schedule) has already started the epoch.
    Not covered: a checkpoint taken on a step that also validates mid-epoch (Lightning resumes
    after that validation without running it).
    """

    def __init__(self, *args: Any, position: LoaderPosition | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = position if position is not None else LoaderPosition()
        self._skip = 0

    @property
    def _index_sampler(self) -> Any:  # what the DataLoader's iterator draws indices from
        sampler = DataLoader._index_sampler.fget(self)  # type: ignore[attr-defined]
        return _SkipFirst(sampler, self._skip) if self._skip else sampler

    def state_dict(self) -> dict[str, Any]:
        sampler = self.sampler
        return {
            "served": self.position.served,
            "length": len(self),
            "seed": sampler.seed if isinstance(sampler, ResumableRandomSampler) else None,
            "rng": _rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position.load_state_dict(state)

    def __iter__(self) -> Iterator[Any]:
        position = self.position
        position.loader = self
        pending, position.pending = position.pending, None
        if pending is None:
            position.served = 0
            return self._counted(super().__iter__(), None)
        if pending["served"] >= pending["length"]:  # saved at an epoch's end
            return self._next_epoch(pending["rng"])
        if isinstance(self.sampler, ResumableRandomSampler) and pending["seed"] is not None:
            self.sampler.replay = pending["seed"]
        self._skip = pending["served"]
        try:
            inner = super().__iter__()
        finally:
            self._skip = 0
        position.served = pending["served"]
        return self._counted(inner, pending["rng"])

    def _next_epoch(self, rng: dict[str, Any]) -> Iterator[Any]:
        _set_rng_state(rng)
        self.position.served = 0
        yield from self._counted(super().__iter__(), None)

    def _counted(self, inner: Iterator[Any], rng: dict[str, Any] | None) -> Iterator[Any]:
        if rng is not None:
            _set_rng_state(rng)
        for batch in inner:
            self.position.served += 1
            yield batch


def _rng_state() -> dict[str, Any]:
    """Lightning's collection of the global RNG states, numpy's as tensors (checkpoints load
    with torch's weights-only unpickler)."""
    states = _collect_rng_states()
    if "numpy" in states:
        name, keys, pos, has_gauss, gauss = states["numpy"]
        states["numpy"] = (name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(gauss))
    return states


def _set_rng_state(states: dict[str, Any]) -> None:
    states = dict(states)
    if "numpy" in states:
        import numpy as np

        name, keys, pos, has_gauss, gauss = states["numpy"]
        states["numpy"] = (name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)
    if not torch.cuda.is_available():
        states.pop("torch.cuda", None)
    _set_rng_states(states)
