"""The ``lamamba`` command line: one entry point, one sub-command per job.

Each sub-command lives in its own module, which defines ``add_arguments(parser)`` and
``run(args) -> int | None``. Modules are imported only when their command runs (``--help`` of the
top level imports none), so a missing optional dependency breaks only the command that needs it.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback

# Exit codes (README "Exit codes"): distinct, so that scripts and schedulers can tell the cases apart.
EXIT_OK = 0
EXIT_DIVERGED = 1        # training stopped on a NaN/inf loss or non-finite weights
EXIT_USAGE = 2           # bad input: arguments, files, values (argparse uses 2 as well)
EXIT_SYSTEM = 3          # the file system refused: disk full, read-only or permission denied
EXIT_COMPILE = 4         # torch.compile was asked for (--compile) and failed on this machine
EXIT_INTERNAL = 70       # an unexpected error (a bug): the traceback is printed
EXIT_SIGINT = 130        # interrupted by SIGINT (Ctrl-C); 128 + signal number, as shells report it
EXIT_SIGTERM = 143       # interrupted by SIGTERM (e.g. a scheduler's notice before it kills the job)

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
    """``run(args)``, with every foreseeable failure as one clear line on stderr and a distinct exit code.

    Bad input (ValueError, FileNotFoundError, NotADirectoryError): ``EXIT_USAGE``. A file system that
    refuses a write (other OSErrors, e.g. disk full, read-only, permission denied): ``EXIT_SYSTEM``. A compilation
    that was asked for and failed (a default one falls back to eager where it runs): ``EXIT_COMPILE``.
    Ctrl-C: ``EXIT_SIGINT``; training saves a checkpoint first and reports SIGINT/SIGTERM as 130/143. Anything else is a bug:
    the traceback, then one line, and ``EXIT_INTERNAL``.
    """
    from safetensors import SafetensorError

    from lamamba.models.compile import COMPILE_ERRORS, compile_error_line

    try:
        result = run(args)
    except COMPILE_ERRORS as e:  # before ValueError: Dynamo's errors derive from RuntimeError, some from others
        return _fail(name, f"error: compiling failed ({compile_error_line(e)}); run with --no-compile, or set "
                           "TORCHDYNAMO_VERBOSE=1 for the compiler's traceback", EXIT_COMPILE)
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        return _fail(name, f"error: {e}", EXIT_USAGE)
    except (OSError, SafetensorError) as e:  # disk full, read-only file system, permission denied
        return _fail(name, f"error: {_os_error(e)}; free some space or choose a writable directory",
                     EXIT_SYSTEM)
    except KeyboardInterrupt as e:  # training's Interrupted carries its message and 128 + signal
        return _fail(name, str(e) or "interrupted (Ctrl-C)", getattr(e, "exit_code", EXIT_SIGINT))
    except Exception as e:  # noqa: BLE001 - a bug: keep the traceback, say so in one line
        traceback.print_exc()
        return _fail(name, f"internal error ({type(e).__name__}): this is a bug, please report it with the "
                           "traceback above", EXIT_INTERNAL)
    return int(result or 0)


def _os_error(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        where = f" ({e.filename})" if e.filename else ""
        return f"{e.strerror}{where}"
    return str(e) or type(e).__name__


def _fail(name: str, message: str, code: int) -> int:
    print(f"lamamba {name}: {' '.join(message.split())}", file=sys.stderr)
    return code

if __name__ == "__main__":
    sys.exit(main())
