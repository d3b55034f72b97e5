"""Compare scaled_dot_product_attention backends on LaMamba-Diff's attention shapes (GPU only).

For each key length of the model's stages (64-token windows, 256 and 1024 tokens of global attention) and a
sampling-size batch, runs every selectable backend in bf16 with a relative-position-style float bias in
which some query rows see only very negative logits, and prints the worst error against an fp32 MATH
reference. Usage: python benchmarks/sdpa_check.py
"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def main() -> None:
    torch.manual_seed(0)
    dev = "cuda"
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    for batch, heads, n, hd in ((1000, 96, 64, 16), (64, 96, 64, 16), (1000, 24, 64, 32), (200, 6, 256, 32),
                                (100, 6, 1024, 16)):
        q, k, v = (torch.randn(batch, heads, n, hd, device=dev) for _ in range(3))
        bias = torch.randn(1, heads, n, n, device=dev) * 2
        bias[:, :, : n // 8] -= 120.0  # rows whose every logit is far below zero (logsumexp < -88.7)
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=bias.double(),
                                             scale=hd ** -0.5)
        qb, kb, vb, bb = (t.bfloat16() for t in (q, k, v, bias))
        line = [f"batch {batch:5d} heads {heads:3d} N {n:5d} hd {hd:3d}:"]
        for name, backend in (("default", None), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                              ("efficient", SDPBackend.EFFICIENT_ATTENTION), ("math", SDPBackend.MATH)):
            try:
                if backend is None:
                    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=bb, scale=hd ** -0.5)
                else:
                    with sdpa_kernel([backend]):
                        out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=bb, scale=hd ** -0.5)
                err = (out.double() - ref).abs()
                bad = (err.amax(dim=(2, 3)) > 0.1).float().mean().item()
                line.append(f"{name} max {err.max().item():.3g} bad(b,h) {bad:.3f}")
            except RuntimeError as e:
                line.append(f"{name} n/a ({str(e).splitlines()[0][:40]})")
        print("  ".join(line))


if __name__ == "__main__":
    main()
