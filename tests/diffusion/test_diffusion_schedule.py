"""Schedules, respacing and the timestep map, against closed forms written here."""
import math

import numpy as np
import pytest
import torch

from lamamba.diffusion import (
    GaussianDiffusion,
    create_diffusion,
    evenly_spaced_timesteps,
    get_beta_schedule,
    space_timesteps,
)


def test_linear_schedule_closed_form():
    betas = get_beta_schedule("linear", 1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    expected = [1e-4 + i * (0.02 - 1e-4) / 999 for i in (0, 1, 500, 999)]
    np.testing.assert_allclose(betas[[0, 1, 500, 999]], expected, rtol=1e-12)
    np.testing.assert_allclose(get_beta_schedule("linear", 250)[[0, -1]], [4e-4, 0.08], rtol=1e-12)  # scaled by 1000/T


def test_cosine_schedule_closed_form():
    T = 50
    betas = get_beta_schedule("cosine", T)
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expected = [min(1 - f(i + 1) / f(i), 0.999) for i in range(T)]
    np.testing.assert_allclose(betas, expected, rtol=1e-12)
    assert betas[-1] == 0.999  # the last step is clipped


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'"):
        create_diffusion(noise_schedule="quadratic")


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("10", [round(j * 999 / 9) for j in range(10)]),
        (4, [0, 333, 666, 999]),
        ("1000", list(range(1000))),
        ("ddim50", list(range(0, 1000, 20))),
        ("ddim7", list(range(0, 1000, 143))),
        # sections of 334, 333, 333 steps starting at 0, 334, 667
        ("2,3,1", [0, 333, 334, 500, 666, 667]),
        ([2, 3, 1], [0, 333, 334, 500, 666, 667]),
    ],
)
def test_space_timesteps(spec, expected):
    assert space_timesteps(1000, spec) == expected


def test_space_timesteps_250_ends():
    kept = space_timesteps(1000, "250")
    assert len(set(kept)) == 250 and kept[0] == 0 and kept[-1] == 999 and kept == sorted(kept)


@pytest.mark.parametrize("spec", ["abc", "ddim", "ddimx", "ddim600", "0", "-3", "1001", "10,,2", "5,0"])
def test_bad_respacing_is_a_clear_error(spec):
    with pytest.raises(ValueError, match="respacing"):
        create_diffusion(spec)


def test_no_respacing_keeps_every_step():
    for spec in (None, ""):
        d = create_diffusion(spec)
        assert d.num_timesteps == 1000 and (d.timestep_map == np.arange(1000)).all()


def test_respacing_keeps_alphas_cumprod_and_maps_timesteps():
    base = create_diffusion()
    d = create_diffusion("ddim10")
    kept = list(range(0, 1000, 100))
    np.testing.assert_allclose(d.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-12)
    assert list(d.timestep_map) == kept
    # betas recomputed from the kept alphas_cumprod
    abar = base.alphas_cumprod[kept]
    np.testing.assert_allclose(d.betas, 1 - abar / np.concatenate([[1.0], abar[:-1]]), rtol=1e-12)


def test_respacing_composes():
    d = create_diffusion("ddim100").respace([0, 10, 99])
    assert list(d.timestep_map) == [0, 100, 990]
    np.testing.assert_allclose(d.alphas_cumprod, create_diffusion().alphas_cumprod[[0, 100, 990]], rtol=1e-12)
    with pytest.raises(ValueError, match="use_timesteps"):
        d.respace([3])


def test_model_sees_original_timesteps():
    d = create_diffusion("5", learn_sigma=False)
    seen = []

    def model(x, t):
        seen.append(t.clone())
        return torch.zeros_like(x)

    d.training_losses(model, torch.zeros(5, 1, 2, 2), torch.arange(5))
    assert seen[0].dtype == torch.long and seen[0].tolist() == [0, 250, 500, 749, 999]
    d.p_sample_loop(model, (2, 1, 2, 2))
    assert [s.tolist() for s in seen[1:]] == [[t, t] for t in (999, 749, 500, 250, 0)]


def test_evenly_spaced_timesteps():
    assert evenly_spaced_timesteps(1000, 1) == [999]
    assert evenly_spaced_timesteps(1000, 250) == space_timesteps(1000, "250")
    for bad in (0, 1001, 2.0):
        with pytest.raises(ValueError, match="steps"):
            evenly_spaced_timesteps(1000, bad)


def test_bad_betas():
    with pytest.raises(ValueError, match="betas"):
        GaussianDiffusion([0.1, 0.0])
