"""Where the pure-noise samples of LaMamba-Diff-S on Fashion-MNIST come from (issue 13, item 1; GPU).

    python benchmarks/noise_samples.py train RUN_DIR [--model-arg qk_norm=true] [--seed 0]
    python benchmarks/noise_samples.py diagnose RUN_DIR --json out.json [--n 2000]
    python benchmarks/noise_samples.py compare RUN_DIR --json out.json [--settings dpm++2m:20,dpm++2m-sde:25,...]

``train`` runs the experiment's ``lamamba-s`` recipe (``lamamba experiment fashion-mnist``: 1,920 steps of 64,
bf16, EMA 0.999) but keeps a checkpoint every 240 steps. ``diagnose`` then measures, with the same samples
``lamamba sample`` draws (sample i: seed (0, i), label i % 10; DPM-Solver++(2M), 20 steps, bf16, no clamp):

* ``census``: the failure rate (mean |horizontal difference| of the uint8 image > 45) at every checkpoint,
  EMA and raw weights;
* ``trajectory`` (final checkpoint, EMA, up to 64 failing and 64 good samples): per solver step the x_0
  estimate's roughness, standard deviation and the eps estimate's standard deviation and its correlation
  with x_t, failing vs good;
* ``activations``: per step and per block, each branch's RMS output (SS2D, attention, MLP: before the gate),
  the gate/scale magnitudes, the attention's largest logit and its mean top-1 weight; the ratio of the
  failing samples' median to the good ones' and the first (step, module) where it leaves [0.5, 2];
* ``dependence``: the failing initial noises with the other nine labels and the null label, with DDPM (250),
  DDIM (50), DPM-Solver++ (50 steps), fp32, raw weights; the good noises with the failing samples' labels.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from lamamba.diffusion import create_diffusion
from lamamba.experiment import fashion_mnist
from lamamba.ops.window_layout import relative_position_index, window_geometry, window_partition
from lamamba.pretrained import list_checkpoints, load_model_info, load_pretrained
from lamamba.sample import generate, sample_seed, to_uint8

THRESHOLD = 45.0  # lamamba.experiment.fashion_mnist.noise_fraction's threshold (of 255)


def roughness(images: torch.Tensor) -> np.ndarray:
    """Per-sample failure score of model-space samples: the experiment's ``roughness`` of their uint8 images."""
    return fashion_mnist.roughness(to_uint8(images))


def train(args) -> None:
    from lamamba import train as train_cli
    from lamamba.experiment.fashion_mnist import RUNS, ExperimentConfig, _parse, train_argv

    cfg = ExperimentConfig(out="/tmp/unused")
    argv = train_argv(cfg, RUNS["lamamba-s"])
    argv[argv.index("--run-dir") + 1] = args.run_dir
    argv[argv.index("--ckpt-every") + 1] = str(args.ckpt_every)
    argv[argv.index("--keep-last") + 1] = "0"
    argv[argv.index("--seed") + 1] = str(args.seed)
    if args.max_steps:
        argv[argv.index("--max-steps") + 1] = str(args.max_steps)
    for kv in args.model_arg:
        argv += ["--model-arg", kv]
    print("lamamba train " + " ".join(argv), flush=True)
    sys.exit(train_cli.run(_parse(train_cli, argv)))


def sample(model, diffusion, idx, labels, *, sampler="dpm++2m", steps=20, bf16=True, center=False):
    out = []
    for s in range(0, len(idx), 1000):
        out.append(generate(model, diffusion, indices=idx[s:s + 1000], labels=labels[s:s + 1000], seed=0,
                            sampler=sampler, steps=steps,
                            autocast_dtype=torch.bfloat16 if bf16 and torch.cuda.is_available() else None,
                            clip_denoised=False, center_noise=center))
    return torch.cat(out)


class Probe:
    """Forward hooks on every LaMamba block: per-sample statistics of each branch, collected per call."""

    def __init__(self, model):
        self.rows: list[dict[str, torch.Tensor]] = []
        self.current: dict[str, torch.Tensor] = {}
        self.handles = []
        for i, block in enumerate(model.blocks()):
            name = f"b{i:02d}"
            self.handles.append(block.op.register_forward_hook(self._rms(f"{name}.ssm")))
            self.handles.append(block.mlp.register_forward_hook(self._rms(f"{name}.mlp")))
            self.handles.append(block.register_forward_hook(self._rms(f"{name}.out")))
            self.handles.append(block.adaLN_modulation.register_forward_hook(self._mod(name, block.num_mod)))
            if block.has_attention:
                self.handles.append(block.attn.register_forward_hook(self._rms(f"{name}.attn")))
                self.handles.append(block.attn.register_forward_pre_hook(self._logits(f"{name}.attn")))

    def _put(self, key, value):
        self.current[key] = value.float().detach().cpu()

    def _rms(self, key):
        def hook(module, inputs, output):
            self._put(key + ".rms", output.float().pow(2).mean(dim=tuple(range(1, output.dim()))).sqrt())
        return hook

    def _mod(self, name, n):
        def hook(module, inputs, output):
            chunks = output.float().chunk(n, dim=-1)
            labels = ["shift_ssm", "scale_ssm", "gate_ssm"] + (["shift_attn", "scale_attn", "gate_attn"]
                                                               if n == 9 else []) + ["shift_mlp", "scale_mlp",
                                                                                     "gate_mlp"]
            for label, chunk in zip(labels, chunks):
                if label.startswith(("scale", "gate")):
                    self._put(f"{name}.{label}.absmax", chunk.abs().amax(dim=-1))
        return hook

    def _logits(self, key):
        def hook(module, inputs):
            x = inputs[0].float()
            B, H, W, C = x.shape
            wh, ww, sh, sw = window_geometry(H, W, module.window_size, module.shift)
            if sh or sw:
                x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
            win = window_partition(x, wh, ww)
            n_win, N, h = (H // wh) * (W // ww), wh * ww, module.num_heads
            hd = C // h
            qkv = F.linear(win, module.qkv.weight.float(), module.qkv.bias.float()).view(B, n_win, N, 3, h, hd)
            q, k = qkv[..., 0, :, :].transpose(2, 3), qkv[..., 1, :, :].transpose(2, 3)   # (B, nW, h, N, hd)
            if module.q_norm is not None:
                q, k = module.q_norm(q), module.k_norm(k)
            index = relative_position_index(wh, ww, module.window_size, x.device)
            bias = module.relative_position_bias_table.float()[index.view(-1)].view(N, N, h).permute(2, 0, 1)
            logits = q @ k.transpose(-1, -2) * hd ** -0.5 + bias                         # shift mask ignored
            self._put(key + ".logit_max", logits.abs().amax(dim=(1, 2, 3, 4)))
            self._put(key + ".top1", logits.softmax(-1).amax(-1).mean(dim=(1, 2, 3)))
        return hook

    def model_fn(self, model):
        def fn(x, t, **kw):
            self.current = {}
            out = model(x, t, **kw)
            self.rows.append(self.current)
            return out
        return fn

    def close(self):
        for handle in self.handles:
            handle.remove()


def trajectory(model, diffusion, idx, labels, steps=20):
    """DPM-Solver++(2M) as lamamba sample runs it, recording per step x_t, the eps and x_0 estimates and
    the block statistics."""
    device = next(model.parameters()).device
    c = model.config
    shape = (c.in_channels, c.input_size, c.input_size)
    x_T = torch.stack([torch.randn(shape, generator=torch.Generator(device).manual_seed(sample_seed(0, int(i))),
                                   device=device) for i in idx])
    probe = Probe(model)
    records = []

    def net(x, t, **kw):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = probe.model_fn(model)(x, t, **kw).float()
        records.append(dict(t=int(t[0]), x=x.float(), out=out))
        return out

    def denoised(d):
        records[-1]["d"] = d.float()
        return d

    with torch.no_grad():
        final = diffusion.sample(net, None, x_T, sampler="dpm++2m", steps=steps,
                                 model_kwargs={"y": labels.to(device)}, denoised_fn=denoised)
    probe.close()
    return final, records, probe.rows


def summarize_steps(records, rows, fail_mask):
    ok = ~fail_mask
    steps = []
    for k, (rec, act) in enumerate(zip(records, rows)):
        x, eps, d = rec["x"], rec["out"][:, :1], rec["d"]
        rough_d = np.abs(np.diff(d.clamp(-1, 1).cpu().numpy(), axis=3)).mean(axis=(1, 2, 3)) * 127.5
        corr = F.cosine_similarity(eps.flatten(1), x.flatten(1)).cpu().numpy()
        stats = dict(x_std=x.flatten(1).std(1).cpu().numpy(), eps_std=eps.flatten(1).std(1).cpu().numpy(),
                     eps_x_cos=corr, d_std=d.flatten(1).std(1).cpu().numpy(), d_rough=rough_d,
                     var_mean=rec["out"][:, 1:].flatten(1).mean(1).cpu().numpy())
        row = dict(step=k, t=rec["t"])
        for name, v in stats.items():
            row[name] = [float(np.median(v[fail_mask])), float(np.median(v[ok]))]
        ratios = {}
        for name, v in act.items():
            v = v.numpy()
            f, g = float(np.median(v[fail_mask])), float(np.median(v[ok]))
            ratios[name] = [f, g, f / g if g else float("nan")]
        row["modules"] = ratios
        steps.append(row)
    return steps


def diagnose(args) -> None:
    thr = args.threshold
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    ckpts = list_checkpoints(f"{args.run_dir}/checkpoints")
    info = load_model_info(ckpts[-1][1])
    diffusion = create_diffusion(**info["diffusion"])
    n = args.n
    model_classes = info["model"]["num_classes"] if "model" in info else 10
    idx = list(range(n))
    labels = torch.arange(n) % model_classes
    card = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    report: dict = dict(run=args.run_dir, n=n, card=card, census={})
    tic = time.time()
    for step, path in ckpts:
        row = {}
        for weights in ("ema", "raw"):
            model = load_pretrained(path, use_ema=weights == "ema", device=device)
            r = roughness(sample(model, diffusion, idx, labels))
            row[weights] = dict(fail=float((r > thr).mean()), failing=np.flatnonzero(r > thr).tolist())
        report["census"][step] = row
        print(f"census step {step}: ema {row['ema']['fail']:.4f} raw {row['raw']['fail']:.4f} "
              f"({time.time() - tic:.0f} s)", flush=True)
    final = report["census"][ckpts[-1][0]]["ema"]["failing"]
    if not final or len(final) == n:
        print("no failing (or no good) samples at the final checkpoint: nothing to compare")
        report["trajectory"] = None
        json.dump(report, open(args.json, "w"), indent=1)
        return
    model = load_pretrained(ckpts[-1][1], use_ema=True, device=device)
    fail_idx = final[:64]
    good_idx = [i for i in idx if i not in set(final)][:64]
    both = fail_idx + good_idx
    both_labels = torch.tensor(both) % 10
    out, records, rows = trajectory(model, diffusion, both, both_labels)
    r = roughness(out)
    fail_mask = np.zeros(len(both), bool)
    fail_mask[:len(fail_idx)] = True
    report["trajectory_reproduces"] = [float((r[fail_mask] > thr).mean()), float((r[~fail_mask] > thr).mean())]
    steps = summarize_steps(records, rows, fail_mask)
    report["trajectory"] = steps
    first = None
    for row in steps:
        outliers = sorted(((abs(math.log(max(v[2], 1e-9))), name, v) for name, v in row["modules"].items()
                           if v[2] == v[2]), reverse=True)
        row["top"] = [(name, v) for _, name, v in outliers[:8]]
        if first is None and outliers and outliers[0][0] > math.log(2):
            first = (row["step"], row["t"], outliers[0][1], outliers[0][2])
    report["first_divergence"] = first
    print("first module outside [0.5, 2] x the good samples' median:", first, flush=True)

    # dependence on the label, the sampler, the precision and the weights
    dep = {}
    fl = torch.tensor(fail_idx)
    for j in range(1, 10):
        dep[f"label+{j}"] = float((roughness(sample(model, diffusion, fail_idx, (fl + j) % 10)) > thr).mean())
    dep["null label"] = float((roughness(sample(model, diffusion, fail_idx, torch.full_like(fl, model.config.num_classes))) > thr).mean())
    gl = torch.tensor(good_idx)
    dep["good noise, failing labels"] = float((roughness(sample(model, diffusion, good_idx, fl.repeat(len(gl))[:len(gl)] % 10))
                                               > thr).mean())
    for name, kw in [("ddpm 250", dict(sampler="ddpm", steps=250)), ("ddim 50", dict(sampler="ddim", steps=50)),
                     ("dpm++2m 50", dict(sampler="dpm++2m", steps=50)), ("fp32", dict(bf16=False))]:
        dep[name] = float((roughness(sample(model, diffusion, fail_idx, fl % 10, **kw)) > thr).mean())
    raw = load_pretrained(ckpts[-1][1], use_ema=False, device=device)
    dep["raw weights"] = float((roughness(sample(raw, diffusion, fail_idx, fl % 10)) > thr).mean())
    report["dependence"] = dep
    print("dependence (failure rate of the failing noises):", json.dumps(dep), flush=True)
    json.dump(report, open(args.json, "w"), indent=1)
    for row in steps:
        print(f"step {row['step']:2d} t {row['t']:3d} d_rough {row['d_rough'][0]:6.1f}/{row['d_rough'][1]:6.1f} "
              f"eps_std {row['eps_std'][0]:.3f}/{row['eps_std'][1]:.3f} eps.x cos {row['eps_x_cos'][0]:.3f}/"
              f"{row['eps_x_cos'][1]:.3f} | " + ", ".join(f"{n} {v[2]:.2f}" for n, v in row["top"][:4]))


def compare(args) -> None:
    """Failure rates of several samplers on the same samples (final checkpoint, EMA), and what distinguishes
    the initial noises that fail under the first setting: their mean, low-frequency content (average-pooled
    standard deviation) and the first x_0 estimate's brightness, failing vs good."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = list_checkpoints(f"{args.run_dir}/checkpoints")[-1][1]
    info = load_model_info(ckpt)
    diffusion = create_diffusion(**info["diffusion"])
    model = load_pretrained(ckpt, use_ema=True, device=device)
    idx, labels = list(range(args.n)), torch.arange(args.n) % 10
    report = dict(run=args.run_dir, n=args.n, settings={})
    fails = {}
    for setting in args.settings.split(","):
        sampler, steps, *flags = setting.split(":")
        tic = time.time()
        r = roughness(sample(model, diffusion, idx, labels, sampler=sampler, steps=int(steps),
                             center="center" in flags))
        fails[setting] = r > args.threshold
        report["settings"][setting] = dict(fail=float(fails[setting].mean()), seconds=time.time() - tic,
                                           failing=np.flatnonzero(fails[setting]).tolist())
        print(f"{setting:16s} failed {fails[setting].mean():.4f} ({time.time() - tic:.0f} s)", flush=True)
    first = fails[args.settings.split(",")[0]]
    c = model.config
    x_T = torch.stack([torch.randn((c.in_channels, c.input_size, c.input_size),
                                   generator=torch.Generator(device).manual_seed(sample_seed(0, i)), device=device)
                       for i in idx])
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        t = torch.full((args.n,), diffusion.num_timesteps - 1, device=device)
        d0 = torch.cat([diffusion.p_mean_variance(model, x_T[s:s + 500], t[s:s + 500],
                                                  {"y": labels[s:s + 500].to(device)})["pred_xstart"]
                        for s in range(0, args.n, 500)]).float()
    feats = dict(mean=x_T.mean((1, 2, 3)), std=x_T.std((1, 2, 3)),
                 pool4_std=F.avg_pool2d(x_T, 4).std((1, 2, 3)), pool8_std=F.avg_pool2d(x_T, 8).std((1, 2, 3)),
                 pool16_std=F.avg_pool2d(x_T, 16).std((1, 2, 3)), d0_mean=d0.mean((1, 2, 3)),
                 d0_pool8_std=F.avg_pool2d(d0, 8).std((1, 2, 3)))
    report["features"] = {}
    for name, v in feats.items():
        v = v.cpu().numpy()
        f, g = v[first], v[~first]
        # AUC: chance that a failing noise scores higher than a good one (0.5 = no information)
        auc = float((f[:, None] > g[None, :]).mean()) if len(f) and len(g) else float("nan")
        report["features"][name] = dict(failing=[float(f.mean()), float(f.std())], good=[float(g.mean()), float(g.std())],
                                        auc=auc)
        print(f"{name:14s} failing {f.mean():+.4f} +- {f.std():.4f}  good {g.mean():+.4f} +- {g.std():.4f}  "
              f"AUC {auc:.3f}", flush=True)
    json.dump(report, open(args.json, "w"), indent=1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("run_dir")
    t.add_argument("--model-arg", action="append", default=[])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--ckpt-every", type=int, default=240)
    t.add_argument("--max-steps", type=int, default=0)
    d = sub.add_parser("diagnose")
    d.add_argument("run_dir")
    d.add_argument("--json", required=True)
    d.add_argument("--n", type=int, default=2000)
    d.add_argument("--threshold", type=float, default=THRESHOLD, help="failure score (CPU smoke tests: lower)")
    c = sub.add_parser("compare")
    c.add_argument("run_dir")
    c.add_argument("--json", required=True)
    c.add_argument("--n", type=int, default=2000)
    c.add_argument("--settings", default="dpm++2m:20,dpm++2m-sde:25,ddpm:50,ddpm:250",
                   help="sampler:steps[:center],... (center: zero-mean initial noise per sample; the first "
                        "setting defines the failing set for the noise features)")
    c.add_argument("--threshold", type=float, default=THRESHOLD)
    args = parser.parse_args(argv)
    dict(train=train, diagnose=diagnose, compare=compare)[args.cmd](args)


if __name__ == "__main__":
    main()
