"""``lamamba push RUN org/name``: upload a run's EMA weights, its ``config.json``, a model card and a sample grid.

The repository is created if needed (``--private`` for a private one). Authentication is huggingface_hub's
(``hf auth login`` or ``HF_TOKEN``). Needs ``pip install "lamamba[hub]"``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from lamamba.extras import require
from lamamba.hub.card import model_card, newest_grid, run_directory
from lamamba.hub.download import parse_hub_ref
from lamamba.pretrained import CONFIG_FILE, WEIGHTS_FILE, load_model_info, resolve_checkpoint

__all__ = ["add_arguments", "run", "stage", "push"]

GRID_FILE = "grid.png"


def stage(checkpoint: str, repo_id: str, folder: Path) -> list[str]:
    """Write what ``push`` uploads into ``folder``: weights, config, ``README.md`` and ``grid.png`` if any."""
    resolved = resolve_checkpoint(checkpoint)
    info = load_model_info(resolved)
    shutil.copyfile(resolved if resolved.is_file() else resolved / WEIGHTS_FILE, folder / WEIGHTS_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    grid = newest_grid(run_directory(resolved), int(info.get("step", 0)))
    if grid is not None:
        shutil.copyfile(grid, folder / GRID_FILE)
    (folder / "README.md").write_text(model_card(repo_id, info, resolved, GRID_FILE if grid else None))
    return sorted(p.name for p in folder.iterdir())


def push(checkpoint: str, repo_id: str, *, revision: str | None = None, private: bool = False,
         message: str | None = None) -> str:
    """Upload ``checkpoint`` to the Hub model repository ``repo_id``; the URL of the commit."""
    ref = parse_hub_ref(repo_id)
    if ref is None or ref.filename or ref.revision or ref.repo_type != "model":
        raise ValueError(f"{repo_id!r} is not a Hub model id: use org/name (and --revision for a branch)")
    hf = require("huggingface_hub", "hub", "lamamba push")
    from huggingface_hub.errors import HfHubHTTPError

    api = hf.HfApi()
    with tempfile.TemporaryDirectory() as tmp:
        files = stage(checkpoint, repo_id, Path(tmp))
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision,
                                       commit_message=message or f"lamamba push: {', '.join(files)}")
        except HfHubHTTPError as error:
            raise ValueError(f"could not push to {repo_id}: {str(error).splitlines()[0]} (log in with "
                             "`hf auth login` or set HF_TOKEN; check the repository name)") from error
    return str(getattr(commit, "commit_url", commit))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="RUN", help="run directory (newest checkpoint) or checkpoint directory")
    parser.add_argument("repo_id", metavar="ORG/NAME", help="Hub model repository (created if needed)")
    parser.add_argument("--revision", default=None, help="branch to push to (created if needed; default: main)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--message", default=None, help="commit message")


def run(args: argparse.Namespace) -> int:
    url = push(args.checkpoint, args.repo_id, revision=args.revision, private=args.private, message=args.message)
    print(f"pushed {args.checkpoint} to {args.repo_id}: {url}")
    return 0
