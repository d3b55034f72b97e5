"""The ``lamamba`` command line: one entry point, one sub-command per job.

Each sub-command lives in its own module, which defines ``add_arguments(parser)`` and
``run(args) -> int | None``. Modules are imported only when their command runs (``--help`` of the
top level imports none), so a missing optional dependency breaks only the command that needs it.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("lamamba.train", "train a model (built-in digits demo by default; torchrun for many GPUs)"),
    "sample": ("lamamba.sample", "sample images from a checkpoint: PNG grid, PNGs, ADM .npz"),
    "evaluate": ("lamamba.evaluation.cli", "FID, sFID, Inception Score, precision/recall of samples"),
    "extract-latents": ("lamamba.data.cli", "encode a dataset once through the VAE into latent shards"),
    "flops": ("lamamba.flops", "parameters and GFLOPs per model and resolution, beside the paper"),
    "bench": ("lamamba.bench", "time training steps and sampling forwards of several models side by side"),
    "experiment": ("lamamba.experiment.cli", "the paper's comparisons at small scale (Fashion-MNIST, one GPU)"),
    "export-diffusers": ("lamamba.interop.export_diffusers", "a checkpoint as a diffusers DiTPipeline directory"),
    "import-diffusers": ("lamamba.interop.import_diffusers", "a pipeline from export-diffusers back into a run"),
    "convert-official": ("lamamba.interop.official", "a checkpoint of the authors' released code into a run"),
    "push": ("lamamba.hub.push", "upload a run's EMA weights, config and model card to the Hugging Face Hub"),
    "plot": ("lamamba.plot", "loss, FID, images/s and learning rate of runs from metrics.jsonl, as a PNG"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lamamba", description="LaMamba-Diff: train, sample, evaluate, count FLOPs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # only the chosen command's module is imported
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return run_command(args.command, importlib.import_module(COMMANDS[args.command][0]).run, args)


def run_command(name: str, run, args: argparse.Namespace) -> int:
    """``run(args)``, with user errors (ValueError, FileNotFoundError) as one clear line and exit code 2."""
    try:
        result = run(args)
    except (ValueError, FileNotFoundError) as e:  # user errors: one clear line, no traceback
        print(f"lamamba {name}: error: {e}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
