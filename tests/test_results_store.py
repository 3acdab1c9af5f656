import gzip
import json

import pytest

from opencodegen.errors import DataError
from opencodegen.io import ResultStore, atomic_path, read_jsonl, write_atomic


def test_round_trip_and_resume(tmp_path):
    path = tmp_path / "r.jsonl"
    store = ResultStore(path, ["task_id", "sample"])
    store.append({"task_id": "a", "sample": 0, "ok": True})
    store.extend([{"task_id": "a", "sample": 1, "ok": False}])
    again = ResultStore(path, ["task_id", "sample"])
    assert ("a", 1) in again and ("a", 2) not in again
    assert [r["ok"] for r in again.records] == [True, False]


def test_torn_last_line_is_cut(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"k": 1}) + "\n" + '{"k": 2, "x"')
    store = ResultStore(path, ["k"])
    assert len(store) == 1
    store.append({"k": 2})
    assert [json.loads(line)["k"] for line in path.read_text().splitlines()] == [1, 2]


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"k": 1}\nnot json\n{"k": 3}\n')
    with pytest.raises(DataError, match=":2"):
        ResultStore(path, ["k"])


def test_duplicate_and_missing_key(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl", ["k"])
    store.append({"k": 1})
    with pytest.raises(DataError, match="duplicate"):
        store.append({"k": 1})
    with pytest.raises(DataError, match="lacks key"):
        store.append({"z": 1})


def test_write_atomic_replaces_whole_files_and_keeps_the_old_one_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_atomic(path, "old ünïcode\n")
    write_atomic(path, "new\n")
    assert path.read_text(encoding="utf-8") == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left

    def interrupted(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr("opencodegen.io.os.replace", interrupted)
    with pytest.raises(OSError):
        write_atomic(path, "half")
    assert path.read_text(encoding="utf-8") == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # the failed write's temporary file is gone


def test_atomic_path_installs_what_the_block_wrote_and_nothing_when_it_fails(tmp_path):
    path = tmp_path / "kernel.so"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="compiler failed"):
        with atomic_path(path) as partial:
            assert partial.parent == tmp_path and partial != path
            partial.write_bytes(b"half a library")
            raise RuntimeError("compiler failed")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["kernel.so"]
    with atomic_path(path) as partial:
        partial.write_bytes(b"new")
        assert path.read_bytes() == b"old"  # not visible before the block ends
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["kernel.so"]


@pytest.mark.parametrize("name, body, error", [
    ("ok.jsonl", '{"a": 1}\n\n{"a": 2}\n', None),
    ("bad.jsonl", '{"a": 1}\n{"a": \n', r"bad\.jsonl:2: not valid JSON"),
    ("list.jsonl", '[1, 2]\n', r"list\.jsonl:1: expected a JSON object"),
    ("latin.jsonl", b'{"a": "\xe9"}\n', r"cannot read .*latin\.jsonl"),
])
def test_read_jsonl_yields_line_numbers_and_names_the_bad_line(tmp_path, name, body, error):
    path = tmp_path / name
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    if error is None:
        assert list(read_jsonl(path)) == [(1, {"a": 1}), (3, {"a": 2})]
    else:
        with pytest.raises(DataError, match=error):
            list(read_jsonl(path))


def test_read_jsonl_reads_gzip_and_names_a_missing_file(tmp_path):
    path = tmp_path / "s.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"task_id": "x"}\n'))
    assert list(read_jsonl(path)) == [(1, {"task_id": "x"})]
    with pytest.raises(DataError, match=r"cannot read .*missing\.jsonl"):
        list(read_jsonl(tmp_path / "missing.jsonl"))
