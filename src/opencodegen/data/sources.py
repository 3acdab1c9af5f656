"""Corpus sources: source trees, JSONL and parquet records, turned into `Document`s.

Every input that cannot be used (binary or non-UTF-8 file, unreadable path, malformed record,
language not wanted, ...) is counted in a `SkipCounter` under a reason and skipped; only a
missing input path or a parquet file without the text column is a fatal `DataError`.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from opencodegen.errors import DataError
from opencodegen.extras import require

EXTENSIONS: dict[str, str] = {
    ".py": "python", ".pyi": "python", ".pyw": "python",
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".c++": "cpp", ".hh": "cpp", ".hpp": "cpp",
    ".hxx": "cpp", ".h++": "cpp", ".ipp": "cpp",
    ".go": "go",
    ".java": "java",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".tsx": "typescript",
    ".rs": "rust", ".rb": "ruby", ".php": "php", ".cs": "csharp", ".scala": "scala",
    ".kt": "kotlin", ".swift": "swift", ".sh": "shell", ".bash": "shell", ".lua": "lua",
}
"""File extension (lower case) -> language name. `.h` counts as C."""

LANGUAGE_ALIASES: dict[str, str] = {
    "c++": "cpp", "cplusplus": "cpp", "js": "javascript", "py": "python", "python3": "python",
    "golang": "go", "ts": "typescript", "c#": "csharp", "bash": "shell", "sh": "shell",
}
"""Spellings of a record's language field (lower case) -> canonical language name."""

RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
SKIPPED_DIRS = frozenset({".git", ".hg", ".svn"})


@dataclass(frozen=True)
class Document:
    """One source file or record: its text, language (None if unknown) and where it came from."""

    text: str
    language: str | None
    source: str


class SkipCounter(Counter):
    """Counts skipped inputs by reason (``binary``, ``non_utf8``, ``duplicate``, ...)."""

    def skip(self, reason: str) -> None:
        self[reason] += 1


def language_of_path(path: str) -> str | None:
    """The language of a file name by its extension, or None."""
    name = path.lower()
    dot = name.rfind(".")
    return EXTENSIONS.get(name[dot:]) if dot >= 0 else None


def normalize_language(name: str) -> str:
    """Canonical language name of a user- or record-given spelling ("C++" -> "cpp")."""
    key = name.strip().lower()
    return LANGUAGE_ALIASES.get(key, key)


def decode_source(data: bytes) -> tuple[str | None, str | None]:
    """(text, None) for a UTF-8 text file, else (None, reason) with reason binary / non_utf8.

    A file is binary when it contains a NUL byte; a leading UTF-8 byte-order mark is dropped.
    """
    if b"\x00" in data:
        return None, "binary"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "non_utf8"
    return text.removeprefix("\ufeff"), None


class CorpusReader:
    """Yields the documents of several inputs, counting what it skips in `skipped`.

    `languages` (canonical names) keeps only those languages; records without a language
    (no language field, no known path extension) are then skipped as ``language_excluded``
    too. Tree walks read only files with a known extension, follow directory symlinks but
    enter each real directory once (so symlink loops end), and skip files over `max_bytes`.
    """

    def __init__(
        self,
        *,
        text_field: str = "content",
        lang_field: str | None = "lang",
        path_field: str | None = "path",
        languages: Iterable[str] | None = None,
        max_bytes: int = 10_000_000,
    ) -> None:
        self.text_field = text_field
        self.lang_field = lang_field
        self.path_field = path_field
        self.languages = {normalize_language(x) for x in languages} if languages else None
        self.max_bytes = max_bytes
        self.skipped = SkipCounter()

    def read(self, inputs: Iterable[str | Path]) -> Iterator[Document]:
        """All documents of `inputs` (directories, source files, .jsonl[.gz], .parquet), in order."""
        paths = [Path(p) for p in inputs]
        for path in paths:
            if not path.exists():
                raise DataError(f"input not found: {path}")
        for path in paths:
            name = path.name.lower()
            if path.is_dir():
                yield from self._walk(path)
            elif name.endswith((".jsonl", ".jsonl.gz")):
                yield from self._jsonl(path)
            elif name.endswith(".parquet"):
                yield from self._parquet(path)
            else:
                doc = self._file(str(path), language_of_path(str(path)))
                if doc is not None:
                    yield doc

    def _wanted(self, language: str | None) -> bool:
        if self.languages is None or language in self.languages:
            return True
        self.skipped.skip("language_excluded")
        return False

    def _walk(self, root: Path) -> Iterator[Document]:
        seen_dirs: set[tuple[int, int]] = set()

        def on_error(exc: OSError) -> None:
            self.skipped.skip("unreadable")

        for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=on_error):
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen_dirs:  # reached again through a symlink
                self.skipped.skip("revisited_dir")
                dirnames.clear()
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
            for filename in sorted(filenames):
                language = language_of_path(filename)
                if language is None:
                    self.skipped.skip("unknown_language")
                    continue
                if not self._wanted(language):
                    continue
                doc = self._file(os.path.join(dirpath, filename), language, checked=True)
                if doc is not None:
                    yield doc

    def _file(self, path: str, language: str | None, checked: bool = False) -> Document | None:
        if not checked and not self._wanted(language):
            return None
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):  # FIFO, device, socket: never open
                self.skipped.skip("special_file")
                return None
            if st.st_size > self.max_bytes:
                self.skipped.skip("too_large")
                return None
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            self.skipped.skip("unreadable")
            return None
        text, reason = decode_source(data)
        if reason is not None:
            self.skipped.skip(reason)
            return None
        return Document(text, language, path)

    def _record(self, record: object, source: str) -> Document | None:
        if not isinstance(record, dict) or not isinstance(record.get(self.text_field), str):
            self.skipped.skip("bad_record")
            return None
        text = record[self.text_field]
        language = None
        lang = record.get(self.lang_field) if self.lang_field else None
        path = record.get(self.path_field) if self.path_field else None
        if isinstance(lang, str) and lang.strip():
            language = normalize_language(lang)
        elif isinstance(path, str):
            language = language_of_path(path)
        if not self._wanted(language):
            return None
        if isinstance(path, str):
            source = f"{source}:{path}"
        if "\x00" in text:
            self.skipped.skip("binary")
            return None
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates from JSON escapes
            self.skipped.skip("non_utf8")
            return None
        if size > self.max_bytes:
            self.skipped.skip("too_large")
            return None
        return Document(text, language, source)

    def _jsonl(self, path: Path) -> Iterator[Document]:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        try:
            with opener(path, "rb") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except UnicodeDecodeError:
                        self.skipped.skip("non_utf8")
                        continue
                    except ValueError:
                        self.skipped.skip("bad_record")
                        continue
                    doc = self._record(record, f"{path}:{lineno}")
                    if doc is not None:
                        yield doc
        except (OSError, EOFError):  # unreadable or truncated (gzip) file: keep what was read
            self.skipped.skip("unreadable")

    def _parquet(self, path: Path) -> Iterator[Document]:
        require("pyarrow", "data", "reading parquet files")
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowException, OSError):
            self.skipped.skip("unreadable")
            return
        names = set(pf.schema_arrow.names)
        if self.text_field not in names:
            raise DataError(
                f"{path}: no column {self.text_field!r} (columns: {', '.join(sorted(names))}); "
                "choose the text column with --text-field"
            )
        columns = [c for c in (self.text_field, self.lang_field, self.path_field) if c and c in names]
        row = 0
        try:
            for batch in pf.iter_batches(columns=columns, batch_size=1024):
                for record in batch.to_pylist():
                    row += 1
                    doc = self._record(record, f"{path}:{row}")
                    if doc is not None:
                        yield doc
        except (pa.ArrowException, OSError):
            self.skipped.skip("unreadable")
