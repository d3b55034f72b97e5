"""``lamamba sample``: outputs, per-sample seeding independent of batching and sharding, the .npz writer."""
import numpy as np
import pytest
import torch
from PIL import Image

import lamamba
from lamamba import sample
from lamamba.diffusion import SAMPLERS, cfg_first_half, cfg_model_kwargs, cfg_noise, create_diffusion
from lamamba.pretrained import save_pretrained


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = lamamba.create_model("LaMamba-Diff-S", image_size=16, in_channels=1, num_classes=10,
                                 latent_downsample=1, embed_dim=8, cond_dim=16, num_heads=2, window_size=4,
                                 patch_size=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # the zero-initialised output layer would make every sample 0
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    info = {"model": tiny_model.config.to_dict(), "image_size": 16, "image_channels": 1, "num_classes": 10,
            "latent": None, "step": 7,
            "diffusion": {"diffusion_steps": 1000, "noise_schedule": "linear", "learn_sigma": True}}
    return save_pretrained(tiny_model, path, info)


def test_cli_writes_grid_images_and_npz(checkpoint, tmp_path):
    out = tmp_path / "out"
    code = sample.main([str(checkpoint), "--num-samples", "5", "--labels", "3,1", "--steps", "3", "--batch-size",
                        "2", "--npz", "--save-images", "--out", str(out), "--no-progress"])
    assert code == 0
    with np.load(out / "samples.npz") as data:
        images, labels = data["arr_0"], data["arr_1"]
    assert images.shape == (5, 16, 16, 1) and images.dtype == np.uint8
    assert labels.tolist() == [3, 1, 3, 1, 3] and labels.dtype == np.int64
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(5)]
    assert np.array_equal(np.asarray(Image.open(out / "images" / "000004.png")), images[4, ..., 0])
    assert Image.open(out / "grid.png").size[0] > 16
    assert not (out / ".shards").exists()


@pytest.mark.parametrize("sampler", ["ddpm", "dpm++2m-sde"])
def test_same_seed_same_images_for_any_batch_size(checkpoint, tmp_path, sampler):
    arrays = []
    for batch in (1, 4):
        out = tmp_path / f"b{batch}"
        assert sample.main([str(checkpoint), "--num-samples", "4", "--sampler", sampler, "--steps", "4",
                            "--cfg-scale", "2", "--batch-size", str(batch), "--npz", "--out", str(out),
                            "--seed", "3", "--no-progress"]) == 0
        with np.load(out / "samples.npz") as data:
            arrays.append((data["arr_0"], data["arr_1"]))
    assert np.array_equal(arrays[0][0], arrays[1][0]) and np.array_equal(arrays[0][1], arrays[1][1])


@pytest.mark.parametrize("sampler,cfg_scale", [("ddpm", 3.0), ("ddim", 1.0), ("dpm++2m", 3.0), ("dpm++2m-sde", 3.0),
                                              ("dpm++2m-sde", 1.0)])
def test_sample_depends_only_on_seed_and_index(tiny_model, sampler, cfg_scale):
    """Simulated shards: samples 0..5 in one batch equal ranks' blocks sampled separately."""
    diffusion = create_diffusion()
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    kw = dict(seed=11, sampler=sampler, steps=4, cfg_scale=cfg_scale)
    whole = sample.generate(tiny_model, diffusion, indices=range(6), labels=labels, **kw)
    parts = [sample.generate(tiny_model, diffusion, indices=sample.shard_range(6, r, 4),
                             labels=labels[list(sample.shard_range(6, r, 4))], **kw) for r in range(4)]
    # equal up to float rounding that depends on the batch shape (the noise itself is identical)
    torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-3, atol=1e-4)
    other = sample.generate(tiny_model, diffusion, indices=range(6), labels=labels, **dict(kw, seed=12))
    assert not torch.allclose(other, whole)


def test_ddpm_of_one_sample_equals_reference_loop(tiny_model):
    """Per-sample ancestral noise reproduces GaussianDiffusion's DDPM loop run with that sample's generator."""
    diffusion = create_diffusion()
    ours = sample.generate(tiny_model, diffusion, indices=[5], labels=torch.tensor([2]), seed=1, sampler="ddpm",
                           steps=5)
    g = torch.Generator().manual_seed(sample.sample_seed(1, 5))
    ref = diffusion.sample(tiny_model, (1, 1, 16, 16), sampler="ddpm", steps=5, model_kwargs={"y": torch.tensor([2])},
                           generator=g)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_sde_of_one_sample_equals_reference_loop(tiny_model):
    """Per-sample step noise: one sample of generate is the library SDE loop run with that sample's generator
    (x_T first, then one draw per step), unguided and guided (the same noise in both halves)."""
    diffusion, y = create_diffusion(), torch.tensor([2])
    ours = sample.generate(tiny_model, diffusion, indices=[5], labels=y, seed=1, sampler="dpm++2m-sde", steps=5)
    g = torch.Generator().manual_seed(sample.sample_seed(1, 5))
    ref = diffusion.sample(tiny_model, (1, 1, 16, 16), sampler="dpm++2m-sde", steps=5, model_kwargs={"y": y},
                           generator=g)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)

    ours = sample.generate(tiny_model, diffusion, indices=[5], labels=y, seed=1, sampler="dpm++2m-sde", steps=5,
                           cfg_scale=2.5)
    g = torch.Generator().manual_seed(sample.sample_seed(1, 5))
    x_T = torch.randn(1, 1, 16, 16, generator=g)
    ref = diffusion.dpm_solver_sde_sample_loop(
        tiny_model.forward_with_cfg, None, cfg_noise(x_T), steps=5, model_kwargs=cfg_model_kwargs(y, 10, 2.5),
        noise_fn=lambda shape: cfg_noise(torch.randn(1, 1, 16, 16, generator=g)))
    torch.testing.assert_close(ours, cfg_first_half(ref), rtol=0, atol=0)


def test_cli_sampler_choices_are_the_library_samplers():
    import argparse
    parser = argparse.ArgumentParser()
    sample.add_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "sampler")
    assert tuple(action.choices) == SAMPLERS and "dpm++2m-sde" in SAMPLERS
    assert "pure-noise" in action.help


def test_shard_range_partitions():
    for n in (0, 1, 7, 64):
        for world in (1, 2, 3, 8):
            blocks = [sample.shard_range(n, r, world) for r in range(world)]
            assert [i for b in blocks for i in b] == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_sample_seed_is_stable_and_distinct():
    assert sample.sample_seed(0, 0) == sample.sample_seed(0, 0)
    seeds = {sample.sample_seed(s, i) for s in range(3) for i in range(1000)}
    assert len(seeds) == 3000 and all(0 <= s < 2**63 for s in seeds)


def test_write_npz_streams_shards(tmp_path):
    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8) for n in (3, 0, 2)]
    paths = []
    for k, chunk in enumerate(chunks):
        paths.append(tmp_path / f"{k}.npy")
        np.save(paths[-1], chunk)
    sample.write_npz(tmp_path / "x.npz", paths, np.arange(5))
    with np.load(tmp_path / "x.npz") as data:
        assert np.array_equal(data["arr_0"], np.concatenate(chunks)) and data["arr_1"].tolist() == list(range(5))


def test_quantisation_and_grid():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.999, 1.0]).view(1, 1, 1, 5)
    assert sample.to_uint8(x)[0, 0, :, 0].tolist() == [0, 64, 128, 255, 255]  # 127.5 x + 128, clamped
    grid = sample.make_grid(np.zeros((5, 8, 8, 1), np.uint8), nrow=2, min_side=8)
    assert grid.shape == (2 + 3 * 10, 2 + 2 * 10, 1)


def test_bad_labels_are_value_errors(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="outside"):
        sample.run(_parse([str(checkpoint), "--labels", "10", "--out", str(tmp_path)]))
    with pytest.raises(FileNotFoundError):
        sample.run(_parse([str(tmp_path / "missing")]))


def _parse(argv):
    import argparse
    parser = argparse.ArgumentParser()
    sample.add_arguments(parser)
    return parser.parse_args(argv)


def test_guidance_for_an_unconditional_model_is_an_error(tmp_path):
    torch.manual_seed(0)
    model = lamamba.create_model("LaMamba-Diff-S", image_size=16, in_channels=1, num_classes=0, latent_downsample=1,
                                 embed_dim=8, cond_dim=16, num_heads=2, window_size=4)
    info = {"model": model.config.to_dict(), "image_size": 16, "image_channels": 1, "num_classes": 0,
            "latent": None, "step": 1,
            "diffusion": {"diffusion_steps": 1000, "noise_schedule": "linear", "learn_sigma": True}}
    ckpt = save_pretrained(model, tmp_path / "uncond", info)
    with pytest.raises(ValueError, match="unconditional"):
        sample.run(_parse([str(ckpt), "--cfg-scale", "4", "--out", str(tmp_path / "a")]))
    # without --cfg-scale an unconditional model samples unguided
    assert sample.main([str(ckpt), "--num-samples", "2", "--steps", "2", "--sampler", "ddim",
                        "--out", str(tmp_path / "b"), "--no-progress"]) == 0


def test_clip_denoised_defaults_to_on_in_pixel_space(checkpoint, tmp_path):
    assert sample.clip_default({"latent": None}) and not sample.clip_default({"latent": {"vae": "v", "scale": 0.18}})
    images = {}
    for flag in ([], ["--clip-denoised"], ["--no-clip-denoised"]):
        out = tmp_path / (flag[0] if flag else "default")
        assert sample.main([str(checkpoint), "--num-samples", "2", "--labels", "4", "--sampler", "ddim", "--steps",
                            "3", "--npz", "--out", str(out), "--no-progress", *flag]) == 0
        with np.load(out / "samples.npz") as data:
            images[out.name] = data["arr_0"]
    assert np.array_equal(images["default"], images["--clip-denoised"])  # the checkpoint is a pixel-space model
    assert not np.array_equal(images["default"], images["--no-clip-denoised"])


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_center_noise_starts_from_the_zero_mean_noise(tiny_model, cfg_scale):
    """center_noise: the ODE sampler run from each sample's x_T minus its per-channel spatial mean."""
    diffusion, y = create_diffusion(), torch.tensor([2, 7])
    kw = dict(indices=[3, 5], labels=y, seed=1, sampler="ddim", steps=4, cfg_scale=cfg_scale)
    ours = sample.generate(tiny_model, diffusion, center_noise=True, **kw)
    x_T = torch.stack([torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(sample.sample_seed(1, i)))
                       for i in (3, 5)])
    x_T = x_T - x_T.mean(dim=(-2, -1), keepdim=True)
    assert x_T.mean(dim=(-2, -1)).abs().max() < 1e-6
    if cfg_scale == 1.0:
        ref = diffusion.sample(tiny_model, None, x_T, sampler="ddim", steps=4, model_kwargs={"y": y})
    else:
        ref = cfg_first_half(diffusion.sample(tiny_model.forward_with_cfg, None, cfg_noise(x_T), sampler="ddim",
                                              steps=4, model_kwargs=cfg_model_kwargs(y, 10, cfg_scale)))
    torch.testing.assert_close(ours, ref)
    assert not torch.allclose(ours, sample.generate(tiny_model, diffusion, **kw))


def test_cli_center_noise(checkpoint, tmp_path, capsys):
    assert sample.main([str(checkpoint), "--num-samples", "2", "--labels", "4", "--sampler", "ddim", "--steps", "3",
                        "--npz", "--out", str(tmp_path / "c"), "--no-progress", "--center-noise"]) == 0
    assert "centered noise" in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_compiled_cuda_graph_sampling_equals_eager(checkpoint, tmp_path):
    """``--compile --cuda-graphs`` gives eager's images. The guided multistep sampler keeps earlier network
    outputs, which a replayed graph must not overwrite, and the last, smaller batch is padded to the full one."""
    images = {}
    for mode, flags in (("eager", ["--no-compile"]), ("graphs", ["--compile", "--cuda-graphs"])):
        out = tmp_path / mode
        assert sample.main([str(checkpoint), "--num-samples", "6", "--labels", "3,1", "--steps", "5",
                            "--batch-size", "4", "--sampler", "dpm++2m", "--cfg-scale", "2", "--npz", "--out",
                            str(out), "--no-progress", "--device", "cuda", *flags]) == 0
        with np.load(out / "samples.npz") as data:
            images[mode] = data["arr_0"].astype(int)
    diff = np.abs(images["graphs"] - images["eager"])
    assert diff.mean() < 0.5 and diff.max() <= 8, (diff.mean(), diff.max())  # rounding of other kernels only


def test_compiled_sampling_pads_the_last_batch(checkpoint, tmp_path, monkeypatch):
    """A compiled network samples every batch at the full batch size (one graph): the last batch is filled up with
    repeats of its last sample and the extra dropped; the images are the uncompiled run's. Compilation itself is
    replaced by a recorder of batch sizes (compiling on the CPU would take minutes)."""
    from lamamba.models import compile as compile_module

    sizes = []

    def record(model, cuda_graphs=False):
        forward = model.forward
        model.forward = lambda x, *a, **k: (sizes.append(x.shape[0]), forward(x, *a, **k))[1]
        return model

    def run(name, *flags):
        out = tmp_path / name
        assert sample.main([str(checkpoint), "--num-samples", "7", "--labels", "3,1", "--steps", "3", "--batch-size",
                            "3", "--sampler", "ddim", "--npz", "--out", str(out), "--no-progress", *flags]) == 0
        with np.load(out / "samples.npz") as data:
            return data["arr_0"], data["arr_1"]

    eager = run("eager", "--no-compile")
    monkeypatch.setattr(compile_module, "compile_for_sampling", record)
    monkeypatch.setattr(compile_module, "resolve_sampling_compile", lambda *a, **k: True)
    padded = run("padded")
    assert set(sizes) == {6} and len(sizes) == 3 * 3  # 7 samples: batches of 3, 3 and 1 + 2 repeats, guided (x2)
    assert np.array_equal(padded[1], eager[1]) and np.array_equal(padded[0], eager[0])


def test_a_default_compilation_that_fails_falls_back_to_eager(checkpoint, tmp_path, monkeypatch, capsys):
    """A default compilation (no --compile) that fails at the first batch: one line on stderr, then eager sampling
    with the eager run's images. An explicit --compile that fails: one line and exit 4."""
    from lamamba.models import compile as compile_module

    def fail(gm, example_inputs):  # a backend that cannot compile (e.g. no C++ compiler on the host)
        raise RuntimeError("no C++ compiler found")

    real = compile_module.compile_for_sampling

    def run(name, *flags):
        out = tmp_path / name
        code = sample.main([str(checkpoint), "--num-samples", "5", "--labels", "3,1", "--steps", "2", "--batch-size",
                            "3", "--sampler", "ddim", "--npz", "--out", str(out), "--no-progress", *flags])
        if code:
            return code
        with np.load(out / "samples.npz") as data:
            return data["arr_0"]

    eager = run("eager", "--no-compile")
    monkeypatch.setattr(compile_module, "compile_for_sampling", lambda model, **k: real(model, backend=fail, **k))
    monkeypatch.setattr(compile_module, "resolve_sampling_compile", lambda requested, *a, **k: requested is not False)
    capsys.readouterr()
    assert np.array_equal(run("fallback"), eager)
    assert "compiling failed (BackendCompilerFailed (RuntimeError: no C++ compiler found)); sampling without" \
        in capsys.readouterr().err
    assert run("explicit", "--compile", "--no-cuda-graphs") == 4
    assert "run with --no-compile" in capsys.readouterr().err.strip().splitlines()[-1]
    torch._dynamo.reset()


def test_sampling_compiles_by_default_only_large_cuda_jobs():
    from lamamba.models.compile import SAMPLING_COMPILE_MIN_EVALUATIONS as least, resolve_sampling_compile

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    try:
        import triton  # noqa: F401
        triton_present = True
    except ImportError:
        triton_present = False
    assert resolve_sampling_compile(None, cuda, least) is triton_present
    assert resolve_sampling_compile(None, cuda, least - 1) is False
    assert resolve_sampling_compile(None, cpu, 10 * least) is False
    assert resolve_sampling_compile(True, cpu, 1) is True and resolve_sampling_compile(False, cuda, 10 * least) is False
