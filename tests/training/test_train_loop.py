"""The training loop end to end on a tiny model: files, resume, crash-safe checkpoints, the NaN guard."""
import json

import pytest
import torch
from safetensors.torch import load_file

import lamamba.training.checkpoint as training_checkpoint
from lamamba.pretrained import list_checkpoints, load_pretrained
from lamamba.training.checkpoint import load_checkpoint


def test_run_writes_config_metrics_checkpoints_and_grid(tmp_path, train_tiny, read_metrics):
    run = tmp_path / "run"
    assert train_tiny(run, "--max-steps", 3, "--ckpt-every", 2, "--sample-every", 3, "--sample-num", 4,
                      "--sample-steps", 2, "--peak-tflops", 1) == 0
    config = json.loads((run / "run_config.json").read_text())
    assert config["train"]["max_steps"] == 3 and config["train"]["global_batch_size"] == 8
    assert config["model_config"]["embed_dim"] == 8 and config["model_config"]["in_channels"] == 1
    assert config["data"]["space"] == "pixel" and config["data"]["num_classes"] == 10
    assert config["diffusion"] == {"diffusion_steps": 1000, "noise_schedule": "linear", "learn_sigma": True}
    assert config["compiled"] is False and config["cuda_graphs"] is False  # resolved values (CPU: eager)
    assert config["compile_scope"] == "full"
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ("loss", "mse", "vb", "lr", "grad_norm", "images_per_sec", "mfu", "time"):
        assert all(isinstance(r[key], float) for r in records), key
    assert all(abs(r["loss"] - r["mse"] - r["vb"]) < 1e-5 for r in records)
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2, 3]  # every 2 steps and at the end
    assert (run / "samples" / "0000003.png").is_file()
    log = (run / "log.txt").read_text()
    assert "step 3" in log and "first step in" in log and "MFU" in log
    info = json.loads((run / "checkpoints" / "0000003" / "config.json").read_text())
    assert info["step"] == 3 and info["image_size"] == 16 and info["image_channels"] == 1 and info["latent"] is None


def test_resume_continues_bit_exactly(tmp_path, train_tiny, read_metrics):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_tiny(straight, "--max-steps", 6, "--ckpt-every", 3) == 0
    assert train_tiny(split, "--max-steps", 3, "--ckpt-every", 3) == 0
    assert train_tiny(split, "--max-steps", 6, "--ckpt-every", 3) == 0  # auto-resume from step 3
    a, b = read_metrics(straight), read_metrics(split)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "mse", "vb", "grad_norm"):
        assert [r[key] for r in a] == [r[key] for r in b], key  # bit-exact on CPU
    final_a = load_file(straight / "checkpoints" / "0000006" / "training_state.safetensors")
    final_b = load_file(split / "checkpoints" / "0000006" / "training_state.safetensors")
    assert final_a.keys() == final_b.keys()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert "resumed from" in (split / "log.txt").read_text()


def test_crash_while_saving_keeps_previous_checkpoint(tmp_path, train_tiny, monkeypatch, capsys):
    run = tmp_path / "run"
    assert train_tiny(run, "--max-steps", 2, "--ckpt-every", 2) == 0
    before = load_file(run / "checkpoints" / "0000002" / "training_state.safetensors")

    def crash(*args, **kwargs):
        raise OSError("simulated crash while writing the training state")
    monkeypatch.setattr(training_checkpoint, "save_file", crash)
    assert train_tiny(run, "--max-steps", 4, "--ckpt-every", 2) == 3  # a file-system error: exit 3
    assert "simulated crash" in capsys.readouterr().err
    monkeypatch.undo()

    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2]
    assert not any(p.name.startswith(".tmp") for p in (run / "checkpoints").iterdir())
    after = load_file(run / "checkpoints" / "0000002" / "training_state.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    load_checkpoint(run / "checkpoints" / "0000002")
    assert load_pretrained(run).config.embed_dim == 8
    # a save killed without cleanup leaves a dot-directory: ignored by loaders, removed at the next start
    leftover = run / "checkpoints" / ".tmp-0000004-999"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"partial")
    assert load_pretrained(run).config.embed_dim == 8
    assert train_tiny(run, "--max-steps", 3, "--ckpt-every", 3) == 0
    assert not leftover.exists()
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2, 3]


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path, train_tiny, read_metrics):
    run = tmp_path / "run"
    assert train_tiny(run, "--max-steps", 20, "--ckpt-every", 1, "--lr", 1e30) == 1
    log = (run / "log.txt").read_text()
    assert "training diverged at step" in log
    bad_step = int(log.split("training diverged at step ")[1].split(":")[0])
    steps = [s for s, _ in list_checkpoints(run / "checkpoints")]
    assert steps and max(steps) == bad_step - 1  # nothing written at or after the bad step
    state, meta = load_checkpoint(run / "checkpoints" / f"{bad_step - 1:07d}")
    assert meta["step"] == bad_step - 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_keep_last_accumulation_checkpointing_bf16(tmp_path, train_tiny, read_metrics):
    run = tmp_path / "run"
    assert train_tiny(run, "--max-steps", 4, "--ckpt-every", 1, "--keep-last", 2, "--grad-accum", 2,
                      "--grad-checkpointing", "--precision", "bf16") == 0
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [3, 4]
    config = json.loads((run / "run_config.json").read_text())
    assert config["per_rank_batch_size"] == 4 and config["precision"] == "bf16"
    assert all(r["loss"] > 0 for r in read_metrics(run))


def test_gradients_in_own_tensors_train_the_same(tmp_path, train_tiny, read_metrics, monkeypatch):
    """With CUDA graphs and several micro-batches, gradients accumulate in place in tensors that live across steps
    (zeroed, not freed: a graph-owned first gradient would be overwritten by the next micro-batch's replay). Forced
    on the CPU here: the same losses and weights bit for bit, the same gradient storage at every step."""
    from lamamba.training import Trainer

    plain, own = tmp_path / "plain", tmp_path / "own"
    assert train_tiny(plain, "--max-steps", 3, "--grad-accum", 2, "--ckpt-every", 3) == 0
    monkeypatch.setattr(Trainer, "_gradients_in_own_tensors", property(lambda self: True))
    storage, real_step = [], Trainer.train_step

    def step(self, batches):
        out = real_step(self, batches)
        storage.append([p.grad.data_ptr() for p in self.model.parameters()])
        return out

    monkeypatch.setattr(Trainer, "train_step", step)
    assert train_tiny(own, "--max-steps", 3, "--grad-accum", 2, "--ckpt-every", 3) == 0
    assert [r["loss"] for r in read_metrics(own)] == [r["loss"] for r in read_metrics(plain)]
    a, b = (load_checkpoint(run / "checkpoints" / "0000003")[0] for run in (plain, own))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert len(storage) == 3 and storage[0] == storage[1] == storage[2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_training_with_accumulation_follows_eager(tmp_path, train_tiny, read_metrics):
    """``lamamba train`` on a GPU, compiled with CUDA graphs (the default there) and two micro-batches per step, follows
    eager: the same gradient norm at the first step (a gradient overwritten by the second micro-batch's replay would
    hold one micro-batch of the two) and the same losses to bf16 rounding. No label dropout: its draws differ."""
    common = ("--device", "cuda", "--max-steps", 4, "--grad-accum", 2, "--model-arg", "class_dropout_prob=0.0")
    assert train_tiny(tmp_path / "eager", *common, "--no-compile") == 0
    assert train_tiny(tmp_path / "graphed", *common, "--compile", "--cuda-graphs") == 0
    eager, graphed = (read_metrics(tmp_path / run) for run in ("eager", "graphed"))
    torch.testing.assert_close(graphed[0]["grad_norm"], eager[0]["grad_norm"], rtol=2e-2, atol=0)
    torch.testing.assert_close(torch.tensor([r["loss"] for r in graphed]), torch.tensor([r["loss"] for r in eager]),
                               rtol=2e-2, atol=1e-3)


def test_user_errors_are_value_errors(tmp_path, train_tiny):
    from lamamba import train
    with pytest.raises(ValueError, match="not divisible"):
        train.run(train_parse(["--run-dir", str(tmp_path / "r"), "--global-batch-size", "7", "--grad-accum", "2"]))
    with pytest.raises(ValueError, match="needs --data"):
        train.config_from_args(train_parse(["--preset", "paper"]))
    assert train_tiny(tmp_path / "ok", "--max-steps", 1) == 0
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train.run(train_parse(["--run-dir", str(tmp_path / "ok"), "--resume", "never"]))


def train_parse(argv):
    import argparse

    from lamamba import train
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return parser.parse_args(argv)


def test_compiled_run_compiles_the_blocks_of_the_model_and_the_ema(tmp_path, train_tiny, monkeypatch):
    import lamamba.training.loop as loop
    from lamamba.models.compile import compile_model

    compiled = []

    def eager_backend(model, *args, **kwargs):  # Dynamo traces, the graphs run eager: seconds on a CPU
        compiled.append(model)
        return compile_model(model, *args, backend="eager", **kwargs)

    monkeypatch.setattr(loop, "compile_model", eager_backend)
    run = tmp_path / "run"
    assert train_tiny(run, "--max-steps", 2, "--compile", "--compile-scope", "regional", "--sample-every", 2,
                      "--sample-num", 2,
                      "--sample-steps", 1) == 0
    model, ema = compiled                                       # the trained model, then the EMA copy
    assert all(b.forward.__self__ is b for b in [*model.blocks(), *ema.blocks()])
    log = (run / "log.txt").read_text()
    assert "compiled (regional)" in log and "compiling (regional scope" in log
    assert (run / "samples" / "0000002.png").is_file()
    assert load_pretrained(run).config.embed_dim == 8          # parameter names unchanged by compiling
    torch._dynamo.reset()


def test_a_default_compilation_that_fails_falls_back_to_eager(tmp_path, train_tiny, read_metrics, monkeypatch,
                                                               capsys):
    """Compiling by default (no --compile) and failing at the first step: one warning, then the run trains exactly
    as an eager one (same losses, bit-identical weights). An explicit --compile that fails is one line and exit 4."""
    import lamamba.training.loop as loop
    from lamamba.models.compile import compile_model

    def fail(gm, example_inputs):  # a backend that cannot compile (e.g. no C++ compiler on the host)
        raise RuntimeError("no C++ compiler found")

    eager = tmp_path / "eager"
    assert train_tiny(eager, "--max-steps", 3) == 0
    monkeypatch.setattr(loop, "resolve_compile", lambda requested, device, warn=None: True)
    monkeypatch.setattr(loop, "compile_model", lambda model, *a, **k: compile_model(model, *a, backend=fail, **k))
    fallback = tmp_path / "fallback"
    assert train_tiny(fallback, "--max-steps", 3, "--compile-scope", "regional") == 0
    log = (fallback / "log.txt").read_text()
    assert "compiling failed (BackendCompilerFailed" in log and "training without torch.compile" in log
    assert [r["loss"] for r in read_metrics(fallback)] == [r["loss"] for r in read_metrics(eager)]
    weights = [load_file(run / "checkpoints" / "0000003" / "model.safetensors") for run in (eager, fallback)]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    capsys.readouterr()
    assert train_tiny(tmp_path / "explicit", "--max-steps", 1, "--compile", "--compile-scope", "regional") == 4
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "compiling failed (BackendCompilerFailed (RuntimeError: no C++ compiler found)); run with --no-compile" in err
    torch._dynamo.reset()


def test_a_default_compilation_of_the_ema_that_fails_samples_grids_eagerly(tmp_path, train_tiny, monkeypatch):
    """Regional scope compiles the EMA's blocks too, which compile at the first sample grid: if that fails (and
    compiling was the default), one warning and the grid is sampled eagerly; training goes on."""
    import lamamba.training.loop as loop
    from lamamba.models.compile import compile_model

    def fail(gm, example_inputs):
        raise RuntimeError("no C++ compiler found")

    calls = []

    def compile_ema_failing(model, *args, **kwargs):  # the trained model's graphs run eager, the EMA's fail
        calls.append(model)
        return compile_model(model, *args, backend="eager" if len(calls) == 1 else fail, **kwargs)

    monkeypatch.setattr(loop, "resolve_compile", lambda requested, device, warn=None: True)
    monkeypatch.setattr(loop, "compile_model", compile_ema_failing)
    run = tmp_path / "run"
    assert train_tiny(run, "--max-steps", 2, "--compile-scope", "regional", "--sample-every", 1, "--sample-num", 2,
                      "--sample-steps", 1) == 0
    log = (run / "log.txt").read_text()
    assert "compiling the EMA model for sample grids failed (BackendCompilerFailed (RuntimeError: no C++" in log
    assert (run / "samples" / "0000001.png").is_file() and (run / "samples" / "0000002.png").is_file()
    torch._dynamo.reset()


def test_noise_offset_adds_one_draw_per_sample_and_channel(tmp_path, train_tiny, monkeypatch):
    """--noise-offset a: the training noise is the run's usual draw plus a x one N(0, 1) per sample and channel,
    drawn after it from the same generator (so --noise-offset 0 keeps the paper's noise and random stream)."""
    from lamamba.diffusion.gaussian_diffusion import GaussianDiffusion
    from lamamba.sample import sample_seed

    seen = []
    original = GaussianDiffusion.training_losses

    def spy(self, model, x0, t, model_kwargs=None, noise=None):
        seen.append((t.clone(), noise.clone()))
        return original(self, model, x0, t, model_kwargs, noise)

    monkeypatch.setattr(GaussianDiffusion, "training_losses", spy)
    for offset in (0, 0.5):
        assert train_tiny(tmp_path / f"offset{offset}", "--max-steps", 1, "--noise-offset", offset) == 0
    (t0, plain), (t1, offset) = seen
    g = torch.Generator().manual_seed(sample_seed(0, 0))
    t = torch.randint(0, 1000, (len(t0),), generator=g)
    base = torch.randn(plain.shape, generator=g)
    per_channel = torch.randn((*plain.shape[:2], 1, 1), generator=g)
    assert torch.equal(t0, t) and torch.equal(t1, t) and torch.equal(plain, base)
    torch.testing.assert_close(offset, base + 0.5 * per_channel, rtol=0, atol=1e-6)
    assert train_tiny(tmp_path / "bad", "--noise-offset", -1) != 0
