"""`opencodegen eval mtpb` end to end: scoring a programs file, generating with a model (a fake
one that knows the answers, and a tiny real one), resuming, summary files; prompt perplexity."""

from __future__ import annotations

import json
import math

import pytest
import torch

from generation_helpers import make_model_dir
from mtpb_helpers import FakeParams, ScriptedGenerator, mtpb_path
from opencodegen.cli import main
from opencodegen.evaluation.mtpb import run as mtpb_run
from opencodegen.evaluation.mtpb.data import load_mtpb, single_turn_prompt
from opencodegen.evaluation.mtpb.perplexity import (
    multi_turn_segments,
    prompt_nll,
    prompt_token_mask,
    single_turn_segments,
)
from opencodegen.model import CodeGenForCausalLM
from opencodegen.synthesis.history import build_program
from opencodegen.tokenizer import CodeGenTokenizer
from test_mtpb_oracles import ORACLES, WRONG

PIDS = ("1", "3")


def _oracle_code(problem, test, wrong=False):
    codes = list(ORACLES[problem.id])
    if wrong:
        index, code = WRONG[problem.id]
        codes[index] = code
    return [c.format(**problem.inputs[test]) for c in codes]


def _programs_file(path):
    problems = load_mtpb(mtpb_path()).by_id()
    with path.open("w") as f:
        for pid in PIDS:
            problem = problems[pid]
            for test in problem.tests:
                for wrong in (False, True):  # two samples per test case: one right, one wrong
                    program = build_program(zip(problem.turns(test), _oracle_code(problem, test, wrong)))
                    f.write(json.dumps({"id": pid, "test": test, "program": program}) + "\n")
    return path


def test_programs_file_is_scored_summarized_and_resumed(tmp_path, capsys):
    programs, out = _programs_file(tmp_path / "programs.jsonl"), tmp_path / "out"
    argv = ["eval", "mtpb", "--data", str(mtpb_path()), "--programs", str(programs), "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    # problem 1: 5 right + 2 wrong pass (no upper case in tests 0 and 4); problem 3: 5 + 1 (0 hours)
    assert summary["mode"] == "programs" and summary["pass_rate"] == pytest.approx((70.0 + 60.0) / 2)
    assert summary["per_problem"]["1"] == {"name": "Sandwich string", "category": "string", "n_turns": 5,
                                           "passed": 7, "total": 10, "pass_rate": 70.0}
    assert set(summary["per_category"]) == {"string", "math"} and set(summary["per_turns"]) == {"3", "5"}
    assert summary["data"]["sha256"] == load_mtpb(mtpb_path()).sha256 and summary["data"]["warnings"]
    assert summary["checker"] == {"rules": "salesforce/CodeGen codegen1/benchmark/mtpb_exec.py", "version": 2,
                                  "time_limit_s": 20.0}
    assert summary["warnings"] == []  # nothing in problems 1 and 3 is impossible under the original's rules
    assert (out / "mtpb_categories.png").read_bytes()[:4] == b"\x89PNG"
    assert "MTPB programs: pass rate 65.00% over 2 problems (20 programs)" in capsys.readouterr().out
    results = out / "results_programs.jsonl"
    rows = results.read_text().splitlines()
    assert len(rows) == 20 and {json.loads(r)["sample"] for r in rows} == {0, 1}
    # a killed run: the last record is torn; the rerun scores only what is missing
    results.write_text("\n".join(rows[:-1]) + "\n" + rows[-1][:25])
    assert main(argv) == 0
    assert results.read_text().splitlines()[:-1] == rows[:-1] and len(results.read_text().splitlines()) == 20
    assert json.loads((out / "summary.json").read_text())["pass_rate"] == pytest.approx(65.0)
    # results scored under other rules (an older version) are never mixed with new ones
    rows = results.read_text().splitlines()
    results.write_text("\n".join([json.dumps({**json.loads(rows[0]), "checker": 1}), *rows[1:]]) + "\n")
    assert main(argv) == 2
    assert "1 results scored under other checker rules; delete that file" in capsys.readouterr().err
    results.unlink()
    assert main(argv) == 0 and len(results.read_text().splitlines()) == 20
    # the same OUT with other settings is refused with one clear line
    other = tmp_path / "other.jsonl"
    other.write_text(programs.read_text())
    assert main(["eval", "mtpb", "--data", str(mtpb_path()), "--programs", str(other), "--out", str(out)]) == 2
    assert "other settings" in capsys.readouterr().err


def test_summary_warns_about_what_the_original_rules_make_impossible(tmp_path):
    bench = load_mtpb(mtpb_path())
    records = [{"id": pid, "test": t, "sample": 0, "passed": False, "status": "wrong"} for pid in ("1", "41", "89")
               for t in range(5)]
    warnings = mtpb_run.write_summary(tmp_path, bench, {"programs": records})["warnings"]
    assert [w.split(":")[0] for w in warnings] == ["problem 41", "problem 89"]
    assert "2 test case(s) (1, 4) expect None" in warnings[0] and "no program can pass them" in warnings[0]
    assert "5 test case(s) (0, 1, 2, 3, 4) expect dict" in warnings[1]
    assert json.loads((tmp_path / "summary.json").read_text())["warnings"] == warnings


def test_generation_pipeline_with_a_model_that_knows_the_answers(tmp_path):
    bench = load_mtpb(mtpb_path())
    problems = [p for p in bench.problems if p.id in PIDS]
    answers = {}
    for problem in problems:
        for test in problem.tests:
            turns, codes = problem.turns(test), _oracle_code(problem, test)
            answers.update(dict(zip(turns, codes)))  # multi-turn: the code of one turn
            answers[single_turn_prompt(problem, test)] = "\n".join(codes)  # single-turn: the whole program

    def reply(prompt, params, k):
        return answers[prompt] if params.truncate is None else answers[prompt.rstrip("\n").rsplit("\n", 1)[-1][2:]]

    generator = ScriptedGenerator(reply)
    results = {}
    for mode in ("multi", "single"):
        samples = mtpb_run.generate(problems, generator, FakeParams(n=2), mode, tmp_path)
        assert len(samples) == 20
        results[mode] = mtpb_run.score(samples, bench.by_id(), mode, tmp_path, workers=2)
    calls = len(generator.calls)
    mtpb_run.generate(problems, generator, FakeParams(n=2), "multi", tmp_path)  # resumed: nothing to do
    assert len(generator.calls) == calls
    summary = mtpb_run.write_summary(tmp_path, bench, results)
    assert summary["modes"]["multi"]["pass_rate"] == summary["modes"]["single"]["pass_rate"] == 100.0
    assert "reconstruction" in summary["modes"]["single"]["note"]
    assert (tmp_path / "mtpb_categories.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def test_cli_with_a_tiny_model_writes_both_modes(tiny, tmp_path):
    out = tmp_path / "out"
    argv = ["eval", "mtpb", "--model", str(tiny), "--data", str(mtpb_path()), "--problems", "3", "--mode", "both",
            "--temperature", "0", "--out", str(out), "--device", "cpu", "--workers", "2"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["modes"]) == {"multi", "single"} and summary["modes"]["multi"]["programs"] == 5
    single = [json.loads(line) for line in (out / "samples_single.jsonl").read_text().splitlines()]
    # the tiny model's context is 512 tokens: the summed budget 3 x 128 is cut to what fits
    assert all(r["max_new_tokens"][0] <= 512 - 60 for r in single)
    multi = [json.loads(line) for line in (out / "samples_multi.jsonl").read_text().splitlines()]
    assert all(len(r["completions"]) == 3 and r["program"].startswith("# Import libraries.") for r in multi)

    ppl_out = tmp_path / "ppl"
    argv = ["eval", "mtpb-perplexity", "--model", str(tiny), "--data", str(mtpb_path()), "--problems", "3",
            "--samples", str(out / "samples_multi.jsonl"), "--out", str(ppl_out), "--device", "cpu"]
    assert main(argv) == 0
    ppl = json.loads((ppl_out / "perplexity_summary.json").read_text())
    row = ppl["per_problem"]["3"]
    assert math.isfinite(row["multi"]) and math.isfinite(row["single"]) and row["multi"] > 1


def test_prompt_tokens_and_their_nll(tiny):
    tokenizer = CodeGenTokenizer.from_pretrained(tiny)
    model = CodeGenForCausalLM.from_pretrained(tiny).eval()
    turns, codes = ["Set x to one.", "Print x."], ["x = 1", "print(x)"]
    ids, mask = prompt_token_mask(tokenizer, multi_turn_segments(turns, codes))
    assert ids == tokenizer.encode("".join(s for s, _ in multi_turn_segments(turns, codes)))
    picked = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert "# Set x to one." in picked and "# Print x." in picked and "x = 1" not in picked
    single_ids, single_mask = prompt_token_mask(tokenizer, single_turn_segments(turns))
    assert tokenizer.decode([t for t, m in zip(single_ids, single_mask) if m]).strip() == "# Set x to one.\n# Print x."
    # the NLL from one forward pass equals the sum over the masked positions, one prefix at a time
    nll, count = prompt_nll(model, ids, mask)
    expected = 0.0
    with torch.no_grad():
        for i in (i for i, m in enumerate(mask) if m):
            logits = model(torch.tensor([ids[:i]])).logits[0, -1]
            expected -= torch.log_softmax(logits.float(), -1)[ids[i]].item()
    assert count == sum(mask) and nll == pytest.approx(expected, rel=1e-4)
