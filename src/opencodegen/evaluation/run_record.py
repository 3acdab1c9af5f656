"""What an evaluation run was made with (model, weights, dtype, device, sampler, package versions),
kept in its settings file, and the check that refuses to resume it with anything else.

A resumed run appends to the samples already drawn, so every setting that changes what would be
drawn must match: a change is refused, naming the field. Package versions, the GPU model and the
batch size (each sample has its own random stream) only change floating-point details; a change
there is reported and recorded, not refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opencodegen.errors import ConfigError, DataError
from opencodegen.io import write_atomic
from opencodegen.user_cache import user_cache_dir

# The engine's random-stream scheme (generation.sampling.sequence_seed); a new scheme gets a new name
# so that a run drawn with the old one is never continued with the new one.
RANDOM_STREAMS = "blake2b(seed, row key, sample index)"
# Fields whose change is reported and recorded ("resumed_with") but not refused.
WARN_ONLY = ("versions", "model.device_name", "batch_size")
_HASH_CACHE = "weights-sha256.json"
_CHUNK = 1 << 22


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers: opencodegen, torch, tokenizers."""
    import opencodegen

    versions = {"opencodegen": opencodegen.__version__, "python": sys.version.split()[0]}
    for name in ("torch", "tokenizers"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks; cached in the user cache by (path, size, mtime), since a
    large model's weights are slow to hash."""
    path = path.resolve()
    stat = path.stat()
    cache_file = user_cache_dir() / _HASH_CACHE
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    stamp = [stat.st_size, stat.st_mtime_ns]
    entry = cache.get(str(path)) if isinstance(cache, dict) else None
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    cache = {k: v for k, v in cache.items() if Path(k).exists()} if isinstance(cache, dict) else {}
    cache[str(path)] = {"stamp": stamp, "sha256": digest.hexdigest()}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache_file, json.dumps(cache, indent=1) + "\n")
    except OSError:
        pass  # a read-only cache only costs the next run another hash
    return digest.hexdigest()


def model_record(source: str, directory: Path, model: Any) -> dict[str, Any]:
    """The model of a run: the name given, its directory, the sha256 of each weight file, and the
    dtype and device it samples with."""
    import torch

    from opencodegen.checkpoint.files import weight_files

    device = model.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {
        "source": source,
        "path": str(Path(directory).resolve()),
        "weights_sha256": {f.name: file_sha256(f) for f in weight_files(Path(directory))},
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": device.type,
        "device_name": name,
    }


def sampling_record(params: Any, per_batch: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every setting of a SamplingParams but those set `per_batch`, plus the random-stream scheme."""
    settings = {k: v for k, v in dataclasses.asdict(params).items() if k not in per_batch}
    return {**_as_json(settings), "random_streams": RANDOM_STREAMS}


def check_record(path: Path, wanted: dict[str, Any], error: type[Exception] = ConfigError) -> None:
    """Write `wanted` to `path` for a new run; for a resumed one refuse any change of a field
    (named as dotted paths, e.g. ``model.dtype``), and report and record changes of WARN_ONLY fields."""
    wanted = _as_json(wanted)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_record(path, wanted)
        return
    try:
        found = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    if not isinstance(found, dict):
        raise DataError(f"{path}: not a run record (expected a JSON object); use another --out")
    old, new = dict(_flatten(found)), dict(_flatten(wanted))
    changed = [name for name in sorted(set(old) | set(new)) if name in new and old.get(name) != new.get(name)]
    changed += [name for name in sorted(set(old) - set(new)) if _top(name) in wanted and old[name] is not None]
    refused = [name for name in changed if not _warn_only(name)]
    if refused:
        detail = ", ".join(f"{name}: {old.get(name)!r} -> {new.get(name)!r}" for name in refused)
        raise error(f"{path.parent} holds a run with other settings ({detail}); use another --out")
    noted = [name for name in changed if _warn_only(name)]
    if noted:
        detail = ", ".join(f"{name}: {old.get(name)!r} -> {new.get(name)!r}" for name in noted)
        print(f"warning: resuming {path.parent} with {detail} (recorded in {path.name} under resumed_with)",
              file=sys.stderr)
        found.setdefault("resumed_with", []).append({name: new.get(name) for name in noted})
        _write_record(path, found)


def _as_json(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists), so that records compare equal."""
    return json.loads(json.dumps(value))


def _flatten(record: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in record.items():
        if key == "resumed_with":
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def _warn_only(name: str) -> bool:
    return any(name == field or name.startswith(field + ".") for field in WARN_ONLY)


def _write_record(path: Path, record: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(record, indent=2) + "\n")
