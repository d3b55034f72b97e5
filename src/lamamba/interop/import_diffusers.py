"""``lamamba import-diffusers DIR OUT``: a pipeline written by ``lamamba export-diffusers`` back into a run directory.

``DIR`` is the pipeline directory (or its ``transformer/`` folder, or a Hub id of either); ``OUT`` becomes a run
directory with ``checkpoints/<step>/model.safetensors`` + ``config.json`` that ``lamamba.load_pretrained`` and
``lamamba sample`` use. Only safetensors weights are read. Needs ``pip install "lamamba[diffusers]"``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

__all__ = ["add_arguments", "run", "import_diffusers"]

_CLASS = "LaMambaTransformer2DModel"


def _transformer_location(directory: str) -> tuple[str, str | None]:
    """(path or Hub id, subfolder) of the transformer; checks its class when the files are local."""
    path = Path(directory).expanduser()
    if not path.exists():
        return directory, "transformer"  # a Hub id: diffusers resolves it (the local cache when offline)
    folder = path / "transformer" if (path / "transformer").is_dir() else path
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: give a directory written by `lamamba export-diffusers`")
    name = json.loads(config.read_text()).get("_class_name")
    if name != _CLASS:
        raise ValueError(f"{folder} holds a {name}, not a {_CLASS}: only pipelines written by "
                         "`lamamba export-diffusers` convert back")
    return str(folder), None


def import_diffusers(directory: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the transformer's weights and inference config as ``out/checkpoints/<step>/``; the checkpoint path."""
    from lamamba.interop.diffusers_model import LaMambaTransformer2DModel

    from lamamba.pretrained import save_pretrained

    location, subfolder = _transformer_location(os.fspath(directory))
    kwargs = {} if importlib.util.find_spec("accelerate") else {"low_cpu_mem_usage": False}
    try:
        transformer = LaMambaTransformer2DModel.from_pretrained(location, subfolder=subfolder, use_safetensors=True,
                                                                **kwargs)
    except OSError as error:  # diffusers reports missing files and failed downloads as OSError
        raise FileNotFoundError(f"could not load a {_CLASS} from {location!r}: {error}") from error
    info = transformer.info
    target = Path(out) / "checkpoints" / f"{int(info.get('step', 0)):07d}"
    if target.exists():
        raise ValueError(f"{target} already exists; choose a new output directory")
    return save_pretrained(transformer.model, target, info)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="DiTPipeline directory from export-diffusers (or Hub id)")
    parser.add_argument("out", metavar="OUT", help="run directory to write")


def run(args: argparse.Namespace) -> int:
    path = import_diffusers(args.directory, args.out)
    print(f"wrote {path}: lamamba sample {args.out}")
    return 0
