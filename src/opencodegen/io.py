"""Files below evaluation, training and data: JSON-lines reading with one error format, atomic
writes, and append-only JSONL results that survive a kill and resume."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import secrets
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from opencodegen.errors import DataError


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of a JSON-lines file (gzip if it ends in .gz);
    a bad line or an unreadable file is a DataError naming the file and the line."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                    if not isinstance(record, dict):
                        raise DataError(f"{path}:{lineno}: expected a JSON object")
                    yield lineno, record
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside `path` for the block to write (itself or through a tool); renamed
    over `path` when the block ends, removed when it raises. A reader never sees half a file and a
    killed or failed writer leaves the old one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` through `atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


class ResultStore:
    """A JSONL file of records, each identified by the values of `key_fields`.

    Every append is flushed and fsync'ed, so a killed run loses at most the line it
    was writing; that torn last line is cut off when the file is opened again.
    """

    def __init__(self, path: str | os.PathLike[str], key_fields: Sequence[str]):
        self.path = Path(path)
        self.key_fields = tuple(key_fields)
        self._records: list[dict[str, Any]] = []
        self._keys: set[tuple[Any, ...]] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._load()

    def key(self, record: dict[str, Any]) -> tuple[Any, ...]:
        try:
            return tuple(_hashable(record[f]) for f in self.key_fields)
        except KeyError as exc:
            raise DataError(f"{self.path}: record lacks key field {exc.args[0]!r}: {record!r:.200}") from None

    def _load(self) -> None:
        data = self.path.read_bytes()
        good_end = 0
        for lineno, line in enumerate(data.splitlines(keepends=True), start=1):
            complete = line.endswith(b"\n")
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if complete and good_end + len(line) < len(data):
                    raise DataError(f"{self.path}:{lineno}: not valid JSON; fix or remove that line") from None
                break  # torn final line of a killed run
            if not complete:
                break
            self._add(record)
            good_end += len(line)
        if good_end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good_end)

    def _add(self, record: dict[str, Any]) -> None:
        key = self.key(record)
        if key in self._keys:
            raise DataError(f"{self.path}: duplicate record for {dict(zip(self.key_fields, key))}")
        self._keys.add(key)
        self._records.append(record)

    def __contains__(self, key: tuple[Any, ...]) -> bool:
        return tuple(_hashable(k) for k in key) in self._keys

    def __len__(self) -> int:
        return len(self._records)

    @property
    def records(self) -> list[dict[str, Any]]:
        return list(self._records)

    def append(self, record: dict[str, Any]) -> None:
        self.extend([record])

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
        records = list(records)
        for record in records:
            self._add(record)
        if not records:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value
