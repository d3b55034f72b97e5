"""Two host-side costs of a CPU training step behind session 7's CPU changes (docs/PERFORMANCE.md): seeding one item
with ``torch.manual_seed`` against the CPU generator alone, and one AdamW step of the digits demo's model with the
default per-tensor loop against the fused update.

    python benchmarks/cpu_overheads.py
"""
import time, torch, lamamba
from lamamba.training.config import DIGITS_DEMO_MODEL
t = time.perf_counter()
for i in range(2000): torch.manual_seed(i)
a = (time.perf_counter() - t) / 2000
t = time.perf_counter()
for i in range(2000): torch.default_generator.manual_seed(i)
b = (time.perf_counter() - t) / 2000
print(f"seeding per item: torch.manual_seed {a*1e3:.3f} ms, default_generator.manual_seed {b*1e3:.4f} ms")
model = lamamba.create_model("LaMamba-Diff-S", image_size=16, in_channels=1, num_classes=10, latent_downsample=1, **DIGITS_DEMO_MODEL)
for p in model.parameters(): p.grad = torch.randn_like(p)
for kw in (dict(), dict(fused=True)):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **kw)
    for _ in range(5): opt.step()
    t = time.perf_counter()
    for _ in range(50): opt.step()
    print(f"AdamW step of the demo model {kw or 'default (per-tensor loop)'}: {(time.perf_counter() - t) / 50 * 1e3:.1f} ms")
