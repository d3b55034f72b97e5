"""Resumable sampler/loader: DistributedSampler's partition, exact resume, resume on other world sizes."""
import itertools

import pytest
import torch
from torch.utils.data import Dataset

from lamamba.data import ResumableSampler, build_dataloader


class Indices(Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor(i)


def naive_rank_indices(n, seed, epoch, rank, world, drop_last=True):
    """DistributedSampler's documented behaviour, written out."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    per_rank = n // world if drop_last else -(-n // world)
    order = (order + order)[: per_rank * world]
    return order[rank::world]


@pytest.mark.parametrize("drop_last", [True, False])
def test_partition_matches_distributed_sampler(drop_last):
    n, world = 23, 4
    for epoch in range(2):
        got = []
        for rank in range(world):
            s = ResumableSampler(n, seed=5, rank=rank, world_size=world, drop_last=drop_last)
            s.set_epoch(epoch)
            got.append(list(s))
            assert got[-1] == naive_rank_indices(n, 5, epoch, rank, world, drop_last)
        flat = sum(got, [])
        assert len(set(flat)) == (n // world * world if drop_last else n)
    assert list(ResumableSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def consume(loader, n_batches=None):
    """Batches as lists; with ``n_batches``, stop after that many (a batch handed out counts as consumed)."""
    return [batch.tolist() for batch in itertools.islice(loader, n_batches)]


def test_resume_continues_where_it_stopped():
    data = Indices(50)
    ref = build_dataloader(data, 4, seed=3, pin_memory=False)
    assert len(ref) == 12  # 50 // 4 with drop_last
    full = [consume(ref) for _ in range(3)]  # three epochs
    assert ref.epoch == 3 and full[0] != full[1]

    run = build_dataloader(data, 4, seed=3, pin_memory=False)
    first = consume(run, 5)  # stop mid-epoch after 5 batches
    state = run.state_dict()
    assert state["epoch"] == 0 and state["consumed"] == 20

    resumed = build_dataloader(data, 4, seed=3, pin_memory=False)
    resumed.load_state_dict(state)
    assert first + consume(resumed) == full[0]
    assert consume(resumed) == full[1]

    # stopping exactly at an epoch end resumes at the start of the next epoch
    at_end = build_dataloader(data, 4, seed=3, pin_memory=False)
    at_end.load_state_dict({**state, "consumed": 48})
    assert consume(at_end) == [] and consume(at_end) == full[1]


def test_resume_on_another_world_size():
    n = 48
    data = Indices(n)
    two = [build_dataloader(data, 3, seed=1, rank=r, world_size=2, pin_memory=False) for r in range(2)]
    seen = [b for loader in two for b in sum(consume(loader, 2), [])]  # 2 batches of 3 on each of 2 ranks
    state = two[0].state_dict()
    assert state["consumed"] == 12
    rest = []
    for r in range(3):
        loader = build_dataloader(data, 2, seed=1, rank=r, world_size=3, pin_memory=False)
        loader.load_state_dict(state)
        rest += sum(consume(loader), [])
    assert sorted(seen + rest) == list(range(n))


def test_load_state_checks_and_workers():
    loader = build_dataloader(Indices(10), 2, seed=0, pin_memory=False)
    with pytest.raises(ValueError, match="num_items"):
        loader.load_state_dict(build_dataloader(Indices(11), 2, pin_memory=False).state_dict())
    with pytest.raises(ValueError, match="seed"):
        loader.load_state_dict(build_dataloader(Indices(10), 2, seed=1, pin_memory=False).state_dict())
    with pytest.raises(ValueError, match="too few"):
        build_dataloader(Indices(1), 2, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        build_dataloader(Indices(10), 2, rank=2, world_size=2)
    workers = build_dataloader(Indices(10), 3, seed=0, num_workers=1, pin_memory=False, drop_last=False)
    assert len(workers) == 4
    assert sorted(sum(consume(workers), [])) == list(range(10))


class StopSignalHandlers(Dataset):
    """Each item: whether SIGINT and SIGTERM are ignored in the process that loads it."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        import signal
        return torch.tensor([signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
                             signal.getsignal(signal.SIGTERM) == signal.SIG_IGN])


def test_workers_leave_stop_signals_to_the_main_process():
    """A scheduler's SIGTERM reaches every process of the job: the workers ignore it (and SIGINT), so the main
    process can finish the step and save a checkpoint; the main process's own handlers are untouched."""
    import signal
    before = signal.getsignal(signal.SIGTERM)
    batches = consume(build_dataloader(StopSignalHandlers(), 2, num_workers=1, pin_memory=False))
    assert batches and all(all(item) for batch in batches for item in batch)
    assert signal.getsignal(signal.SIGTERM) == before


def test_items_seed_only_the_cpu_generator(monkeypatch):
    """Per-item seeding touches the CPU generator alone (what the datasets draw from): ``torch.manual_seed`` also
    seeds every other device, and without an initialised CUDA it captures a stack trace for a lazy CUDA seeding
    each time (0.12 ms per item, 60x the CPU generator's own seeding)."""
    def fail(seed):
        raise AssertionError("torch.manual_seed called per item")
    monkeypatch.setattr(torch, "manual_seed", fail)
    assert sorted(sum(consume(build_dataloader(Indices(10), 2, seed=0, pin_memory=False)), [])) == list(range(10))
