"""diffusers interop: the wrapper's call convention, DiTPipeline == ``lamamba sample`` with DDIM, export/import.

Equality claim (stated in README and ``lamamba.interop.diffusers_model``): DiTPipeline with the exported
DDIMScheduler (eta 0) and ``lamamba sample --sampler ddim`` with ``--steps`` = the run's diffusion steps, the same
per-sample initial noise and the default guidance (all noise channels) give samples equal within a relative 1e-4
(before clamping), images within 1e-4 in [0, 1] and within one level in uint8 (the ``.npz`` of ``lamamba sample``).
"""
import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

import lamamba  # noqa: E402
from lamamba import cli, sample  # noqa: E402
from lamamba.diffusion import create_diffusion  # noqa: E402
from lamamba.pretrained import save_pretrained  # noqa: E402

TINY = {
    "DiT-S/2": dict(hidden_size=16, depth=1, num_heads=2),
    "LaMamba-Diff-S": dict(embed_dim=8, cond_dim=16, num_heads=2, window_size=4, patch_size=2, ssm_ratio=1.0,
                           depths=(1, 1, 1, 0), decoder_depths=(0, 1, 1, 1)),
}
# the tiny DiT samples the paper's 1000-step diffusion; the slower tiny LaMamba-Diff a 25-step one
DIFFUSION_STEPS = {"DiT-S/2": 1000, "LaMamba-Diff-S": 25}


def tiny_run(name, root, diffusion_steps=1000):
    torch.manual_seed(0)
    model = lamamba.create_model(name, image_size=16, in_channels=1, num_classes=10, latent_downsample=1,
                                 **TINY[name])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # the zero-initialised output layer would make every sample 0
    info = {"model": model.config.to_dict(), "image_size": 16, "image_channels": 1, "num_classes": 10,
            "class_names": [str(i) for i in range(10)], "latent": None, "step": 12,
            "diffusion": {"diffusion_steps": diffusion_steps, "noise_schedule": "linear", "learn_sigma": True}}
    save_pretrained(model, root / "run" / "checkpoints" / "0000012", info)
    return root / "run", model.eval()


@pytest.fixture(scope="module", params=list(TINY))
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param.replace("/", "_"))
    run, model = tiny_run(request.param, root, DIFFUSION_STEPS[request.param])
    assert cli.main(["export-diffusers", str(run), str(root / "pipe")]) == 0
    return run, model, root / "pipe"


def load_pipeline(path):
    from diffusers import DiTPipeline

    import lamamba.interop.diffusers_model  # noqa: F401  (diffusers loads classes of imported modules only)

    pipe = DiTPipeline.from_pretrained(path, low_cpu_mem_usage=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_wrapper_call_convention_and_null_label(tmp_path):
    from lamamba.interop.diffusers_model import LaMambaTransformer2DModel

    _, model = tiny_run("DiT-S/2", tmp_path)
    wrapper = LaMambaTransformer2DModel.from_lamamba(model)
    assert (wrapper.config.sample_size, wrapper.config.in_channels, wrapper.config.out_channels) == (16, 1, 2)
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([5, 5, 5])
    out = wrapper(x, timestep=t, class_labels=torch.tensor([3, 1000, 9])).sample
    torch.testing.assert_close(out, model(x, t, torch.tensor([3, 10, 9])))  # 1000 = DiTPipeline's null label
    assert not torch.allclose(out[1], model(x, t, torch.tensor([3, 3, 9]))[1])
    torch.testing.assert_close(wrapper(x, 5, torch.tensor([3, 1000, 9])).sample, out)  # scalar timestep
    with pytest.raises(ValueError, match="class labels must lie in"):
        wrapper(x, t, torch.tensor([3, 10, 9]))


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_dit_pipeline_ddim_equals_lamamba_sample(exported, cfg_scale, tmp_path):
    run, model, pipe_dir = exported
    pipe = load_pipeline(pipe_dir)
    final = {}
    decode = pipe.vae.decode
    pipe.vae.decode = lambda z, **kw: decode(final.setdefault("z", z.clone()), **kw)  # the samples before clamping
    steps = pipe.scheduler.config.num_train_timesteps  # DDIMScheduler's grid equals ours at N = T
    labels, seed = [3, 7], 5
    generators = [torch.Generator().manual_seed(sample.sample_seed(seed, i)) for i in range(len(labels))]
    images = pipe(class_labels=labels, guidance_scale=cfg_scale, generator=generators, num_inference_steps=steps,
                  output_type="pt").images                                        # (2, 1, 16, 16) in [0, 1]

    ours = sample.generate(model, create_diffusion(diffusion_steps=steps), indices=range(2),
                           labels=torch.tensor(labels), seed=seed, sampler="ddim", steps=steps, cfg_scale=cfg_scale)
    # a random tiny model's samples are far outside [-1, 1]: compare them before clamping too
    torch.testing.assert_close(final["z"], ours, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(images, (ours.clamp(-1, 1) + 1) / 2, atol=1e-4, rtol=0)

    out = tmp_path / "samples"
    assert cli.main(["sample", str(run), "--labels", "3,7", "--seed", str(seed), "--sampler", "ddim", "--steps",
                     str(steps), "--cfg-scale", str(cfg_scale), "--npz", "--out", str(out), "--no-progress",
                     "--no-clip-denoised"]) == 0  # the exported scheduler does not clip (clip_sample=False)
    with np.load(out / "samples.npz") as data:
        cli_images = data["arr_0"].astype(int)
    pipe_images = sample.to_uint8(images * 2 - 1).astype(int)
    assert np.abs(cli_images - pipe_images).max() <= 1


@pytest.mark.parametrize("scheduler", ["DDPMScheduler", "DPMSolverMultistepScheduler"])
def test_other_schedulers_run_unchanged(exported, scheduler):
    import diffusers

    _, _, pipe_dir = exported
    pipe = load_pipeline(pipe_dir)
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    images = pipe(class_labels=[1, 2], guidance_scale=2.0, generator=torch.Generator().manual_seed(0),
                  num_inference_steps=5, output_type="np").images
    assert images.shape == (2, 16, 16, 1) and np.isfinite(images).all()


def test_save_pretrained_round_trip_and_import_back(exported, tmp_path):
    from lamamba.interop.diffusers_model import LaMambaTransformer2DModel

    run, model, pipe_dir = exported
    transformer = LaMambaTransformer2DModel.from_pretrained(pipe_dir, subfolder="transformer", low_cpu_mem_usage=False)
    transformer.save_pretrained(tmp_path / "t")
    again = LaMambaTransformer2DModel.from_pretrained(tmp_path / "t", low_cpu_mem_usage=False)
    for key, value in model.state_dict().items():
        assert torch.equal(again.model.state_dict()[key], value), key

    assert cli.main(["import-diffusers", str(pipe_dir), str(tmp_path / "back")]) == 0
    back = lamamba.load_pretrained(tmp_path / "back")
    assert (tmp_path / "back" / "checkpoints" / "0000012" / "model.safetensors").is_file()
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    from lamamba.pretrained import load_model_info

    original, converted = load_model_info(run), load_model_info(tmp_path / "back")
    assert converted["diffusion"] == original["diffusion"] and converted["num_classes"] == 10


def test_bad_inputs_give_one_line(exported, tmp_path, capsys):
    run, _, pipe_dir = exported
    assert cli.main(["export-diffusers", str(run), str(pipe_dir)]) == 2  # not empty
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"_class_name": "DiTTransformer2DModel"}')
    assert cli.main(["import-diffusers", str(tmp_path / "other"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "export-diffusers" in err and err.count("\n") == 1


def test_missing_diffusers_names_the_extra(exported, tmp_path, monkeypatch, capsys):
    import sys

    run, _, _ = exported
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    monkeypatch.delitem(sys.modules, "lamamba.interop.diffusers_model", raising=False)
    assert cli.main(["export-diffusers", str(run), str(tmp_path / "p")]) == 2
    assert 'pip install "lamamba[diffusers]"' in capsys.readouterr().err


def test_latent_model_exports_its_vae(tiny_vae_dir, tmp_path):
    torch.manual_seed(0)
    model = lamamba.create_model("DiT-S/2", image_size=16, in_channels=4, num_classes=10, latent_downsample=2,
                                 **TINY["DiT-S/2"])
    info = {"model": model.config.to_dict(), "image_size": 16, "image_channels": 3, "num_classes": 10, "step": 1,
            "latent": {"vae": str(tiny_vae_dir), "scale": 0.5, "shift": None},
            "diffusion": {"diffusion_steps": 1000, "noise_schedule": "linear", "learn_sigma": True}}
    save_pretrained(model, tmp_path / "run" / "checkpoints" / "0000001", info)
    assert cli.main(["export-diffusers", str(tmp_path / "run"), str(tmp_path / "pipe")]) == 0
    pipe = load_pipeline(tmp_path / "pipe")
    assert type(pipe.vae).__name__ == "AutoencoderKL" and pipe.vae.config.scaling_factor == 0.5
    images = pipe(class_labels=[1], generator=torch.Generator().manual_seed(0), num_inference_steps=2,
                  output_type="np").images
    assert images.shape == (1, 16, 16, 3)

    info["latent"]["shift"] = 0.1
    save_pretrained(model, tmp_path / "shifted" / "checkpoints" / "0000001", info)
    from lamamba.interop.export_diffusers import export_diffusers

    with pytest.raises(ValueError, match="DiTPipeline only scales latents"):
        export_diffusers(tmp_path / "shifted", tmp_path / "pipe2")
