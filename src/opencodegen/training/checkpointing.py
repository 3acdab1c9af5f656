"""Training checkpoints: atomic, checksummed, self-describing, resumable on any world size.

A checkpoint is a directory ``{out_dir}/checkpoints/step-{step:08d}/`` holding

- the weights, in one of three forms: ``config.json`` + ``model.safetensors`` (full: an HF
  CodeGen checkpoint as it is), ``config.json`` + ``dcp/`` (sharded: every rank's shards of the
  model and optimizer state, torch.distributed.checkpoint), or ``adapter_config.json`` +
  ``adapter_model.safetensors`` (a LoRA run: the adapters in peft's layout);
- the tokenizer files of the run;
- ``trainer.pt``: the optimizer state (full and LoRA; keyed by parameter name), the lr schedule,
  step, tokens seen, the data cursor, the RNG states of every rank and the run config;
- ``checkpoint.json``, written last: format, step, and the size and sha256 of every other file.

Everything is written into ``.tmp-step-…`` (sharded: each rank its shards, which it hashes),
fsynced, and renamed into place by rank 0, so a checkpoint directory either is complete or does
not exist. Resuming checks the manifest and every checksum; ``resume="auto"`` walks back from the
newest checkpoint to the newest good one. Every rank reads the checkpoint it resumes from, so
the directory must be visible to all of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from opencodegen.checkpoint.hf import model_from_state
from opencodegen.config import CodeGenConfig
from opencodegen.data.dataset import file_sha256
from opencodegen.errors import CheckpointError
from opencodegen.model import CodeGenForCausalLM
from opencodegen.tokenizer import TOKENIZER_FILES

FORMAT = "opencodegen-train-checkpoint-v1"
MANIFEST = "checkpoint.json"
TRAINER_STATE = "trainer.pt"
PREFIX = "step-"
TMP_PREFIX = ".tmp-"
SHARDED = "dcp"  # subdirectory of a sharded checkpoint (torch.distributed.checkpoint files)


def checkpoints_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def step_of(path: Path) -> int:
    return int(path.name.removeprefix(PREFIX))


def list_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoint directories under `root`, newest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=step_of, reverse=True)


# ---- RNG ----------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's random states, in types `torch.load(weights_only=True)` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- tokenizer files ----------------------------------------------------------------------
def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy the HF tokenizer files present in `src` into `dst`; returns their names."""
    names = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(src / name, dst / name)
    return names


# ---- saving -------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def model_writer(config: CodeGenConfig, state: dict[str, torch.Tensor]) -> Callable[[Path], None]:
    """Writes config.json + model.safetensors of the model with weights `state` into a directory."""
    return lambda directory: model_from_state(config, state).save_pretrained(directory)


def start_checkpoint(out_dir: str | Path, step: int) -> Path:
    """Create the temporary directory checkpoint `step` is written into (main process), after
    deleting what killed saves left behind."""
    root = checkpoints_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(TMP_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f"{TMP_PREFIX}{PREFIX}{step:08d}-{os.getpid()}"
    tmp.mkdir()
    return tmp


def file_entries(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Size and sha256 of each file `names` (relative to `directory`), fsynced first."""
    entries = {}
    for name in names:
        path = directory / name
        _fsync_file(path)
        entries[name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    return entries


def shard_files(directory: Path, rank: int) -> list[str]:
    """The files torch.distributed.checkpoint wrote for `rank` under directory/SHARDED (relative names)."""
    return sorted(f"{SHARDED}/{p.name}" for p in (directory / SHARDED).glob(f"__{rank}_*.distcp"))


def finish_checkpoint(
    tmp: Path,
    step: int,
    trainer_state: dict[str, Any],
    tokenizer_dir: Path | None,
    keep_last: int,
    hashed: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Add trainer.pt, the tokenizer files and the manifest (`hashed`: entries other ranks
    computed for the files they wrote; the rest are hashed here) to `tmp`, rename it into
    place, and keep only the newest `keep_last` checkpoints up to it; returns its path."""
    torch.save(trainer_state, tmp / TRAINER_STATE)
    if tokenizer_dir is not None:
        copy_tokenizer_files(tokenizer_dir, tmp)
    hashed = dict(hashed or {})
    names = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    files = {**file_entries(tmp, [n for n in names if n not in hashed]), **hashed}
    missing = sorted(set(hashed) - set(names))
    if missing:
        raise CheckpointError(f"{tmp}: files reported written are missing: {missing[:3]}")
    manifest = {"format": FORMAT, "step": step, "created": time.time(), "files": dict(sorted(files.items()))}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    _fsync_file(tmp / MANIFEST)
    for directory in (p for p in tmp.rglob("*") if p.is_dir()):
        _fsync_dir(directory)
    _fsync_dir(tmp)
    root = tmp.parent
    final = root / tmp.name.removeprefix(TMP_PREFIX).rsplit("-", 1)[0]
    if final.exists():  # the same step saved again after a resume: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    older = [p for p in list_checkpoints(root) if step_of(p) < step]
    for old in older[keep_last - 1:]:  # checkpoints after `step` (an abandoned future) are left alone
        shutil.rmtree(old, ignore_errors=True)
    return final


def is_sharded(path: Path) -> bool:
    """Whether checkpoint `path` holds its model and optimizer state as torch.distributed.checkpoint shards."""
    return (path / SHARDED / ".metadata").is_file()


@contextlib.contextmanager
def single_process_dcp() -> Iterator[None]:
    """Silence torch.distributed.checkpoint's warning that it runs without a process group (we
    ask for that: one process reading or writing every shard)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def load_sharded_model(path: Path, dtype: torch.dtype | None = None) -> CodeGenForCausalLM:
    """The model of a sharded checkpoint, read tensor by tensor (the optimizer state is not read,
    and each tensor is converted to `dtype` before the next is read)."""
    import torch.distributed.checkpoint as dcp

    config = CodeGenConfig.from_json_file(path / "config.json")
    with torch.device("meta"):
        shapes = {name: (t.shape, t.dtype) for name, t in CodeGenForCausalLM(config).state_dict().items()}
    state = {}
    for name, (shape, stored) in shapes.items():
        box = {"model": {name: torch.empty(shape, dtype=stored)}}
        try:
            with single_process_dcp():
                dcp.load(box, checkpoint_id=path / SHARDED, no_dist=True)
        except Exception as exc:
            raise CheckpointError(f"{path / SHARDED}: cannot read {name} ({type(exc).__name__}: {exc})") from None
        state[name] = box["model"][name].to(dtype or stored)
    return model_from_state(config, state)


# ---- verifying and finding ----------------------------------------------------------------
def verify_checkpoint(path: Path) -> dict[str, Any]:
    """The manifest of checkpoint `path` after checking every file's size and sha256.

    Raises CheckpointError saying what is wrong (missing manifest: unfinished write; size or
    checksum mismatch: corrupt file).
    """
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not manifest_path.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST}; the checkpoint was not completely written")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {manifest.get('format')!r}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{manifest_path}: corrupt manifest ({exc})") from None
    for name, info in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: file {name} listed in {MANIFEST} is missing")
        size = file.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(f"{file}: corrupt or half-written: {size} bytes, expected {info['bytes']}")
        if file_sha256(file) != info["sha256"]:
            raise CheckpointError(f"{file}: corrupt: sha256 does not match {MANIFEST}")
    if TRAINER_STATE not in files:
        raise CheckpointError(f"{path}: no {TRAINER_STATE}; not a training checkpoint")
    return manifest


def find_checkpoint(resume: str, out_dir: str | Path, say: Callable[[str], None] = print) -> Path | None:
    """The checkpoint to resume from: `resume` is "auto" (newest good one in out_dir, or None
    when there is none yet), a run directory (its newest good one) or a checkpoint directory."""
    target = Path(resume) if resume != "auto" else Path(out_dir)
    if (target / MANIFEST).is_file() or target.name.startswith(PREFIX):
        verify_checkpoint(target)
        return target
    root = checkpoints_root(target)
    if resume != "auto" and not root.is_dir():
        raise CheckpointError(f"{resume}: neither a checkpoint nor a run directory with checkpoints/")
    for stale in root.glob(TMP_PREFIX + "*") if root.is_dir() else ():
        say(f"ignoring {stale.name}: an unfinished (half-written) checkpoint")
    candidates = list_checkpoints(root)
    if resume != "auto" and not candidates:
        raise CheckpointError(f"{root}: no checkpoints to resume from")
    problems = []
    for path in candidates:
        try:
            verify_checkpoint(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            say(f"skipping checkpoint {path.name}: {exc}")
            continue
        if problems:
            say(f"falling back to checkpoint {path.name}, the newest good one")
        return path
    if problems:
        raise CheckpointError(f"{root}: no usable checkpoint; all {len(problems)} are damaged ({problems[0]})")
    return None


def load_trainer_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"{path / TRAINER_STATE}: unreadable ({type(exc).__name__}: {exc})") from None


def export_checkpoint(path: str | Path, out: str | Path, dtype: torch.dtype | str | None = None) -> Path:
    """Write checkpoint `path` (or the newest good one of a run directory) as an HF CodeGen
    directory: config.json, safetensors in `dtype` (default: as stored) and the tokenizer files.
    A LoRA run's checkpoint is merged into its base model first."""
    from opencodegen.checkpoint import load_model
    from opencodegen.devices import parse_dtype

    source = _newest_good(path)
    if is_sharded(source):
        model = load_sharded_model(source, parse_dtype(dtype) if dtype is not None else None)
    else:
        _, model = load_model(source, dtype=dtype)
    out = Path(out)
    model.save_pretrained(out)
    if not copy_tokenizer_files(source, out):
        warnings.warn(f"{source} holds no tokenizer files; {out} has none either", stacklevel=2)
    return source


def export_adapter(path: str | Path, out: str | Path) -> Path:
    """Copy the LoRA adapter of checkpoint `path` (or a run's newest good one) and the tokenizer
    files into `out`: a peft adapter directory."""
    from opencodegen.checkpoint.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS

    source = _newest_good(path)
    if not (source / ADAPTER_CONFIG).is_file():
        raise CheckpointError(f"{source}: not a LoRA checkpoint (no {ADAPTER_CONFIG})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        shutil.copyfile(source / name, out / name)
    copy_tokenizer_files(source, out)
    return source


def _newest_good(path: str | Path) -> Path:
    source = find_checkpoint(str(path), path, say=lambda _: None)
    if source is None:
        raise CheckpointError(f"{path}: no checkpoint to export")
    return source
