"""The CodeGen tokenizer: GPT-2 byte-level BPE plus CodeGen's whitespace tokens, on HF ``tokenizers``.

Id layout (as in the released checkpoints): the BPE vocabulary first (GPT-2: 50,257 ids with
``<|endoftext|>`` = 50256 as its last id), then, for Multi/Mono, 38 added whitespace tokens:
runs of n spaces (n = 31 … 2) and of n tabs (n = 9 … 2), longest first. Added tokens are cut out of
the text before byte-level BPE sees it, longest match first, so ``"    return"`` encodes as
[4-space token, "return"]. Tokenizers we train ourselves (:func:`train_tokenizer`) use the same
layout: BPE ids, ``<|endoftext|>`` as the last BPE id, then the whitespace tokens.

A checkpoint directory carries the HF files: ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``,
plus ``added_tokens.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``. Whether the
whitespace tokens exist is read from these files, never guessed from the model name.
"""

from __future__ import annotations

import codecs
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from opencodegen.errors import CheckpointError, ConfigError, DataError, GenerationError
from opencodegen.io import write_atomic

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
#: CodeGen's added tokens in id order: 31 … 2 spaces, then 9 … 2 tabs.
WHITESPACE_TOKENS: tuple[str, ...] = tuple(" " * n for n in range(31, 1, -1)) + tuple(
    "\t" * n for n in range(9, 1, -1)
)
SPECIAL_ROLES = ("bos_token", "eos_token", "unk_token", "pad_token")

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
ADDED_TOKENS_FILE = "added_tokens.json"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
# every file a tokenizer directory may hold (copied along when a model directory is written)
TOKENIZER_FILES = (TOKENIZER_FILE, VOCAB_FILE, MERGES_FILE, ADDED_TOKENS_FILE, CONFIG_FILE, SPECIAL_TOKENS_FILE)
# Keys of a loaded tokenizer_config.json that describe the old location, not the tokenizer.
_STALE_CONFIG_KEYS = ("added_tokens_decoder", "tokenizer_file", "special_tokens_map_file", "name_or_path")


def _byte_level_chars() -> dict[str, int]:
    """GPT-2's reversible map from the 256 bytes to printable characters, inverted (char -> byte)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    byte_of = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            byte_of[chr(256 + shifted)] = b
            shifted += 1
    return byte_of


_CHAR_TO_BYTE = _byte_level_chars()


class CodeGenTokenizer:
    """Byte-level BPE tokenizer with CodeGen's added whitespace tokens.

    ``vocab``/``merges`` are the BPE model (ids must be exactly 0 … len(vocab)-1), ``extra_tokens`` the
    added tokens that follow it in id order (``WHITESPACE_TOKENS`` for Multi/Mono, none for NL),
    ``special_tokens`` maps the roles bos/eos/unk/pad to token strings present in either.
    """

    def __init__(
        self,
        vocab: Mapping[str, int],
        merges: Sequence[tuple[str, str]],
        extra_tokens: Sequence[str] = (),
        *,
        special_tokens: Mapping[str, str | None] | None = None,
        model_max_length: int = 2048,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise ConfigError("BPE vocabulary ids must be exactly 0 … len(vocab)-1")
        if len(set(extra_tokens)) != len(extra_tokens) or any(t in vocab for t in extra_tokens):
            raise ConfigError("added tokens must be distinct and absent from the BPE vocabulary")
        if special_tokens is None:
            special_tokens = dict.fromkeys(("bos_token", "eos_token", "unk_token"), EOS_TOKEN)
        self.special_tokens: dict[str, str | None] = {r: special_tokens.get(r) for r in SPECIAL_ROLES}
        if self.special_tokens["eos_token"] is None:
            raise ConfigError("the tokenizer needs an eos_token")
        specials = {t for t in self.special_tokens.values() if t is not None}
        unknown = specials - set(vocab) - set(extra_tokens)
        if unknown:
            raise ConfigError(f"special tokens {sorted(unknown)} are not in the vocabulary")

        self._vocab = dict(vocab)
        self._merges = [tuple(m) for m in merges]
        self._extra = tuple(extra_tokens)
        self.model_max_length = model_max_length
        self._config = {k: v for k, v in (config or {}).items() if k not in _STALE_CONFIG_KEYS}
        self._token_bytes: list[bytes] | None = None

        tok = Tokenizer(BPE(vocab=self._vocab, merges=self._merges, fuse_unk=False))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        # in id order, each run of plain or special tokens in one call (each call rebuilds the
        # added-token matcher, so one call per token is quadratic in a padded vocabulary)
        for special, run in itertools.groupby(self._extra, key=lambda content: content in specials):
            added = [AddedToken(content, normalized=False, special=special) for content in run]
            (tok.add_special_tokens if special else tok.add_tokens)(added)
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials if t in vocab])
        self._tok = tok

    def padded_to(self, size: int) -> CodeGenTokenizer:
        """A copy whose added tokens continue with placeholders ``<|extratoken_N|>`` (GPT-J's
        names) up to ``size`` ids, for consumers that need a token per embedding row."""
        taken = set(self._vocab) | set(self._extra)
        names = (f"<|extratoken_{n}|>" for n in range(1, size + len(taken) + 1))
        placeholders = [name for name in names if name not in taken][: max(0, size - len(self))]
        return CodeGenTokenizer(
            self._vocab, self._merges, (*self._extra, *placeholders), special_tokens=self.special_tokens,
            model_max_length=self.model_max_length, config=self._config,
        )

    # ----------------------------------------------------------------- sizes and special ids
    def __len__(self) -> int:
        """Number of real ids: BPE vocabulary plus added tokens (50295 Multi/Mono, 50257 NL)."""
        return len(self._vocab) + len(self._extra)

    @property
    def vocab_size(self) -> int:
        """Size of the BPE vocabulary without added tokens (50257 for GPT-2), as in HF."""
        return len(self._vocab)

    @property
    def added_tokens(self) -> tuple[str, ...]:
        """The added tokens after the BPE vocabulary, in id order."""
        return self._extra

    def _role_id(self, role: str) -> int | None:
        token = self.special_tokens[role]
        return None if token is None else self.token_to_id(token)

    @property
    def eos_token(self) -> str:
        return self.special_tokens["eos_token"]  # type: ignore[return-value]

    @property
    def eos_token_id(self) -> int:
        return self._role_id("eos_token")  # type: ignore[return-value]

    @property
    def bos_token_id(self) -> int | None:
        return self._role_id("bos_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._role_id("unk_token")

    @property
    def pad_token_id(self) -> int:
        """The pad token's id, or EOS when none is set (CodeGen pads with 50256)."""
        pad = self._role_id("pad_token")
        return self.eos_token_id if pad is None else pad

    @property
    def all_special_ids(self) -> list[int]:
        return sorted({self.token_to_id(t) for t in self.special_tokens.values() if t is not None})

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer`` (for bulk, parallel encoding)."""
        return self._tok

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def __repr__(self) -> str:
        return f"CodeGenTokenizer(ids={len(self)}, bpe={self.vocab_size}, added={len(self._extra)}, eos={self.eos_token_id})"

    # ----------------------------------------------------------------- encode / decode
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; no BOS or EOS is added."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (encoded in parallel by ``tokenizers``)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_batch expects a sequence of str")
        try:
            encodings = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        except TypeError:  # what `tokenizers` raises for a str that is not valid Unicode
            for i, text in enumerate(texts):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise DataError(f"text {i} is not valid Unicode ({e.reason} at index {e.start})") from None
            raise
        return [e.ids for e in encodings]

    def _check_ids(self, ids: Sequence[int]) -> None:
        if ids and (min(ids) < 0 or max(ids) >= len(self)):
            bad = next(i for i in ids if not 0 <= i < len(self))
            raise GenerationError(f"token id {bad} is outside the tokenizer's {len(self)} ids")

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """The text of ``ids``; exact inverse of :meth:`encode`."""
        ids = _as_list(ids)
        self._check_ids(ids)
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def decode_batch(
        self, batch: Sequence[Sequence[int]] | torch.Tensor, skip_special_tokens: bool = False
    ) -> list[str]:
        """The text of each id list (rows of a 2-D tensor work too)."""
        batch = [_as_list(ids) for ids in batch]
        for ids in batch:
            self._check_ids(ids)
        return self._tok.decode_batch(batch, skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for (may be part of a UTF-8 character)."""
        self._check_ids([token_id])
        if self._token_bytes is None:
            self._token_bytes = [_bytes_of(self._tok.id_to_token(i)) for i in range(len(self))]
        return self._token_bytes[token_id]

    def batch(
        self, texts: Sequence[str], padding_side: str = "left"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode and pad ``texts`` with the pad id: (input_ids, attention_mask) as int64 tensors."""
        return pad_batch(self.encode_batch(texts), self.pad_token_id, padding_side)

    # ----------------------------------------------------------------- files
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> CodeGenTokenizer:
        """Load from an HF checkpoint directory (tokenizer.json or vocab.json + merges.txt, ...)."""
        directory = Path(path)
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: not a directory with tokenizer files")
        added: dict[str, tuple[int, Path]] = {}
        if (directory / TOKENIZER_FILE).is_file():
            vocab, merges, added = _read_tokenizer_json(directory / TOKENIZER_FILE)
        elif (directory / VOCAB_FILE).is_file() or (directory / MERGES_FILE).is_file():
            vocab = _read_vocab(directory / VOCAB_FILE)
            merges = _read_merges(directory / MERGES_FILE, vocab)
        else:
            raise CheckpointError(
                f"{directory}: no tokenizer files (expected {TOKENIZER_FILE} or {VOCAB_FILE} + {MERGES_FILE})"
            )
        config = _read_json_object(directory / CONFIG_FILE, required=False)
        added_path = directory / ADDED_TOKENS_FILE
        for content, token_id in _read_json_object(added_path, required=False).items():
            _merge_added(added, content, token_id, added_path)
        decoder = config.get("added_tokens_decoder") or {}
        max_len = config.get("model_max_length", 2048)
        if not isinstance(decoder, dict) or type(max_len) is not int:
            raise CheckpointError(f"{directory / CONFIG_FILE}: bad added_tokens_decoder or model_max_length")
        for key, entry in decoder.items():
            content = entry.get("content") if isinstance(entry, dict) else None
            _merge_added(added, content, int(key) if key.isdigit() else None, directory / CONFIG_FILE)
        extra = _extra_tokens(added, vocab)
        roles = _read_special_tokens(directory, config, set(vocab) | set(extra))
        return cls(vocab, merges, extra, special_tokens=roles, model_max_length=max_len, config=config)

    def save_pretrained(self, path: str | os.PathLike[str]) -> tuple[Path, ...]:
        """Write the HF tokenizer files into ``path`` (created if needed); returns their paths."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        specials = {t for t in self.special_tokens.values() if t is not None}
        roles = {r: t for r, t in self.special_tokens.items() if t is not None}
        decoder = {
            str(self.token_to_id(t)): {
                "content": t, "lstrip": False, "normalized": False, "rstrip": False,
                "single_word": False, "special": t in specials,
            }
            for t in sorted(specials | set(self._extra), key=self.token_to_id)
        }
        config = {
            **self._config,
            "tokenizer_class": "CodeGenTokenizer",
            "add_prefix_space": False,
            "add_bos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": self.model_max_length,
            **roles,
            "added_tokens_decoder": decoder,
        }
        contents = {
            VOCAB_FILE: _json(dict(sorted(self._vocab.items(), key=lambda kv: kv[1]))),
            MERGES_FILE: "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self._merges),
            ADDED_TOKENS_FILE: _json({t: self.vocab_size + i for i, t in enumerate(self._extra)}),
            TOKENIZER_FILE: self._tok.to_str(pretty=True),
            CONFIG_FILE: _json(config),
            SPECIAL_TOKENS_FILE: _json(roles),
        }
        written = []
        for name, text in contents.items():
            write_atomic(directory / name, text)
            written.append(directory / name)
        return tuple(written)


def _as_list(ids: Sequence[int] | torch.Tensor) -> list[int]:
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


def _bytes_of(token: str) -> bytes:
    """What the ByteLevel decoder makes of one token: byte-mapped chars, else the token's UTF-8."""
    try:
        return bytes(_CHAR_TO_BYTE[c] for c in token)
    except KeyError:
        return token.encode("utf-8")


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


# --------------------------------------------------------------------- padding and streaming
def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int, padding_side: str = "left"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists to one length: (input_ids, attention_mask), int64 [batch, longest]."""
    import torch

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    width = max((len(s) for s in seqs), default=0)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        cols = slice(width - len(seq), width) if padding_side == "left" else slice(0, len(seq))
        input_ids[row, cols] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, cols] = 1
    return input_ids, mask


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left padding for generation: (input_ids, attention_mask)."""
    return pad_batch(seqs, pad_id, "left")


class IncrementalDecoder:
    """Turns ids fed one at a time into text deltas that never split a UTF-8 character.

    Bytes of an unfinished character are held back until it completes; bytes that can never form
    valid UTF-8 become U+FFFD, exactly as :meth:`CodeGenTokenizer.decode` does, so the joined deltas
    plus :meth:`flush` equal ``tokenizer.decode(ids)``.
    """

    def __init__(self, tokenizer: CodeGenTokenizer, skip_special_tokens: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip = frozenset(tokenizer.all_special_ids) if skip_special_tokens else frozenset()
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes (possibly empty)."""
        data = self._tokenizer.token_bytes(token_id)
        return "" if token_id in self._skip else self._utf8.decode(data)

    def extend(self, ids: Iterable[int]) -> str:
        return "".join(self.push(i) for i in ids)

    def flush(self) -> str:
        """End of stream: bytes still held back become U+FFFD."""
        return self._utf8.decode(b"", final=True)


# --------------------------------------------------------------------- reading checkpoint files
def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file is missing") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not UTF-8 text") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None


def _read_json_object(path: Path, required: bool = True) -> dict[str, Any]:
    if not required and not path.exists():
        return {}
    obj = _read_json(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def _check_vocab(vocab: Any, path: Path) -> dict[str, int]:
    if not isinstance(vocab, dict) or not vocab:
        raise CheckpointError(f"{path}: the vocabulary must be a non-empty JSON object of token -> id")
    for token, token_id in vocab.items():
        if type(token_id) is not int:
            raise CheckpointError(f"{path}: id of token {token!r} is {token_id!r}, not an integer")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise CheckpointError(f"{path}: vocabulary ids must be exactly 0 … {len(vocab) - 1} without gaps")
    return vocab


def _read_vocab(path: Path) -> dict[str, int]:
    return _check_vocab(_read_json(path), path)


def _check_merges(
    entries: Sequence[Any], vocab: Mapping[str, int], where: Callable[[int], str]
) -> list[tuple[str, str]]:
    """Merges as pairs; each entry is "a b" or [a, b], with a, b and a+b in the vocabulary."""
    pairs = []
    for i, entry in enumerate(entries):
        pair = entry.split(" ") if isinstance(entry, str) else entry
        a, b = pair if isinstance(pair, list) and len(pair) == 2 else (None, None)
        if not (isinstance(a, str) and isinstance(b, str) and a and b):
            raise CheckpointError(f"{where(i)}: a merge must be two tokens separated by one space, found {entry!r}")
        if a not in vocab or b not in vocab or a + b not in vocab:
            missing = next(t for t in (a, b, a + b) if t not in vocab)
            raise CheckpointError(f"{where(i)}: merge {a!r} {b!r} uses {missing!r}, which is not in the vocabulary")
        pairs.append((a, b))
    return pairs


def _read_merges(path: Path, vocab: Mapping[str, int]) -> list[tuple[str, str]]:
    numbered = [
        (number, line.rstrip("\r"))  # byte-level tokens never contain a raw CR
        for number, line in enumerate(_read_text(path).split("\n"), start=1)
        if line.rstrip("\r") and not (number == 1 and line.startswith("#version"))
    ]
    return _check_merges([line for _, line in numbered], vocab, lambda i: f"{path} line {numbered[i][0]}")


def _read_tokenizer_json(
    path: Path,
) -> tuple[dict[str, int], list[tuple[str, str]], dict[str, tuple[int, Path]]]:
    """BPE vocab, merges and added tokens (content -> (id, file)) of a byte-level BPE tokenizer.json."""
    data = _read_json_object(path)
    model = data.get("model")
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE" or "vocab" not in model:
        raise CheckpointError(f"{path}: not a BPE tokenizer (no BPE 'model' with a 'vocab')")
    pre, dec = data.get("pre_tokenizer"), data.get("decoder")
    if (
        data.get("normalizer") is not None
        or not (isinstance(pre, dict) and pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space"))
        or not (isinstance(dec, dict) and dec.get("type") == "ByteLevel")
        or model.get("dropout") is not None
        or model.get("ignore_merges")
        or model.get("continuing_subword_prefix")
        or model.get("end_of_word_suffix")
    ):
        raise CheckpointError(
            f"{path}: not a GPT-2 style byte-level BPE (need no normalizer, a ByteLevel pre-tokenizer "
            "without add_prefix_space, a ByteLevel decoder and a plain BPE model)"
        )
    vocab = _check_vocab(model["vocab"], path)
    raw_merges = model.get("merges")
    if not isinstance(raw_merges, list):
        raise CheckpointError(f"{path}: model.merges must be a list")
    merges = _check_merges(raw_merges, vocab, lambda i: f"{path} merge {i}")
    added: dict[str, tuple[int, Path]] = {}
    for entry in data.get("added_tokens") or []:
        content, token_id = (entry.get("content"), entry.get("id")) if isinstance(entry, dict) else (None, None)
        _merge_added(added, content, token_id, path)
    return vocab, merges, added


def _merge_added(added: dict[str, tuple[int, Path]], content: Any, token_id: Any, path: Path) -> None:
    """Record one added token read from ``path``; files that disagree are an error."""
    if not isinstance(content, str) or not content or type(token_id) is not int or token_id < 0:
        raise CheckpointError(f"{path}: bad added token {content!r} -> {token_id!r}")
    known_id, known_path = added.setdefault(content, (token_id, path))
    if known_id != token_id:
        raise CheckpointError(f"{path}: added token {content!r} has id {token_id}, but {known_id} in {known_path}")


def _extra_tokens(added: Mapping[str, tuple[int, Path]], vocab: Mapping[str, int]) -> list[str]:
    """Added tokens beyond the BPE vocabulary, in id order; their ids must follow it without gaps."""
    extra = []
    for content, (token_id, path) in sorted(added.items(), key=lambda kv: kv[1][0]):
        if content in vocab:
            if vocab[content] != token_id:
                raise CheckpointError(
                    f"{path}: added token {content!r} has id {token_id} but the vocabulary gives it {vocab[content]}"
                )
            continue
        expected = len(vocab) + len(extra)
        if token_id != expected:
            raise CheckpointError(f"{path}: added token {content!r} has id {token_id}; the next free id is {expected}")
        extra.append(content)
    return extra


def _read_special_tokens(directory: Path, config: Mapping[str, Any], known: set[str]) -> dict[str, str | None]:
    """bos/eos/unk/pad from tokenizer_config.json, overridden by special_tokens_map.json."""
    roles: dict[str, str | None] = dict.fromkeys(("bos_token", "eos_token", "unk_token"), EOS_TOKEN)
    roles["pad_token"] = None
    for path, source in (
        (directory / CONFIG_FILE, config),
        (directory / SPECIAL_TOKENS_FILE, _read_json_object(directory / SPECIAL_TOKENS_FILE, required=False)),
    ):
        for role in SPECIAL_ROLES:
            if role not in source:
                continue
            value = source[role]
            token = value.get("content") if isinstance(value, dict) else value
            if token is not None and not isinstance(token, str):
                raise CheckpointError(f"{path}: {role} must be a string, found {value!r}")
            if token is not None and token not in known:
                raise CheckpointError(f"{path}: {role} {token!r} is not in the vocabulary")
            roles[role] = token
    if roles["eos_token"] is None or roles["eos_token"] not in known:
        raise CheckpointError(f"{directory}: the eos token {roles['eos_token']!r} is not in the vocabulary")
    return roles


# --------------------------------------------------------------------- training
def _iter_corpus(
    corpus: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], pattern: str, stats: dict[str, int]
) -> Iterator[str]:
    """Texts of the corpus: str items are texts; paths are files, or directories searched for ``pattern``."""
    items = [corpus] if isinstance(corpus, (str, os.PathLike)) else corpus
    for item in items:
        if isinstance(item, str):
            stats["texts"] += 1
            yield item
            continue
        path = Path(item)
        if path.is_dir():
            for file in sorted(p for p in path.rglob(pattern) if p.is_file()):
                try:
                    text = file.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as e:
                    stats["skipped"] += 1
                    log.warning("skipping %s: %s", file, e)
                    continue
                stats["texts"] += 1
                yield text
        else:
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise DataError(f"{path}: corpus file is missing") from None
            except (OSError, UnicodeDecodeError) as e:
                raise DataError(f"{path}: cannot read corpus file as UTF-8 ({e})") from None
            stats["texts"] += 1
            yield text


def train_tokenizer(
    corpus: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    vocab_size: int,
    whitespace_tokens: bool = True,
    *,
    min_frequency: int = 2,
    pattern: str = "*.py",
    model_max_length: int = 2048,
    show_progress: bool = False,
) -> CodeGenTokenizer:
    """Train a byte-level BPE on ``corpus`` with CodeGen's id layout.

    ``corpus``: texts (str) and/or paths (files, or directories searched recursively for ``pattern``;
    undecodable files in directories are skipped with a warning). ``vocab_size`` counts the BPE ids
    including ``<|endoftext|>``, which takes the last of them (as in GPT-2); the 38 whitespace tokens
    (``whitespace_tokens=True``) come after, so ``len(tok) == vocab_size + 38``. A small corpus may
    support fewer merges, giving a smaller vocabulary.
    """
    if vocab_size < 257:
        raise ConfigError(f"vocab_size must be at least 257 (256 bytes + <|endoftext|>), got {vocab_size}")
    trainer = BpeTrainer(
        vocab_size=vocab_size - 1,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=show_progress,
    )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok = Tokenizer(BPE())
    if whitespace_tokens:  # runs the added tokens will take never reach BPE, so learn no merges for them
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(" {2,}|\t{2,}"), behavior="removed"), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    stats = {"texts": 0, "skipped": 0}
    tok.train_from_iterator(_iter_corpus(corpus, pattern, stats), trainer=trainer)
    if stats["texts"] == 0:
        raise DataError(f"the corpus holds no text (skipped {stats['skipped']} unreadable files)")
    model = json.loads(tok.to_str())["model"]
    vocab = dict(model["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    vocab[EOS_TOKEN] = len(vocab)
    extra = WHITESPACE_TOKENS if whitespace_tokens else ()
    return CodeGenTokenizer(vocab, merges, extra, model_max_length=model_max_length)


__all__ = [
    "EOS_TOKEN",
    "WHITESPACE_TOKENS",
    "CodeGenTokenizer",
    "IncrementalDecoder",
    "pad_batch",
    "pad_left",
    "train_tokenizer",
]
