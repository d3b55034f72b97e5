"""Resume with data-loader workers and augmentation, checkpoint pruning and history, non-finite weights,
permissions, the CPU thread count, and the run directory's life cycle."""
import os
import time
import stat

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lamamba import distributed
from lamamba.distributed import cpu_threads
from lamamba.pretrained import list_checkpoints


@pytest.fixture(scope="module")
def flip_folder(tmp_path_factory):
    """24 asymmetric 16x16 RGB images in two classes: a flip changes every image."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"class{c}").mkdir()
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


def _state(run, step):
    return load_file(run / "checkpoints" / f"{step:07d}" / "training_state.safetensors")


def test_resume_with_a_worker_and_random_flips_is_bit_identical(tmp_path, train_tiny, read_metrics, flip_folder):
    data = ["--data", flip_folder, "--image-size", 16, "--num-workers", 1, "--ckpt-every", 2]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_tiny(straight, *data, "--max-steps", 5) == 0
    assert train_tiny(split, *data, "--max-steps", 2) == 0   # stops mid-epoch (3 batches per epoch)
    assert train_tiny(split, *data, "--max-steps", 5) == 0
    a, b = read_metrics(straight), read_metrics(split)
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    final_a, final_b = _state(straight, 5), _state(split, 5)
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    # and the number of workers does not change the augmentation either
    zero = tmp_path / "zero"
    assert train_tiny(zero, *data[:4], "--num-workers", 0, "--ckpt-every", 2, "--max-steps", 5) == 0
    assert [r["loss"] for r in read_metrics(zero)] == [r["loss"] for r in a]


def test_pruning_after_resuming_an_older_checkpoint_keeps_the_new_one(tmp_path, train_tiny, capsys):
    run = tmp_path / "run"
    assert train_tiny(run, "--max-steps", 4, "--ckpt-every", 1, "--keep-last", 0) == 0
    # continuing from step 2 in the same directory would mix two histories (3 and 4 are newer): refused
    assert train_tiny(run, "--resume", run / "checkpoints" / "0000002", "--max-steps", 4) == 2
    assert "holds checkpoints newer than step 2 (3, 4)" in capsys.readouterr().err
    # in a new directory it works; keep-last counts the checkpoint just written and the ones before it
    other = tmp_path / "other"
    assert train_tiny(other, "--resume", run / "checkpoints" / "0000002", "--max-steps", 4, "--ckpt-every", 1,
                      "--keep-last", 2) == 0
    assert [s for s, _ in list_checkpoints(other / "checkpoints")] == [3, 4]
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [1, 2, 3, 4]


def test_pruning_never_deletes_a_newer_checkpoint_or_shows_a_half_deleted_one(tmp_path, monkeypatch):
    import lamamba.training.checkpoint as tc

    root = tmp_path / "checkpoints"
    for step in (5, 15, 20):
        (root / f"{step:07d}").mkdir(parents=True)
        (root / f"{step:07d}" / "model.safetensors").write_bytes(b"")
    seen = []
    real_rmtree = tc.shutil.rmtree

    def watch(path, *args, **kwargs):  # what a concurrent reader sees while a checkpoint is deleted
        seen.append(sorted(p.name for p in root.iterdir() if not p.name.startswith(".")))
        real_rmtree(path, *args, **kwargs)
    monkeypatch.setattr(tc.shutil, "rmtree", watch)
    (root / "0000006").mkdir()
    (root / "0000006" / "model.safetensors").write_bytes(b"")
    for stale in [p for s, p in list_checkpoints(root) if s < 6][:-1]:
        tc._delete(stale)
    assert all("0000005" not in names for names in seen)  # renamed away before its files were removed


def test_finite_loss_but_non_finite_weights_are_never_saved(tmp_path, train_tiny, monkeypatch, capsys):
    from lamamba.training.loop import Trainer

    real_step = Trainer.train_step

    def poisoned(self, batches):  # an update that makes a weight infinite while the loss was finite
        stats = real_step(self, batches)
        if self.step == 3:
            with torch.no_grad():
                next(self.model.parameters()).view(-1)[0] = float("inf")
        return stats
    monkeypatch.setattr(Trainer, "train_step", poisoned)
    run = tmp_path / "run"
    assert train_tiny(run, "--max-steps", 5, "--ckpt-every", 1) == 1   # exit 1: diverged
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [1, 2]
    log = (run / "log.txt").read_text()
    assert "the weights are no longer finite" in log and "the last good checkpoint is" in log
    assert log.rstrip().endswith("--precision fp32")
    assert capsys.readouterr().err.count("Traceback") == 0
    assert train_tiny(tmp_path / "r2", "--lr", "1e38") == 2             # would overflow AdamW's float32 step


def test_checkpoints_follow_the_umask(tmp_path, train_tiny):
    old = os.umask(0o022)
    try:
        assert train_tiny(tmp_path / "run", "--max-steps", 1) == 0
    finally:
        os.umask(old)
    for f in (tmp_path / "run" / "checkpoints" / "0000001").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_cpu_threads_default_leaves_busy_cores_alone(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(distributed, "_busy_cores", lambda: 1.1)
    assert cpu_threads() == 1                     # one other CPU-bound process on two cores
    monkeypatch.setattr(distributed, "_busy_cores", lambda: 0.0)
    assert cpu_threads() == 2 and cpu_threads(processes=2) == 1
    monkeypatch.setattr(distributed, "_busy_cores", lambda: 9.0)
    assert cpu_threads() == 1
    assert cpu_threads(3) == 3                    # --threads wins
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cpu_threads() == 2
    with pytest.raises(ValueError, match="--threads"):
        cpu_threads(0)


def test_busy_cores_sees_a_busy_process_and_not_a_finished_one():
    import subprocess
    import sys
    assert 0.0 <= distributed._busy_cores() <= (os.cpu_count() or 1)
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert distributed._busy_cores(0.3) > 0.5   # one core spinning
    finally:
        spin.kill()
        spin.wait()

def test_numbered_runs_are_not_wasted_by_failed_starts(tmp_path, capsys):
    from lamamba import cli

    results = tmp_path / "results"
    base = ["train", "--results-dir", str(results), "--model-arg", "embed_dim=8", "--model-arg", "cond_dim=16",
            "--global-batch-size", "8", "--sample-num", "0", "--no-tensorboard", "--max-steps", "1"]
    assert cli.main([*base, "--model-arg", "num_heads=3"]) == 2    # fails while building the model
    assert not results.exists() or not any(results.iterdir())
    assert cli.main(base) == 0
    assert cli.main(base) == 0                                      # finished: the same command starts anew
    assert sorted(p.name for p in results.iterdir()) == ["000-LaMamba-Diff-S", "001-LaMamba-Diff-S"]
