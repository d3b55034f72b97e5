"""Hub references: ``org/name`` or ``org/name@revision`` for a model, ``[datasets/]org/name[@revision]/FILE.npz``
for a file (``lamamba evaluate``), resolved to local files through ``huggingface_hub``.

A local path that exists always wins over a Hub reference of the same spelling. Offline (``HF_HUB_OFFLINE=1`` or
no network) the local Hub cache answers, and a reference it does not hold raises one clear ``FileNotFoundError``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lamamba.extras import require

__all__ = ["HubRef", "MODEL_FILES", "parse_hub_ref", "download_model", "download_file"]

MODEL_FILES = ("model.safetensors", "config.json")  # all that is fetched for a model
_REF = re.compile(r"^(?:hf://)?(?:(?P<type>datasets)/)?(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]*[\w])"
                  r"(?:@(?P<revision>[\w.-]+))?(?:/(?P<file>[^@]+))?$")


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str | None = None
    filename: str | None = None
    repo_type: str = "model"

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_hub_ref(text: str) -> HubRef | None:
    """The Hub reference ``text`` spells, or None if it cannot be one."""
    m = _REF.match(str(text))
    if m is None or ".." in m["repo"]:
        return None
    return HubRef(m["repo"], m["revision"], m["file"], "dataset" if m["type"] else "model")


def _hub(text: str):
    """``huggingface_hub``, or one line saying that ``text`` is no local path and the Hub needs the extra."""
    try:
        return require("huggingface_hub", "hub", "loading from the Hugging Face Hub")
    except ImportError as error:
        raise FileNotFoundError(f"{text!r} does not exist locally; as a Hub id it needs huggingface_hub: "
                                'pip install "lamamba[hub]"') from error


def _not_found(text: str, ref: HubRef, what: str, error: Exception) -> FileNotFoundError:
    _hub(text)
    from huggingface_hub import constants, errors
    if isinstance(error, errors.LocalEntryNotFoundError):
        reason = (f"is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub cannot be "
                  "reached (offline or HF_HUB_OFFLINE=1): download it once with network access, or give a local path")
    elif isinstance(error, errors.RevisionNotFoundError):
        reason = f"has no revision {ref.revision!r} on the Hub"
    elif isinstance(error, errors.RepositoryNotFoundError):
        reason = "does not exist on the Hub (or is private: log in with `hf auth login`)"
    elif isinstance(error, (errors.EntryNotFoundError, errors.HfHubHTTPError)):
        reason = f"could not be fetched ({str(error).splitlines()[0]})"
    else:
        raise error
    return FileNotFoundError(f"{text!r} does not exist locally, and the {what} {ref} {reason}")


def download_model(text: str) -> Path:
    """The local snapshot folder (``model.safetensors`` + ``config.json``) of the Hub model ``text`` names."""
    ref = parse_hub_ref(text)
    if ref is None or ref.filename is not None or ref.repo_type != "model":
        raise FileNotFoundError(f"checkpoint {text!r} is neither a local path nor a Hub model id (org/name[@revision])")
    hf = _hub(text)
    try:
        return Path(hf.snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=list(MODEL_FILES)))
    except Exception as error:  # noqa: BLE001 - mapped to one clear line or re-raised by _not_found
        raise _not_found(text, ref, "Hub model", error) from error


def download_file(text: str) -> Path:
    """The local copy of the Hub file ``[datasets/]org/name[@revision]/FILE`` (from the cache when offline)."""
    ref = parse_hub_ref(text)
    if ref is None or ref.filename is None:
        raise FileNotFoundError(f"{text!r} is neither a local path nor a Hub file ([datasets/]org/name[@rev]/FILE)")
    hf = _hub(text)
    try:
        return Path(hf.hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision, repo_type=ref.repo_type))
    except Exception as error:  # noqa: BLE001
        raise _not_found(text, ref, f"file {ref.filename} of the Hub repository", error) from error
