"""Two processes (gloo, CPU): DDP follows the single-process loss curve at the same global batch size, and
sharded sampling writes the same .npz as one process."""
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

TINY = ["--model-arg", "embed_dim=8", "--model-arg", "cond_dim=16", "--model-arg", "class_dropout_prob=0.0",
        "--global-batch-size", "8", "--sample-num", "0", "--no-tensorboard", "--log-every", "1", "--max-steps", "3",
        "--ckpt-every", "3"]
SAMPLE = ["--num-samples", "5", "--steps", "3", "--cfg-scale", "2", "--npz", "--no-progress"]


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _worker(rank, world_size, ports, run_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(ports[0]))
    torch.set_num_threads(1)
    from lamamba import sample, train
    code = train.main(["--run-dir", run_dir, "--device", "cpu", *TINY])
    if code == 0:  # a second process group in the same processes gets its own rendezvous port
        os.environ["MASTER_PORT"] = str(ports[1])
        code = sample.main([run_dir, *SAMPLE, "--out", os.path.join(run_dir, "sharded"), "--device", "cpu"])
    if code != 0:
        raise SystemExit(code)


def _gpu_worker(rank, world_size, ports, run_dir):
    """A rank of a two-process run on GPU 0: gloo, since NCCL refuses two ranks on one GPU (``lamamba train`` joins
    the process group it finds)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(ports[0]))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    from lamamba import train
    code = train.main(["--run-dir", run_dir, "--device", "cuda:0", "--grad-accum", "2", *TINY])
    if code != 0:
        raise SystemExit(code)


def _losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_two_process_ddp_matches_one_process(tmp_path):
    from lamamba import train
    single, double = str(tmp_path / "single"), str(tmp_path / "ddp")
    assert train.main(["--run-dir", single, "--device", "cpu", *TINY]) == 0
    mp.start_processes(_worker, args=(2, _free_ports(2), double), nprocs=2, join=True, start_method="spawn")
    a, b = _losses(single), _losses(double)
    assert [r["step"] for r in b] == [1, 2, 3]
    for key in ("loss", "mse", "vb", "grad_norm"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-4, abs=1e-6), key
    config = json.loads((tmp_path / "ddp" / "run_config.json").read_text())
    assert config["world_size"] == 2 and config["per_rank_batch_size"] == 4
    state = json.loads((tmp_path / "ddp" / "checkpoints" / "0000003" / "training_state.json").read_text())
    assert len(state["rng"]) == 2  # every rank's generator state is saved

    from lamamba import sample
    assert sample.main([double, *SAMPLE, "--out", str(tmp_path / "one"), "--batch-size", "2"]) == 0
    with np.load(tmp_path / "one" / "samples.npz") as one, np.load(tmp_path / "ddp" / "sharded" / "samples.npz") as two:
        assert one["arr_0"].shape == (5, 16, 16, 1)
        assert np.array_equal(one["arr_0"], two["arr_0"]) and np.array_equal(one["arr_1"], two["arr_1"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_two_processes_with_cuda_graphs_follow_one_eager_process(tmp_path):
    """``lamamba train``'s multi-GPU default (compiled regionally, CUDA graphs) in two processes exchanging gradients,
    two micro-batches per step, follows one eager process at the same global batch (bf16 compile rounding only)."""
    from lamamba import train
    single, double = str(tmp_path / "single"), str(tmp_path / "ddp")
    assert train.main(["--run-dir", single, "--device", "cuda", "--no-compile", "--grad-accum", "2", *TINY]) == 0
    mp.start_processes(_gpu_worker, args=(2, _free_ports(1), double), nprocs=2, join=True, start_method="spawn")
    config = json.loads((tmp_path / "ddp" / "run_config.json").read_text())
    assert config["world_size"] == 2 and config["compiled"] and config["cuda_graphs"]
    assert config["compile_scope"] == "regional"
    a, b = _losses(single), _losses(double)
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=2e-2, abs=1e-3), key
