"""Deterministic, resumable data loading for (distributed) training.

``ResumableSampler`` is ``DistributedSampler``'s partition (one seeded permutation per epoch; rank ``r``
takes positions ``r, r + W, r + 2W, ...``) plus a position: the epoch and how many samples this rank has
consumed in it. ``ResumableLoader`` advances that position only for batches actually handed to the training
loop (not for those prefetched by workers), so a ``state_dict()`` saved after a training step resumes
exactly at the next unseen batch. The authors' code restarts the epoch on resume (SPEC 7.6, a rough edge we fix).

The position is stored as samples consumed by all ranks together, so a run may resume on a different
number of ranks: the remaining samples are the same, up to rounding when the count does not divide evenly.

Random augmentation (flips, latent posterior noise) draws from torch's generator, which the loader seeds
for every item from ``(seed, epoch, position of the item in the epoch's permutation)``. An item's
augmentation therefore depends neither on the number of data-loader workers nor on the number of ranks, and
a resume mid-epoch reproduces it exactly (with workers, a per-worker stream would restart at the resume).
"""
from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["ResumableLoader", "ResumableSampler", "build_dataloader", "item_seed"]


def item_seed(seed: int, epoch: int, position: int) -> int:
    """The augmentation seed of the item at ``position`` of ``epoch``'s permutation."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + position) % 2**63


class _SeededItems(Dataset):
    """``dataset[(index, seed)]``: ``dataset[index]`` drawn under torch's CPU generator seeded with ``seed``.

    The caller's generator state is restored afterwards, so the training process's own stream (label
    dropout, ...) is unaffected when items are loaded in the main process. Only the CPU generator is seeded
    (what the datasets draw from): ``torch.manual_seed`` also seeds the other devices, and without an
    initialised CUDA it captures a stack trace for a lazy CUDA seeding each time (0.12 ms per item against
    0.002 ms: ~8 ms of the CPU demo's ~300 ms step).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]


class ResumableSampler(Sampler[int]):
    """Indices of one rank for the current epoch, from the saved position on.

    Args:
        num_items: dataset length.
        shuffle: a fresh permutation per epoch (``torch.randperm`` seeded with ``seed + epoch``, as
            ``DistributedSampler``), else the natural order.
        drop_last: drop the tail so every rank gets ``num_items // world_size`` samples; otherwise pad by
            repeating the first samples to ``ceil(num_items / world_size)`` per rank.
    """

    def __init__(self, num_items: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size) with world_size >= 1, got {rank} and {world_size}")
        if num_items < world_size if drop_last else num_items < 1:
            raise ValueError(f"{num_items} items are too few for {world_size} rank(s)")
        self.num_items, self.shuffle, self.seed = num_items, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.per_rank = num_items // world_size if drop_last else -(-num_items // world_size)
        self.epoch = 0
        self.index = 0  # samples of this epoch already consumed by this rank

    def epoch_indices(self) -> list[int]:
        """All of this rank's indices for the current epoch."""
        if self.shuffle:
            order = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.num_items)
        total = self.per_rank * self.world_size
        if total > self.num_items:  # pad by wrapping around
            order = torch.cat([order, order[: total - self.num_items]])
        return order[:total][self.rank::self.world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.index:])

    def __len__(self) -> int:
        return self.per_rank - self.index

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning."""
        self.epoch, self.index = epoch, 0

    def advance(self, n: int) -> None:
        """Record that ``n`` more samples were consumed; at the end of the epoch, move to the next."""
        self.index = min(self.index + n, self.per_rank)
        if self.index == self.per_rank:
            self.set_epoch(self.epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.index * self.world_size, "num_items": self.num_items,
                "seed": self.seed, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("num_items", "seed", "shuffle"):
            if state[key] != getattr(self, key):
                raise ValueError(f"cannot resume the data order: the checkpoint has {key}={state[key]!r}, this run "
                                 f"{getattr(self, key)!r}; use the same dataset and seed, or start a fresh order")
        self.epoch, self.index = int(state["epoch"]), min(int(state["consumed"]) // self.world_size, self.per_rank)


class ResumableLoader:
    """Batches of the sampler's remaining indices; iterating runs the rest of the current epoch.

    ``for x, y in loader`` yields the remainder of the epoch and then moves to the next one, so the usual
    ``for epoch ...: for batch in loader`` loop works. A batch counts as consumed once it is handed out, so
    ``state_dict()`` saved after training on it resumes with the next one. Each item's random augmentation
    is seeded by its place in the epoch (:func:`item_seed`), whichever worker loads it.
    """

    def __init__(self, dataset: Dataset, sampler: ResumableSampler, batch_size: int, **loader_kwargs: Any) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset, self.sampler, self.batch_size, self.loader_kwargs = dataset, sampler, batch_size, loader_kwargs

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def __len__(self) -> int:
        """Batches in a whole epoch."""
        full, rest = divmod(self.sampler.per_rank, self.batch_size)
        return full + int(rest > 0 and not self.loader_kwargs.get("drop_last", True))

    def __iter__(self) -> Iterator[Any]:
        s = self.sampler
        epoch = s.epoch
        generator = torch.Generator().manual_seed(((s.seed * 1_000_003 + s.rank) * 1_000_003 + epoch) % 2**63)
        # rank r's k-th item of the epoch sits at position k * W + r of the epoch's permutation
        keys = [(index, item_seed(s.seed, epoch, (k * s.world_size + s.rank)))
                for k, index in enumerate(s.epoch_indices()[s.index:], start=s.index)]
        loader = DataLoader(_SeededItems(self.dataset), batch_size=self.batch_size, sampler=keys,
                            generator=generator, **self.loader_kwargs)
        remaining = len(s)
        for batch in loader:
            taken = min(self.batch_size, remaining)
            remaining -= taken
            s.advance(taken)  # counted when handed over: a state_dict() saved after the step includes it
            yield batch
        if s.epoch == epoch:  # drop_last left an incomplete batch: the epoch is over all the same
            s.set_epoch(epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    drop_last: bool = True,
    pin_memory: bool | None = None,
) -> ResumableLoader:
    """A resumable loader of per-rank batches of ``batch_size`` (SPEC 7.3: seeded shuffle, drop_last).

    ``pin_memory`` defaults to whether CUDA is available.
    """
    sampler = ResumableSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size,
                               drop_last=drop_last)
    return ResumableLoader(
        dataset, sampler, batch_size, num_workers=num_workers, drop_last=drop_last,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=False, worker_init_fn=leave_stop_signals_to_main if num_workers else None,
    )


def leave_stop_signals_to_main(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT and SIGTERM: the main process handles them (it finishes the step, saves a
    checkpoint and exits, ``training/interrupt.py``) and then shuts its workers down; they also end with it.
    Schedulers and ``timeout`` signal every process of a job: killed by SIGTERM, a worker made the main process fail
    ("DataLoader worker ... is killed by signal: Terminated", reported as an internal error) before it could save."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
