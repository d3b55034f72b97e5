"""Samplers on toy problems with known answers, reproducibility, guidance helpers and input errors."""
import math

import numpy as np
import pytest
import torch

from lamamba.diffusion import (
    DEFAULT_STEPS,
    SAMPLERS,
    cfg_first_half,
    cfg_model_kwargs,
    cfg_noise,
    create_diffusion,
    evenly_spaced_timesteps,
)

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
@pytest.mark.parametrize("sampler, steps", [("ddpm", 25), ("ddim", 10), ("dpm++2m", 7), ("ddpm", 1), ("dpm++2m", 2),
                                           ("dpm++2m-sde", 7), ("dpm++2m-sde", 2), ("dpm++2m-sde", 1)])
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
        torch.testing.assert_close(d.dpm_solver_sde_sample_loop(model, x0.shape, steps=5), x0, rtol=0, atol=1e-3)


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


@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 1.0), ("dpm++2m-sde", 1.0), ("dpm++2m-sde", None)])
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
    assert SAMPLERS == ("ddpm", "ddim", "dpm++2m", "dpm++2m-sde") and set(DEFAULT_STEPS) == set(SAMPLERS)
    for steps in (0, 1001):
        with pytest.raises(ValueError, match="steps"):
            d.sample(model, (1, 1, 2, 2), sampler="dpm++2m", steps=steps)
    with pytest.raises(ValueError, match="differs from noise shape"):
        d.sample(model, (2, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="shape or the initial noise"):
        d.sample(model, None)
    for sampler in ("ddim", "dpm++2m-sde"):
        with pytest.raises(ValueError, match="eta"):
            d.sample(model, (1, 1, 2, 2), sampler=sampler, steps=2, eta=-1.0)
    with pytest.raises(ValueError, match="noise_fn gave shape"):
        d.dpm_solver_sde_sample_loop(model, (2, 1, 2, 2), steps=3, noise_fn=lambda shape: torch.zeros(1, 1, 2, 2))


# -------------------------------------------------------------------------------------------------
# DPM-Solver++(2M) SDE
# -------------------------------------------------------------------------------------------------

def toy_eps(x, t):
    """A smooth nonlinear noise predictor (no learned variance) to exercise every coefficient."""
    return 0.6 * torch.tanh(x) + 0.05 * x * torch.cos(t.to(x) / 100).reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("steps", [1, 2, 3, 9])
def test_dpm_solver_sde_with_eta0_is_the_ode_solver(steps, lower_order_final):
    d = create_diffusion(learn_sigma=False)
    x_T = torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def no_noise(shape):
        raise AssertionError("eta = 0 must draw no noise")

    ode = d.dpm_solver_sample_loop(toy_eps, None, x_T, steps=steps, lower_order_final=lower_order_final)
    sde = d.dpm_solver_sde_sample_loop(toy_eps, None, x_T, steps=steps, eta=0.0, lower_order_final=lower_order_final,
                                       noise_fn=no_noise)
    torch.testing.assert_close(sde, ode, rtol=1e-12, atol=1e-12)
    via_sample = d.sample(toy_eps, None, x_T, sampler="dpm++2m-sde", steps=steps, eta=0.0)
    if lower_order_final:  # sample() uses the default, lower_order_final=True
        torch.testing.assert_close(via_sample, ode, rtol=1e-12, atol=1e-12)


def naive_dpmpp_2m_sde(eps_model, x_T, steps, eta, zs, lower_order_final=True):
    """An independent transcription of DPM-Solver++(2M) SDE (midpoint) in the variance-exploding variables
    y = x / α, s = σ / α = e^{-λ} (as k-diffusion's ``sample_dpmpp_2m_sde`` is written), with plain exp:

        g = 1 - e^{-(1+η) h},   y' = (s'/s) e^{-η h} y + g D + ½ g (D - D_prev) / r + s' sqrt(1 - e^{-2η h}) z

    h = log(s / s'), r = h_prev / h. Returns the model inputs x_k at every grid point and the final D."""
    abar = ABAR.tolist()
    grid = evenly_spaced_timesteps(1000, steps)[::-1]
    s = [math.sqrt((1 - abar[t]) / abar[t]) for t in grid]
    y = x_T / math.sqrt(abar[grid[0]])
    inputs, d_prev, h_prev = [], None, None
    for k, t in enumerate(grid):
        x = math.sqrt(abar[t]) * y
        inputs.append(x)
        eps = eps_model(x, torch.full((x.shape[0],), t))
        d = (x - math.sqrt(1 - abar[t]) * eps) / math.sqrt(abar[t])
        if k == steps - 1:
            return inputs, d
        h = math.log(s[k] / s[k + 1])
        gain = 1 - math.exp(-(1 + eta) * h)
        y = (s[k + 1] / s[k]) * math.exp(-eta * h) * y + gain * d
        if d_prev is not None and not (lower_order_final and k == steps - 2):
            y = y + 0.5 * gain * (d - d_prev) / (h_prev / h)
        y = y + s[k + 1] * math.sqrt(1 - math.exp(-2 * eta * h)) * zs[k]
        d_prev, h_prev = d, h


@pytest.mark.parametrize("eta, lower_order_final", [(1.0, True), (0.5, True), (1.0, False)])
def test_dpm_solver_sde_steps_match_a_naive_implementation(eta, lower_order_final):
    """Every step of the library loop (seen through the model's inputs) equals the naive transcription."""
    steps = 6
    gen = torch.Generator().manual_seed(7)
    x_T = torch.randn(2, 1, 3, 3, generator=gen, dtype=torch.float64)
    zs = [torch.randn(2, 1, 3, 3, generator=gen, dtype=torch.float64) for _ in range(steps - 1)]
    seen = []

    def model(x, t):
        seen.append(x.clone())
        return toy_eps(x, t)

    supply = iter(zs)
    out = create_diffusion(learn_sigma=False).dpm_solver_sde_sample_loop(
        model, None, x_T, steps=steps, eta=eta, lower_order_final=lower_order_final,
        noise_fn=lambda shape: next(supply))
    inputs, final = naive_dpmpp_2m_sde(toy_eps, x_T, steps, eta, zs, lower_order_final)
    assert len(seen) == steps and next(supply, None) is None  # one model call per grid point, steps - 1 noises
    for ours, theirs in zip(seen, inputs):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out, final, rtol=1e-10, atol=1e-10)


def test_dpm_solver_sde_matches_data_distribution():
    m, s = 0.3, 0.5
    d = create_diffusion(learn_sigma=False)
    gen = torch.Generator().manual_seed(0)
    x = d.sample(gaussian_oracle(m, s), (8000, 1, 1, 1), sampler="dpm++2m-sde", steps=100, generator=gen,
                 dtype=torch.float64)
    assert abs(x.mean().item() - m) < 0.02 and abs(x.std().item() - s) < 0.02


def sde_output_law(d, model, steps):
    """Exact mean and std of the SDE sampler's output for an affine (Gaussian-data) oracle.

    The sampler is then affine in (x_T, z_1, ..., z_{steps-1}) elementwise, out = c + a x_T + sum_k b_k z_k, so
    with x_T, z_k ~ N(0, 1) independent the output is N(c, a² + sum_k b_k²). One batch reads off every
    coefficient: row 0 has x_T = 0 and no noise (c), row 1 x_T = 1 (c + a), row 1 + k the unit noise at step k."""
    rows = steps + 1
    x_T = torch.zeros(rows, 1, 1, 1, dtype=torch.float64)
    x_T[1] = 1
    step = iter(range(steps - 1))

    def unit_noise(shape):
        z = torch.zeros(shape, dtype=torch.float64)
        z[2 + next(step)] = 1
        return z

    out = d.dpm_solver_sde_sample_loop(model, None, x_T, steps=steps, noise_fn=unit_noise).flatten()
    return out[0].item(), (out[1:] - out[0]).pow(2).sum().sqrt().item()


def test_dpm_solver_sde_output_law_converges_to_the_data():
    """With the exact Gaussian-data oracle the output law is N(m, s²) up to a discretisation error that shrinks
    with the number of steps (about 0.015, 0.007, 0.0016 in std at 50, 100, 250 steps; mean exact to 1e-5)."""
    m, s = 0.3, 0.5
    d, model = create_diffusion(learn_sigma=False), gaussian_oracle(m, s)
    errors = []
    for steps in (50, 100, 250):
        mean, std = sde_output_law(d, model, steps)
        assert abs(mean - m) < 1e-4
        errors.append(abs(std - s))
    assert errors[0] > errors[1] > errors[2] and errors[1] < 0.01 and errors[2] < 0.003


def test_guided_sde_sampling_equals_sampling_the_guided_model():
    """With the same step noise in both halves (as cfg_noise does for x_T) the doubled batch is the guided run."""
    num_classes, scale, steps = 5, 3.0, 6

    def eps(x, t, y):
        return 0.2 * x + 0.1 * y.to(x).reshape(-1, 1, 1, 1) * torch.cos(t.to(x)).reshape(-1, 1, 1, 1)

    def forward_with_cfg(x, t, y, cfg_scale):
        half = x[: len(x) // 2]
        cond, uncond = eps(torch.cat([half, half]), t, y).chunk(2)
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([guided, guided])

    def guided_model(x, t, y):
        uncond = eps(x, t, torch.full_like(y, num_classes))
        return uncond + scale * (eps(x, t, y) - uncond)

    gen = torch.Generator().manual_seed(2)
    y, noise = torch.tensor([1, 4]), torch.randn(2, 1, 2, 2, generator=gen)
    zs = [torch.randn(2, 1, 2, 2, generator=gen) for _ in range(steps - 1)]
    d = create_diffusion(learn_sigma=False)
    doubled_z, direct_z = iter(zs), iter(zs)
    doubled = d.dpm_solver_sde_sample_loop(forward_with_cfg, None, cfg_noise(noise), steps=steps,
                                           model_kwargs=cfg_model_kwargs(y, num_classes, scale),
                                           noise_fn=lambda shape: cfg_noise(next(doubled_z)))
    direct = d.dpm_solver_sde_sample_loop(guided_model, None, noise, steps=steps, model_kwargs={"y": y},
                                          noise_fn=lambda shape: next(direct_z))
    torch.testing.assert_close(cfg_first_half(doubled), direct)
