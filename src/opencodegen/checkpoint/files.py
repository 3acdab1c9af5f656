"""The weight files of a checkpoint directory: finding the directory (local, hub id or the
embedded default), listing its weight files, reading their tensors and writing safetensors.

Safetensors files are read with plain reads straight into the final tensors (or mapped when a
tensor is used as stored), so that loading never holds the file's pages beside a converted copy.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

from opencodegen import default_model, hub
from opencodegen.errors import CheckpointError
from opencodegen.io import atomic_path

_SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]


def resolve_checkpoint(path_or_hub_id: str | os.PathLike[str]) -> Path:
    """A local checkpoint directory, a hub id (the local HF cache first, else downloaded; see
    opencodegen.hub), or "default": the embedded demo model (`opencodegen.default_model`)."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    name = str(path_or_hub_id)
    if name == default_model.NAME:
        return default_model.DIRECTORY
    if path.exists():
        raise CheckpointError(f"{path}: expected a checkpoint directory, found a file")
    if hub.is_hub_id(name):
        return hub.snapshot(name, has_weights, _hub_patterns)
    raise CheckpointError(f"{path}: no such checkpoint directory")


def has_weights(directory: Path) -> bool:
    """Whether `directory` holds a config.json and complete weights (a usable cached snapshot)."""
    try:
        return (directory / "config.json").is_file() and bool(weight_files(directory))
    except CheckpointError:
        return False


def _hub_patterns(files: list[str]) -> list[str]:
    """What to download of a hub repository: config, tokenizer and safetensors weights (the
    .bin weights only where there are no safetensors)."""
    has_safetensors = any(f.endswith(".safetensors") for f in files)
    return _HUB_PATTERNS if has_safetensors else [*_HUB_PATTERNS, "*.bin"]


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint: single or sharded safetensors, else .bin."""
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (directory / single).exists():
            return [directory / single]
        if (directory / index).exists():
            try:
                weight_map = json.loads((directory / index).read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{directory / index}: malformed shard index ({exc})") from None
            files = [directory / name for name in dict.fromkeys(weight_map.values())]
            missing = [f.name for f in files if not f.exists()]
            if missing:
                raise CheckpointError(f"{directory / index}: shard files missing: {', '.join(missing)}")
            return files
    if (directory / "dcp" / ".metadata").is_file():
        raise CheckpointError(f"{directory}: a sharded training checkpoint; make an HF directory of it with "
                              f"`opencodegen convert checkpoint {directory} --out DIR`")
    raise CheckpointError(
        f"{directory}: no weights found (model.safetensors, pytorch_model.bin or a sharded *.index.json)"
    )


def _read_safetensors(path: Path, mappable: Callable[[str, torch.dtype], bool]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from a safetensors file (format: u64 header length, JSON header of
    dtype/shape/data_offsets, raw little-endian data).

    Tensors for which `mappable(name, dtype)` holds are zero-copy views of a private memory map
    of the file (pages load on first touch); the others, which the caller converts, are read
    into fresh memory so that the file's pages never sit beside the converted copy.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file (no header)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > min(size - 8, 100 << 20):
            raise CheckpointError(f"{path}: corrupt safetensors header (length {header_len})")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path}: corrupt safetensors header ({exc})") from None
        header.pop("__metadata__", None)
        base = 8 + header_len
        mapped = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage.from_file(str(path), False, size))
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            try:
                dtype = _SAFETENSORS_DTYPES[info["dtype"]]
                shape = list(info["shape"])
                start, end = (base + offset for offset in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{path}: tensor {name!r}: unsupported or malformed entry {info!r:.120}") from None
            if end > size:
                raise CheckpointError(f"{path}: truncated file: tensor {name!r} ends past the end of the file")
            if mappable(name, dtype) and start % dtype.itemsize == 0:
                buffer = mapped[start:end]
            else:
                buffer = torch.empty(end - start, dtype=torch.uint8)
                f.seek(start)
                if f.readinto(memoryview(buffer.numpy())) != end - start:
                    raise CheckpointError(f"{path}: short read of tensor {name!r}")
            try:
                yield name, buffer.view(dtype).reshape(shape)
            except RuntimeError as exc:
                raise CheckpointError(f"{path}: tensor {name!r}: size does not match shape {shape} ({exc})") from None


def _read_bin(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read PyTorch weights ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    yield from state.items()


def read_tensors(
    files: list[Path], mappable: Callable[[str, torch.dtype], bool] = lambda name, dtype: True
) -> Iterator[tuple[Path, str, torch.Tensor]]:
    """(file, name, tensor) of every stored tensor; see _read_safetensors for `mappable`."""
    for path in files:
        tensors = _read_safetensors(path, mappable) if path.suffix == ".safetensors" else _read_bin(path)
        for name, tensor in tensors:
            yield path, name, tensor



def write_safetensors(state: dict[str, torch.Tensor], directory: Path, max_shard_bytes: int) -> None:
    """Write model.safetensors, or shards plus model.safetensors.index.json past max_shard_bytes."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for shard, name in zip(shards, names):
        with atomic_path(directory / name) as tmp:
            save_file(shard, tmp, metadata={"format": "pt"})
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {key: name for shard, name in zip(shards, names) for key in shard},
        }
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

