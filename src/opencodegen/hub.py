"""Hugging Face hub ids, offline first: the local HF cache answers before the network is asked.

The cache is huggingface_hub's (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub),
read from the environment at call time; HF_HUB_OFFLINE=1 forbids every network request. When
the cache lacks a repository the hub is asked once (no retries), and a failure is one error that
names the cache directory and HF_HUB_OFFLINE.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from opencodegen.errors import CheckpointError

_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_TRUE = {"1", "on", "yes", "true"}


def is_hub_id(name: str) -> bool:
    """Whether `name` has the shape of a hub repository id ("org/name")."""
    return bool(_HUB_ID.fullmatch(name)) and not name.startswith((".", "/"))


def hub_cache_dir() -> Path:
    """huggingface_hub's cache directory as the environment sets it now."""
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE (or transformers' TRANSFORMERS_OFFLINE) forbids network requests."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def cached_snapshot(repo_id: str, complete: Callable[[Path], bool]) -> Path | None:
    """The cached snapshot of `repo_id` at refs/main when `complete(snapshot)` holds, else None;
    never touches the network.

    It reads huggingface_hub's cache layout (models--ORG--NAME/refs/main names the commit whose
    files are in snapshots/COMMIT/) instead of calling snapshot_download(local_files_only=True),
    which newer huggingface_hub versions refuse when the repository holds files never downloaded
    (e.g. the .bin weights beside the safetensors ones).
    """
    repo_dir = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    try:
        commit = (repo_dir / "refs" / "main").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    directory = repo_dir / "snapshots" / commit
    return directory if commit and directory.is_dir() and complete(directory) else None


def _not_cached(repo_id: str, reason: str) -> CheckpointError:
    return CheckpointError(
        f"{repo_id!r}: the Hugging Face cache ({hub_cache_dir()}) does not hold it (or not every file "
        f"needed), and {reason}. "
        f"Download it on a machine with network (`hf download {repo_id}`, with the same HF_HOME) "
        "or pass a local checkpoint directory; on an offline machine set HF_HUB_OFFLINE=1 so that "
        "no command tries the network."
    )


def _refuse_when_offline(repo_id: str) -> None:
    if hub_offline():
        raise _not_cached(repo_id, "HF_HUB_OFFLINE is set, so nothing is downloaded")


def _hub_failure(repo_id: str, exc: Exception) -> CheckpointError:
    from huggingface_hub.utils import HfHubHTTPError, RepositoryNotFoundError

    if isinstance(exc, RepositoryNotFoundError):
        return CheckpointError(
            f"{repo_id!r}: no such repository on the Hugging Face hub, or it is private or gated "
            "(log in with `hf auth login`), and it is not a local directory either"
        )
    if isinstance(exc, HfHubHTTPError):
        return _not_cached(repo_id, f"the hub refused the request ({type(exc).__name__}: {exc})")
    return _not_cached(repo_id, f"the hub could not be reached ({type(exc).__name__}: {exc})")


def snapshot(
    repo_id: str, complete: Callable[[Path], bool], allow_patterns: Callable[[list[str]], list[str]]
) -> Path:
    """A directory holding `repo_id`: the cached snapshot when `complete` holds for it, else a
    download of the files `allow_patterns(repository file names)` selects into the cache."""
    cached = cached_snapshot(repo_id, complete)
    if cached is not None:
        return cached
    _refuse_when_offline(repo_id)
    from huggingface_hub import HfApi, snapshot_download

    cache = hub_cache_dir()
    try:
        files = [entry.rfilename for entry in HfApi().model_info(repo_id).siblings or []]
    except Exception as exc:  # one request, no retries: an offline machine fails here at once
        raise _hub_failure(repo_id, exc) from None
    try:
        directory = Path(snapshot_download(repo_id, cache_dir=cache, allow_patterns=allow_patterns(files)))
    except Exception as exc:
        raise _hub_failure(repo_id, exc) from None
    if not complete(directory):
        raise CheckpointError(f"{repo_id!r}: the downloaded snapshot {directory} lacks files this command needs")
    return directory


def config_file(repo_id: str) -> Path:
    """config.json of `repo_id` (from the cache, else downloaded alone: no weights)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache = hub_cache_dir()
    cached = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache)
    if isinstance(cached, str):
        return Path(cached)
    _refuse_when_offline(repo_id)
    try:
        return Path(hf_hub_download(repo_id, "config.json", cache_dir=cache))
    except Exception as exc:
        raise _hub_failure(repo_id, exc) from None
