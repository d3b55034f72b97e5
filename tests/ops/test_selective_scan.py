"""The selective scan against a naive per-token recurrence (values and all gradients, float64)."""
import pytest
import torch
import torch.nn.functional as F

from lamamba.ops import selective_scan


def naive_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Token-by-token recurrence, straight from the definition; B, C: (batch, groups, N, L)."""
    batch, channels, L = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    per_group = channels // B.shape[1]
    h = u.new_zeros(batch, channels, A.shape[1])
    ys = []
    for t in range(L):
        Bt = B[:, :, :, t].repeat_interleave(per_group, 1)              # (b, d, N)
        Ct = C[:, :, :, t].repeat_interleave(per_group, 1)
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * Bt * u[:, :, t, None]
        ys.append((h * Ct).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y, h


def make_inputs(batch=2, channels=8, groups=2, N=3, L=70, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    return dict(u=r(batch, channels, L), delta=r(batch, channels, L) * 0.5,
                A=-torch.rand(channels, N, generator=g, dtype=dtype) * 2, B=r(batch, groups, N, L),
                C=r(batch, groups, N, L), D=r(channels), z=r(batch, channels, L), delta_bias=r(channels) * 0.1)


@pytest.mark.parametrize("N,groups,L", [(1, 4, 64), (3, 2, 70), (16, 1, 5), (2, 8, 130)])
@pytest.mark.parametrize("softplus", [True, False])
def test_values_and_gradients_match_naive(N, groups, L, softplus):
    inp = make_inputs(channels=8, groups=groups, N=N, L=L)
    if not softplus:  # keep delta positive, as a softplus would
        inp["delta"] = inp["delta"].abs()
    leaves = {k: v.clone().requires_grad_(True) for k, v in inp.items()}
    out, last = selective_scan(**leaves, delta_softplus=softplus, return_last_state=True)
    ref_leaves = {k: v.clone().requires_grad_(True) for k, v in inp.items()}
    ref, ref_last = naive_scan(**ref_leaves, delta_softplus=softplus)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, ref_last, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(ref)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    for k in inp:
        torch.testing.assert_close(leaves[k].grad, ref_leaves[k].grad, rtol=1e-9, atol=1e-9, msg=k)


def test_optional_arguments_and_shapes():
    inp = make_inputs(groups=1, N=2, L=9)
    for drop in ("D", "z", "delta_bias"):
        args = dict(inp)
        args[drop] = None
        out = selective_scan(**args)
        ref, _ = naive_scan(**args)
        torch.testing.assert_close(out, ref)
    # (batch, N, L) B/C means one group
    args = dict(inp, B=inp["B"][:, 0], C=inp["C"][:, 0])
    torch.testing.assert_close(selective_scan(**args), naive_scan(**inp)[0])


def test_float32_and_bfloat16_inputs_accumulate_in_float32():
    inp = make_inputs(L=40)
    ref, _ = naive_scan(**inp, delta_softplus=True)
    out32 = selective_scan(**{k: v.float() for k, v in inp.items()}, delta_softplus=True)
    assert out32.dtype == torch.float32
    assert (out32.double() - ref).norm() / ref.norm() < 1e-5
    out16 = selective_scan(**{k: v.bfloat16() if k in ("u", "delta", "z") else v.float()
                              for k, v in inp.items()}, delta_softplus=True)
    assert out16.dtype == torch.bfloat16
    assert (out16.double() - ref).norm() / ref.norm() < 2e-2


def test_gradcheck_small():
    inp = make_inputs(batch=1, channels=2, groups=1, N=2, L=5)
    leaves = tuple(v.requires_grad_(True) for v in inp.values())
    f = lambda *a: selective_scan(*a, delta_softplus=True)
    assert torch.autograd.gradcheck(f, leaves)


def test_meta_tensors_give_shapes():
    inp = {k: v.to("meta") for k, v in make_inputs().items()}
    out, last = selective_scan(**inp, return_last_state=True)
    assert out.shape == inp["u"].shape and last.shape == (2, 8, 3)


@pytest.mark.parametrize("bad,msg", [
    (dict(delta=torch.zeros(2, 8, 69)), "u and delta"),
    (dict(A=torch.zeros(7, 3)), "A must be"),
    (dict(B=torch.zeros(2, 3, 3, 70)), "B of shape"),
    (dict(D=torch.zeros(3)), "D must be"),
])
def test_clear_errors(bad, msg):
    inp = dict(make_inputs(), **bad)
    with pytest.raises(ValueError, match=msg):
        selective_scan(**inp)


def test_custom_op_backward_matches_autograd():
    """The op's own backward (used under torch.compile / when called directly) agrees with autograd."""
    inp = make_inputs(N=2, L=33)
    leaves = [inp[k].clone().requires_grad_(True) for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    out, _ = torch.ops.lamamba.selective_scan_fwd(*leaves, True)
    ref_leaves = {k: v.clone().requires_grad_(True) for k, v in inp.items()}
    ref, _ = naive_scan(**ref_leaves, delta_softplus=True)
    w = torch.randn_like(ref)
    grads = torch.autograd.grad((out * w).sum(), leaves)
    ref_grads = torch.autograd.grad((ref * w).sum(), list(ref_leaves.values()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_length_one_sequences():
    """A 1x1 map gives L = 1: the decay never acts, and both backward paths still return every gradient."""
    inp = make_inputs(L=1)
    leaves = [inp[k].clone().requires_grad_(True) for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    out, _ = torch.ops.lamamba.selective_scan_fwd(*leaves, True)
    grads = torch.autograd.grad(out.sum(), leaves)
    assert torch.equal(grads[2], torch.zeros_like(leaves[2]))
    ref, _ = naive_scan(**inp, delta_softplus=True)
    torch.testing.assert_close(out, ref)
