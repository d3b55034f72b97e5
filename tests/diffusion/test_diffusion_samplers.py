"""Samplers on toy problems with known answers, reproducibility, guidance helpers and input errors."""
import math

import numpy as np
import pytest
import torch

from lamamba.diffusion import SAMPLERS, cfg_first_half, cfg_model_kwargs, cfg_noise, create_diffusion

ABAR = torch.tensor(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)))  # the training schedule, independently


def point_oracle(x0, learn_sigma):
    """Exact ε for data that is the single point x0; it needs the ORIGINAL timestep to be right."""

    def model(x, t, **kwargs):
        ab = ABAR[t].to(x).reshape(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], 1) if learn_sigma else eps

    return model


def gaussian_oracle(m, s):
    """Exact ε = E[ε | x_t] for data ~ N(m, s²) per element."""

    def model(x, t):
        ab = ABAR[t].to(x).reshape(-1, 1, 1, 1)
        x0_mean = m + ab.sqrt() * s**2 * (x - ab.sqrt() * m) / (ab * s**2 + 1 - ab)
        return (x - ab.sqrt() * x0_mean) / (1 - ab).sqrt()

    return model


def ode_solution(x_T, m, s):
    """The probability-flow ODE maps x_T = α m + sqrt(α²s² + σ²) z (at t = 999) to m + s z."""
    a2 = ABAR[-1].item()
    return m + s * (x_T - math.sqrt(a2) * m) / math.sqrt(a2 * s**2 + 1 - a2)


@pytest.mark.parametrize("learn_sigma", [True, False])
@pytest.mark.parametrize("sampler, steps", [("ddpm", 25), ("ddim", 10), ("dpm++2m", 7), ("ddpm", 1), ("dpm++2m", 2)])
def test_point_data_oracle_recovers_the_point(sampler, steps, learn_sigma):
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    d = create_diffusion(learn_sigma=learn_sigma)
    model = point_oracle(x0, learn_sigma)
    out = d.sample(model, x0.shape, sampler=sampler, steps=steps, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-9)


def test_point_data_oracle_float32_and_respaced_loops():
    x0 = torch.rand(2, 4, 4, 4) * 2 - 1
    model = point_oracle(x0, True)
    for d in (create_diffusion("ddim20"), create_diffusion("7,3")):
        torch.testing.assert_close(d.p_sample_loop(model, x0.shape), x0, rtol=0, atol=1e-3)
        torch.testing.assert_close(d.ddim_sample_loop(model, x0.shape, eta=0.5), x0, rtol=0, atol=1e-3)
        torch.testing.assert_close(d.dpm_solver_sample_loop(model, x0.shape, steps=5), x0, rtol=0, atol=1e-3)


def test_deterministic_samplers_solve_the_gaussian_ode():
    m, s = 0.3, 1.0
    model = gaussian_oracle(m, s)
    x_T = torch.randn(256, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = ode_solution(x_T, m, s)
    d = create_diffusion(learn_sigma=False)
    rms = lambda x: (x - exact).pow(2).mean().sqrt().item()  # noqa: E731
    assert rms(d.ddim_sample_loop(model, None, x_T)) < 5e-3  # 1000 steps: first order, nearly exact
    dpm = rms(d.sample(model, None, x_T, sampler="dpm++2m", steps=20))
    ddim = rms(d.sample(model, None, x_T, sampler="ddim", steps=20))
    assert dpm < 5e-3 and dpm < ddim / 20  # the second-order multistep pays off


def test_ddpm_matches_data_distribution():
    m, s = 0.3, 0.5
    d = create_diffusion(learn_sigma=False)
    gen = torch.Generator().manual_seed(0)
    x = d.sample(gaussian_oracle(m, s), (8000, 1, 1, 1), steps=100, generator=gen, dtype=torch.float64)
    assert abs(x.mean().item() - m) < 0.02 and abs(x.std().item() - s) < 0.02


def test_sample_ddpm_is_create_diffusion_250():
    model = lambda x, t: torch.cat([0.1 * x, torch.tanh(x)], 1)  # noqa: E731
    runs = [
        create_diffusion().sample(model, (2, 1, 3, 3), steps=250, generator=torch.Generator().manual_seed(3)),
        create_diffusion("250").p_sample_loop(model, (2, 1, 3, 3), generator=torch.Generator().manual_seed(3)),
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 1.0)])
def test_stochastic_samplers_are_reproducible_with_a_seed(sampler, eta):
    d = create_diffusion("20")
    model = lambda x, t: torch.cat([0.5 * x, torch.zeros_like(x)], 1)  # noqa: E731

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return d.sample(model, (2, 2, 3, 3), sampler=sampler, steps=10, eta=eta, generator=gen)

    torch.testing.assert_close(run(0), run(0), rtol=0, atol=0)
    assert not torch.equal(run(0), run(1))


def test_ddim_eta0_and_dpm_solver_are_deterministic_given_noise():
    d = create_diffusion()
    model = lambda x, t: torch.cat([torch.sin(x), torch.zeros_like(x)], 1)  # noqa: E731
    noise = torch.randn(2, 2, 3, 3)
    for sampler in ("ddim", "dpm++2m"):
        a = d.sample(model, None, noise, sampler=sampler, steps=8, generator=torch.Generator().manual_seed(0))
        b = d.sample(model, noise.shape, noise, sampler=sampler, steps=8, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_classifier_free_guidance_helpers():
    y = torch.tensor([3, 0, 7])
    kwargs = cfg_model_kwargs(y, num_classes=10, cfg_scale=4)
    assert kwargs["y"].tolist() == [3, 0, 7, 10, 10, 10] and kwargs["cfg_scale"] == 4.0
    noise = torch.randn(3, 2, 4, 4)
    assert torch.equal(cfg_noise(noise), torch.cat([noise, noise]))
    assert torch.equal(cfg_first_half(cfg_noise(noise)), noise)
    with pytest.raises(ValueError, match="null label"):
        cfg_model_kwargs(torch.tensor([10]), num_classes=10, cfg_scale=1.5)
    with pytest.raises(ValueError, match="even"):
        cfg_first_half(torch.zeros(3, 1))


def test_guided_sampling_equals_sampling_the_guided_model():
    """A forward_with_cfg that follows the contract gives the same samples as a directly guided model."""
    num_classes, scale = 5, 3.0

    def eps(x, t, y):  # a toy conditional noise predictor; y == num_classes is the null class
        return 0.2 * x + 0.1 * y.to(x).reshape(-1, 1, 1, 1) * torch.cos(t.to(x)).reshape(-1, 1, 1, 1)

    def forward_with_cfg(x, t, y, cfg_scale):
        half = x[: len(x) // 2]
        e = eps(torch.cat([half, half]), t, y)
        cond, uncond = e.chunk(2)
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([guided, guided])

    def guided_model(x, t, y):
        uncond = eps(x, t, torch.full_like(y, num_classes))
        return uncond + scale * (eps(x, t, y) - uncond)

    y, noise = torch.tensor([1, 4]), torch.randn(2, 1, 2, 2)
    d = create_diffusion(learn_sigma=False)
    for sampler in ("ddim", "dpm++2m"):
        kwargs = cfg_model_kwargs(y, num_classes, scale)
        doubled = d.sample(forward_with_cfg, None, cfg_noise(noise), sampler=sampler, steps=6, model_kwargs=kwargs)
        direct = d.sample(guided_model, None, noise, sampler=sampler, steps=6, model_kwargs={"y": y})
        torch.testing.assert_close(cfg_first_half(doubled), direct)


def test_sampler_input_errors():
    d = create_diffusion()
    model = lambda x, t: torch.cat([x, x], 1)  # noqa: E731
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        d.sample(model, (1, 1, 2, 2), sampler="euler")
    assert SAMPLERS == ("ddpm", "ddim", "dpm++2m")
    for steps in (0, 1001):
        with pytest.raises(ValueError, match="steps"):
            d.sample(model, (1, 1, 2, 2), sampler="dpm++2m", steps=steps)
    with pytest.raises(ValueError, match="differs from noise shape"):
        d.sample(model, (2, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="shape or the initial noise"):
        d.sample(model, None)
    with pytest.raises(ValueError, match="eta"):
        d.sample(model, (1, 1, 2, 2), sampler="ddim", steps=2, eta=-1.0)
