"""MTPB data: loading from a path, the cache or the pinned download; validation and quirks."""

from __future__ import annotations

import hashlib
import io
import json
import re
import urllib.error
import urllib.request

import pytest

from mtpb_helpers import mtpb_path
from opencodegen.errors import DataError
from opencodegen.evaluation.mtpb import data as mtpb
from opencodegen.evaluation.mtpb.data import MTPB_SHA256, load_mtpb, resolve_data


def test_real_file_loads_with_its_known_quirks_as_warnings():
    bench = load_mtpb(mtpb_path())
    assert bench.sha256 == MTPB_SHA256
    assert [p.id for p in bench.problems] == [str(i) for i in range(1, 116)]
    assert sum(p.n_turns for p in bench.problems) == 514
    assert sum(len(p.tests) for p in bench.problems) == 575
    by_id = bench.by_id()
    assert {by_id[str(i)].max_gen_length for i in range(39, 46)} == {256}
    assert len(by_id["57"].outputs) == 6 and list(by_id["57"].tests) == [0, 1, 2, 3, 4]
    text = "\n".join(bench.warnings)
    assert "problems 39-45 have no max_gen_length: using 256" in text
    for pid, words in [("31", "4/5"), ("38", "mlbootcamp5_train.csv"), ("46", "melb_data.csv"),
                       ("57", "6 outputs for 5 inputs"), ("57", "unused input keys ['B']")]:
        assert any(w.startswith(f"problem {pid}:") and words in w for w in bench.warnings), (pid, words)


def test_turns_fill_templates_and_keep_doubled_braces(tmp_path):
    bench = load_mtpb(mtpb_path())
    nine = bench.by_id()["9"]
    assert nine.turns(0)[0].endswith("notes [[3, 5, 4], [3, 1, 1], [1, 2, 3], [0, 4, 4]] as values to a dictionary named \"my_notes\".")
    assert '{ "name": "John", "notes": [3, 5, 4] }' in nine.turns(0)[1]


def _write(tmp_path, rows):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = {"id": "1", "name": "n", "description": "d", "category": "math", "prompts": ["x = {a}", "print x"],
        "inputs": [{"a": i} for i in range(5)], "outputs": list(range(5)), "max_gen_length": 128}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"prompts": []}, "non-empty list of prompt strings"),
        ({"inputs": [{"b": 1}] * 5}, "lacks inputs ['a']"),
        ({"id": "x"}, "is not a number"),
        ({"max_gen_length": 0}, "max_gen_length"),
        ({"prompts": ["x = {a"]}, "bad prompt template"),
        ({"outputs": None}, "'outputs' missing"),
    ],
)
def test_malformed_problems_are_clear_errors(tmp_path, change, message):
    with pytest.raises(DataError, match=":1: .*" + re.escape(message)):
        load_mtpb(_write(tmp_path, [{**GOOD, **change}]))


def test_bad_json_line_and_duplicates(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{oops\n")
    with pytest.raises(DataError, match=":2: not valid JSON"):
        load_mtpb(path)
    with pytest.raises(DataError, match="duplicate problem ids"):
        load_mtpb(_write(tmp_path, [GOOD, GOOD]))
    with pytest.raises(DataError, match="not found"):
        load_mtpb(tmp_path / "missing.jsonl")


def test_cache_then_pinned_download_with_sha_check(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    payload = mtpb_path().read_bytes()
    served = {"data": payload}

    def fake_urlopen(url, timeout):
        assert url == mtpb.MTPB_URL
        if served["data"] is None:
            raise urllib.error.URLError("no network")
        return io.BytesIO(served["data"])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(DataError, match="put the file at"):
        resolve_data(download=False)
    served["data"] = b"tampered" + payload
    with pytest.raises(DataError, match="sha256"):
        resolve_data()
    assert not (tmp_path / "cache" / "opencodegen" / "mtpb.jsonl").exists()
    served["data"] = None
    with pytest.raises(DataError, match="offline\\? pass --data FILE"):
        resolve_data()
    served["data"] = payload
    cached = resolve_data()
    assert cached == tmp_path / "cache" / "opencodegen" / "mtpb.jsonl"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == MTPB_SHA256
    served["data"] = None  # now the cache answers without the network
    assert load_mtpb().sha256 == MTPB_SHA256
