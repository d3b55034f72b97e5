"""Continuous scan paths: permutations, spatial continuity, merge inverts scan; the SS2D scan op."""
import pytest
import torch

from lamamba.ops import selective_scan
from lamamba.ops.scan_paths import cross_merge, cross_scan, scan_paths
from lamamba.ops.ss2d_scan import ss2d_selective_scan

SIZES = [(4, 4), (8, 8), (5, 5), (3, 6), (7, 2), (1, 5), (6, 1)]


def test_released_code_permutations_for_n4():
    paths, _ = scan_paths(4, 4)
    assert paths.tolist() == [
        [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11, 15, 14, 13, 12],
        [12, 13, 14, 15, 11, 10, 9, 8, 4, 5, 6, 7, 3, 2, 1, 0],
        [12, 8, 4, 0, 1, 5, 9, 13, 14, 10, 6, 2, 3, 7, 11, 15],
        [15, 11, 7, 3, 2, 6, 10, 14, 13, 9, 5, 1, 0, 4, 8, 12],
    ]


@pytest.mark.parametrize("H,W", SIZES)
def test_paths_are_continuous_permutations(H, W):
    paths, inverse = scan_paths(H, W)
    assert paths.shape == (4, H * W)
    for k in range(4):
        assert sorted(paths[k].tolist()) == list(range(H * W))
        r, c = paths[k] // W, paths[k] % W
        steps = (r[1:] - r[:-1]).abs() + (c[1:] - c[:-1]).abs()
        assert bool((steps == 1).all()), f"path {k} jumps on a {H}x{W} map"
        assert torch.equal(inverse[k][paths[k]], torch.arange(H * W))
    assert torch.equal(paths[1], paths[0].flip(0)) and torch.equal(paths[3], paths[2].flip(0))
    assert paths[0, 0] == 0 and paths[2, 0] == (H - 1) * W  # top-left; bottom-left going up


@pytest.mark.parametrize("H,W", SIZES)
def test_merge_inverts_scan(H, W):
    paths, inverse = scan_paths(H, W)
    x = torch.randn(2, H * W, 3)
    xs = cross_scan(x, paths)
    for k in range(4):
        assert torch.equal(xs[:, k], x[:, paths[k]])
    torch.testing.assert_close(cross_merge(xs, inverse), 4 * x)


def naive_ss2d(x, delta, A, B, C, D, delta_bias, H, W):
    """Build each direction's sequence by walking the path pixel by pixel, scan, write back, sum."""
    b, L, d = x.shape
    paths, _ = scan_paths(H, W)
    out = torch.zeros(b, L, d, dtype=x.dtype)
    for k in range(4):
        p = paths[k].tolist()
        u = torch.stack([x[:, i] for i in p], -1)                       # (b, d, L)
        dt = torch.stack([delta[:, i, k] for i in p], -1)
        Bk = torch.stack([B[:, i, k] for i in p], -1)[:, None]          # (b, 1, N, L)
        Ck = torch.stack([C[:, i, k] for i in p], -1)[:, None]
        sl = slice(k * d, (k + 1) * d)
        y = selective_scan(u, dt, A[sl], Bk, Ck, D[sl], None, delta_bias[sl], delta_softplus=True)
        for s, i in enumerate(p):
            out[:, i] += y[..., s]
    return out


@pytest.mark.parametrize("H,W,N", [(4, 4, 1), (3, 5, 2)])
def test_ss2d_scan_matches_naive(H, W, N):
    torch.manual_seed(0)
    b, d, L = 2, 3, H * W
    args = [torch.randn(b, L, d), torch.randn(b, L, 4, d), -torch.rand(4 * d, N) - 0.1,
            torch.randn(b, L, 4, N), torch.randn(b, L, 4, N), torch.randn(4 * d), torch.randn(4 * d) * 0.1]
    args = [a.double().requires_grad_(True) for a in args]
    out = ss2d_selective_scan(*args, H, W)
    ref = naive_ss2d(*args, H, W)
    torch.testing.assert_close(out.double(), ref)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad((out * g).sum(), args)
    ref_grads = torch.autograd.grad((ref * g).sum(), args)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a.double(), r)
