"""Forward process, posterior, likelihood terms and the training loss against naive closed forms."""
import math

import numpy as np
import pytest
import torch

from lamamba.diffusion import create_diffusion, discretized_gaussian_log_likelihood, normal_kl

T = 1000
BETAS = np.linspace(1e-4, 0.02, T)  # the paper's schedule, written out independently
ABAR = np.cumprod(1 - BETAS)
ABAR_PREV = np.concatenate([[1.0], ABAR[:-1]])


def naive_posterior(x0, xt, t):
    """q(x_{t-1} | x_t, x_0) by Bayes: N(√ᾱ_{t-1} x0, 1-ᾱ_{t-1}) prior times N(x_t; √α_t x_{t-1}, β_t)."""
    a, b, ap = 1 - BETAS[t], BETAS[t], ABAR_PREV[t]
    precision = 1 / (1 - ap) + a / b
    mean = (math.sqrt(ap) * x0 / (1 - ap) + math.sqrt(a) * xt / b) / precision
    return mean, 1 / precision


def naive_kl(m1, v1, m2, v2):
    return 0.5 * math.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5


def naive_bin_logprob(x, mean, std):
    cdf = lambda z: 0.5 * (1 + math.erf((z - mean) / (std * math.sqrt(2))))  # noqa: E731
    lo = 0.0 if x < -0.999 else cdf(x - 1 / 255)
    hi = 1.0 if x > 0.999 else cdf(x + 1 / 255)
    return math.log(hi - lo) if hi > lo else -math.inf


def test_q_sample_moments():
    d = create_diffusion()
    n, x0 = 200_000, torch.tensor([0.7, -1.3], dtype=torch.float64)
    for t in (0, 300, 999):
        xt = d.q_sample(x0.expand(n, 2), torch.full((n,), t))
        assert xt.dtype == torch.float64
        se = math.sqrt(1 - ABAR[t]) / math.sqrt(n)
        torch.testing.assert_close(xt.mean(0), math.sqrt(ABAR[t]) * x0, atol=5 * se, rtol=0)
        torch.testing.assert_close(xt.var(0), torch.full((2,), 1 - ABAR[t], dtype=torch.float64), rtol=0.02, atol=0)


def test_q_sample_uses_given_noise():
    d = create_diffusion()
    x0, noise, t = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.tensor([5, 500, 999])
    expected = torch.stack(
        [math.sqrt(ABAR[k]) * x0[i] + math.sqrt(1 - ABAR[k]) * noise[i] for i, k in enumerate(t.tolist())]
    )
    torch.testing.assert_close(d.q_sample(x0, t, noise), expected)
    assert d.q_sample(x0, t, noise).dtype == torch.float32


def test_posterior_matches_bayes():
    d = create_diffusion()
    x0, xt = torch.randn(4, 3, 2, 2, dtype=torch.float64), torch.randn(4, 3, 2, 2, dtype=torch.float64)
    t = torch.tensor([1, 10, 500, 999])
    mean, var, log_var = d.q_posterior_mean_variance(x0, xt, t)
    for i, k in enumerate(t.tolist()):
        m, v = naive_posterior(x0[i], xt[i], k)
        torch.testing.assert_close(mean[i], m, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(var[i], torch.full_like(var[i], v), rtol=1e-10, atol=0)
        torch.testing.assert_close(log_var[i], torch.full_like(var[i], math.log(v)), rtol=1e-10, atol=0)
    # t = 0: the posterior is a point mass at x0; its log variance is clipped to that of t = 1
    mean, var, log_var = d.q_posterior_mean_variance(x0, xt, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(mean, x0)
    assert (var == 0).all()
    torch.testing.assert_close(log_var, torch.full_like(log_var, math.log(naive_posterior(0.0, 0.0, 1)[1])))


def test_normal_kl():
    m, lv = torch.randn(10, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    assert normal_kl(m, lv, m, lv).abs().max() < 1e-15
    m2, lv2 = torch.randn(10, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    args = zip(m.tolist(), lv.tolist(), m2.tolist(), lv2.tolist())
    expected = [naive_kl(a, math.exp(b), c, math.exp(e)) for a, b, c, e in args]
    torch.testing.assert_close(normal_kl(m, lv, m2, lv2), torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(normal_kl(m, 0.0, 0.0, 0.0), 0.5 * m**2)  # scalars broadcast
    with pytest.raises(ValueError, match="tensor"):
        normal_kl(0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("mean, std", [(0.3, 0.2), (-0.95, 0.01), (0.0, 3.0), (0.999, 1e-3)])
def test_discretized_gaussian_sums_to_one_and_matches_naive(mean, std):
    x = torch.linspace(-1, 1, 256, dtype=torch.float64)  # the 256 pixel values
    logp = discretized_gaussian_log_likelihood(
        x, means=torch.full_like(x, mean), log_scales=torch.full_like(x, math.log(std))
    )
    assert abs(logp.exp().sum().item() - 1) < 1e-9
    for k in (0, 1, 128, 200, 254, 255):
        naive = naive_bin_logprob(x[k].item(), mean, std)
        if naive > -20:  # where the naive difference of CDFs is still accurate
            assert logp[k].item() == pytest.approx(naive, rel=1e-6, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# training_losses
# ---------------------------------------------------------------------------------------------


def constant_model(output):
    return lambda x, t, **kwargs: output


def test_training_losses_match_naive_mse_and_vb():
    d = create_diffusion()
    B, C = 4, 2
    gen = torch.Generator().manual_seed(0)
    x0 = (torch.randint(0, 256, (B, C, 2, 2), generator=gen).double() / 127.5 - 1)  # 8-bit values for the t=0 NLL
    noise = torch.randn(B, C, 2, 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(B, C, 2, 2, generator=gen, dtype=torch.float64)
    v = torch.rand(B, C, 2, 2, generator=gen, dtype=torch.float64) * 2 - 1
    out = torch.cat([eps, v], 1)
    t = torch.tensor([0, 1, 400, 999])
    losses = d.training_losses(constant_model(out), x0, t, noise=noise)
    assert set(losses) == {"loss", "mse", "vb"} and all(v.shape == (B,) for v in losses.values())

    torch.testing.assert_close(losses["mse"], ((noise - eps) ** 2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])

    clipped = [naive_posterior(0.0, 0.0, max(k, 1))[1] for k in range(T)]  # β̃_t with β̃_0 := β̃_1
    for i, k in enumerate(t.tolist()):
        terms = []
        for idx in np.ndindex(C, 2, 2):
            e, vv, x0e, ne = (float(a[i][idx]) for a in (eps, v, x0, noise))
            xt = math.sqrt(ABAR[k]) * x0e + math.sqrt(1 - ABAR[k]) * ne
            pred_x0 = (xt - math.sqrt(1 - ABAR[k]) * e) / math.sqrt(ABAR[k])
            frac = (vv + 1) / 2
            model_var = math.exp(frac * math.log(BETAS[k]) + (1 - frac) * math.log(clipped[k]))
            if k == 0:
                model_mean = pred_x0  # the posterior mean at t=0 is its x0 argument
                terms.append(-naive_bin_logprob(x0e, model_mean, math.sqrt(model_var)))
            else:
                model_mean, _ = naive_posterior(pred_x0, xt, k)
                true_mean, true_var = naive_posterior(x0e, xt, k)
                terms.append(naive_kl(true_mean, true_var, model_mean, model_var))
        assert losses["vb"][i].item() == pytest.approx(np.mean(terms) / math.log(2), rel=1e-7)


def test_vb_trains_only_the_variance_channels():
    d = create_diffusion()
    out = torch.randn(3, 8, 4, 4, requires_grad=True)
    losses = d.training_losses(constant_model(out), torch.rand(3, 4, 4, 4) * 2 - 1, torch.tensor([0, 10, 700]))
    (grad_vb,) = torch.autograd.grad(losses["vb"].sum(), out, retain_graph=True)
    assert (grad_vb[:, :4] == 0).all() and grad_vb[:, 4:].abs().sum() > 0
    (grad_mse,) = torch.autograd.grad(losses["mse"].sum(), out)
    assert (grad_mse[:, 4:] == 0).all() and grad_mse[:, :4].abs().sum() > 0


def test_fixed_variance_loss_is_mse_only():
    d = create_diffusion(learn_sigma=False)
    x0, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    eps = torch.randn(2, 3, 4, 4)
    losses = d.training_losses(constant_model(eps), x0, torch.tensor([0, 999]), noise=noise)
    assert (losses["vb"] == 0).all()
    torch.testing.assert_close(losses["loss"], ((noise - eps) ** 2).mean(dim=(1, 2, 3)))


def test_p_mean_variance_fixed_large_and_learned_range_bounds():
    x = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 1, 999])
    out = create_diffusion(learn_sigma=False).p_mean_variance(constant_model(torch.zeros_like(x)), x, t)
    expected = [naive_posterior(0.0, 0.0, 1)[1], BETAS[1], BETAS[999]]  # fixed-large, β̃_1 at t=0
    torch.testing.assert_close(out["variance"][:, 0, 0, 0], torch.tensor(expected, dtype=torch.float64))

    d = create_diffusion()
    for v, bound in ((1.0, BETAS), (-1.0, [naive_posterior(0.0, 0.0, max(k, 1))[1] for k in range(T)])):
        out = d.p_mean_variance(constant_model(torch.cat([torch.zeros_like(x), torch.full_like(x, v)], 1)), x, t)
        expected = torch.tensor([bound[k] for k in (0, 1, 999)], dtype=torch.float64)
        torch.testing.assert_close(out["variance"][:, 0, 0, 0], expected)


def test_p_mean_variance_pred_xstart_and_clipping():
    d = create_diffusion(learn_sigma=False)
    x, eps = torch.randn(2, 1, 3, 3, dtype=torch.float64) * 3, torch.randn(2, 1, 3, 3, dtype=torch.float64)
    t = torch.tensor([20, 600])
    out = d.p_mean_variance(constant_model(eps), x, t)
    ab = torch.tensor(ABAR[[20, 600]]).reshape(2, 1, 1, 1)
    torch.testing.assert_close(out["pred_xstart"], (x - (1 - ab).sqrt() * eps) / ab.sqrt())
    torch.testing.assert_close(out["eps"], eps)
    clipped = d.p_mean_variance(constant_model(eps), x, t, clip_denoised=True)
    torch.testing.assert_close(clipped["pred_xstart"], out["pred_xstart"].clamp(-1, 1))
    # eps is made consistent with the clipped x0 estimate
    torch.testing.assert_close(ab.sqrt() * clipped["pred_xstart"] + (1 - ab).sqrt() * clipped["eps"], x)


def test_bad_inputs_are_clear_errors():
    d = create_diffusion()
    x = torch.randn(2, 4, 4, 4)
    with pytest.raises(ValueError, match="model output has shape"):
        d.training_losses(constant_model(torch.zeros(2, 4, 4, 4)), x, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="t must be an integer tensor"):
        d.q_sample(x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="t must be an integer tensor"):
        d.q_sample(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="noise shape"):
        d.q_sample(x, torch.tensor([1, 2]), torch.zeros(2, 4))
