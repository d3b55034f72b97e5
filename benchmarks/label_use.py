"""How much a trained class-conditional model uses its label, per noise level (issue 13, item 2).

At 10 epochs on Fashion-MNIST, LaMamba-Diff-S's samples hardly follow their label (0.09 bits of mutual information
between label and classified class, against DiT-S/2's 1.08; docs/RESULTS.md). This measures where along the noise
levels a checkpoint reads the label. For N test images, each with one fixed noise draw, at timesteps on a grid:

* ``mse true / wrong / null``: the noise-prediction error with the true label, a wrong one (the next class) and
  the null label (what classifier-free guidance contrasts with);
* ``x0 shift``: the RMS change of the predicted clean image, in pixel units of [-1, 1], when the true label is
  replaced by the null label, ``sqrt(1 - abar) / sqrt(abar) * |eps(y) - eps(null)|``: what guidance amplifies.

A model that uses its label has ``mse wrong`` above ``mse true`` at the middle noise levels, where the garment's
class is decided (t = 350-750 on Fashion-MNIST; docs/RESULTS.md). ``x0 shift`` is comparable between models there;
near t = 1000 the factor sqrt((1 - abar) / abar) amplifies any difference and it is large for every model. A first
line compares the sizes of the two parts of the condition ``c = t_emb(t) + y_emb(y)``: the RMS spread of the class
rows of the label table around their mean (what tells the classes apart) against the RMS of the timestep embedding
over the grid. Run on two checkpoints (e.g. ``lamamba-s`` and ``dit-s2`` of ``lamamba experiment``) and compare.

    python benchmarks/label_use.py RUN_DIR_OR_CHECKPOINT [--n 512] [--json out.jsonl]
"""
from __future__ import annotations

import argparse
import json
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    from lamamba.data.builtin import FashionMNISTDataset
    from lamamba.diffusion import create_diffusion
    from lamamba.distributed import pick_device
    from lamamba.pretrained import load_model_info, load_pretrained, resolve_checkpoint

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="run directory, checkpoint directory or model.safetensors")
    p.add_argument("--n", type=int, default=512, help="test images (default 512)")
    p.add_argument("--timesteps", default="50,150,250,350,450,550,650,750,850,950")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--raw-weights", action="store_true", help="the raw training weights instead of the EMA's")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="also write one JSON line per timestep here")
    args = p.parse_args(argv)

    device = pick_device(args.device)
    checkpoint = resolve_checkpoint(args.checkpoint)
    info = load_model_info(checkpoint)
    model = load_pretrained(checkpoint, use_ema=not args.raw_weights, device=device).eval()
    classes = model.config.num_classes
    if not classes:
        print("label_use.py: this model is unconditional; it has no label to use", file=sys.stderr)
        return 2
    if info.get("latent"):
        print("label_use.py: pixel-space Fashion-MNIST models only (this one works on latents)", file=sys.stderr)
        return 2
    diffusion = create_diffusion(**info["diffusion"])
    test = FashionMNISTDataset(model.config.input_size, split="test")
    n = min(args.n, len(test.labels))
    items = [test[i] for i in range(n)]                                  # (image in [-1, 1], padded; label)
    x0_all, y_all = torch.stack([x for x, _ in items]).float(), torch.tensor([int(y) for _, y in items])
    noise_all = torch.randn(x0_all.shape, generator=torch.Generator().manual_seed(0))
    channels = x0_all.shape[1]
    steps = [int(v) for v in args.timesteps.split(",")]
    with torch.no_grad():
        table = model.y_embedder.embedding_table.weight[:classes].float()
        t_emb = model.t_embedder(torch.tensor(steps, device=device)).float()
    sizes = dict(label_spread_rms=(table - table.mean(0)).pow(2).mean().sqrt().item(),
                 timestep_rms=t_emb.pow(2).mean().sqrt().item(), cond_dim=table.shape[1])
    rows = [sizes]
    print(f"{checkpoint} ({model.config.extra.get('name', type(model).__name__)}), {n} test images, "
          f"{'raw' if args.raw_weights else 'EMA'} weights")
    print(f"condition width {sizes['cond_dim']}: label rows' spread (RMS) {sizes['label_spread_rms']:.4f}, "
          f"timestep embedding (RMS) {sizes['timestep_rms']:.4f}")
    print(f"{'t':>5} {'mse true':>9} {'mse wrong':>9} {'mse null':>9} {'x0 shift':>9}")
    for step in steps:
        sums = torch.zeros(4, dtype=torch.float64)
        for i in range(0, n, args.batch_size):
            x0, y = x0_all[i:i + args.batch_size].to(device), y_all[i:i + args.batch_size].to(device)
            noise = noise_all[i:i + args.batch_size].to(device)
            t = torch.full((len(y),), step, dtype=torch.long, device=device)
            x_t = diffusion.q_sample(x0, t, noise)
            labels = {"true": y, "wrong": (y + 1) % classes, "null": torch.full_like(y, classes)}
            eps = {}
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                for name, label in labels.items():
                    eps[name] = model(x_t, t, label).float()[:, :channels]
            abar = float(diffusion.alphas_cumprod[step])
            shift = ((1 - abar) / abar) ** 0.5 * (eps["true"] - eps["null"])
            sums += torch.tensor([((eps[k] - noise) ** 2).sum().item() for k in ("true", "wrong", "null")]
                                 + [(shift ** 2).sum().item()], dtype=torch.float64)
        mse_true, mse_wrong, mse_null, shift2 = (sums / noise_all.numel()).tolist()
        row = dict(t=step, mse_true=mse_true, mse_wrong=mse_wrong, mse_null=mse_null, x0_shift_rms=shift2 ** 0.5)
        rows.append(row)
        print(f"{step:5d} {mse_true:9.5f} {mse_wrong:9.5f} {mse_null:9.5f} {shift2 ** 0.5:9.4f}")
    if args.json:
        with open(args.json, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
