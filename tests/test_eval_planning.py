"""Before an evaluation run: `--out` refused before any model loads, the T = 0 / n > 1 warning, the
printed plan, the memory rule of the batch size, and flags that torchrun cannot take for its own."""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
import torch

from generation_helpers import make_model_dir
from mtpb_helpers import mtpb_path
from opencodegen import checkpoint
from opencodegen.cli import build_parser
from opencodegen.cli import main as cli
from opencodegen.config import CodeGenConfig
from opencodegen.evaluation import planning
from opencodegen.evaluation.mtpb.data import load_mtpb
from opencodegen.generation import Generator
from opencodegen.model import CodeGenForCausalLM
from opencodegen.tokenizer import CodeGenTokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def _unwritable(tmp_path: Path, case: str) -> Path:
    if case == "a file":
        (tmp_path / "taken").write_text("x")
        return tmp_path / "taken"
    if case == "under a file":
        (tmp_path / "taken").write_text("x")
        return tmp_path / "taken" / "out"
    if os.geteuid() == 0:  # root writes through permission bits: sysfs refuses new entries even to root
        return Path("/sys/opencodegen-out")
    readonly = tmp_path / "readonly"
    readonly.mkdir(mode=0o555)
    return readonly / "out"


@pytest.mark.parametrize("case", ["a file", "under a file", "a read-only directory"])
@pytest.mark.parametrize("command", [["eval", "humaneval"], ["eval", "mtpb", "--data", "MTPB"],
                                     ["eval", "mtpb-perplexity", "--data", "MTPB"]])
def test_bad_out_is_refused_before_any_model_load(tiny, tmp_path, monkeypatch, capsys, case, command):
    loads = []
    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: loads.append(a) or pytest.fail("model loaded"))
    out = _unwritable(tmp_path, case)
    argv = [str(mtpb_path()) if arg == "MTPB" else arg for arg in command]
    assert cli([*argv, "--model", str(tiny), "--out", str(out), "--limit", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert loads == [] and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: --out {out}") and ("is a file" in err or "cannot write there" in err)
    assert not out.exists() or out.is_file()


def test_out_is_created_and_checked_writable(tmp_path):
    out = planning.check_out_dir(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []  # the probe file is gone


def test_greedy_with_several_samples_is_warned_about():
    message = planning.greedy_repeats([0.0, 0.8], 5)
    assert "identical" in message and "--num-samples 1" in message
    assert planning.greedy_repeats([0.0], 1) is None and planning.greedy_repeats([0.2, 0.8], 200) is None
    assert "--n 1" in planning.greedy_repeats([0], 2, flag="--n")


def test_humaneval_prints_the_plan_and_warns_before_sampling(tiny, tmp_path, capsys):
    argv = ["eval", "humaneval", "--model", str(tiny), "--out", str(tmp_path / "out"), "--limit", "2",
            "--num-samples", "3", "--temperature", "0", "0.5", "--max-new-tokens", "5", "--k", "1",
            "--device", "cpu", "--quiet"]
    assert cli(argv) == 0
    err = capsys.readouterr().err.splitlines()
    plan = [line for line in err if line.startswith(("plan:", "warning:"))]
    assert plan[0] == "plan: 2 problems x 2 temperatures (0.0, 0.5) x 3 samples = 12 completions"
    assert plan[1] == "plan: token budget 5 new tokens per completion: at most 60 generated tokens"
    assert plan[2].startswith("warning: T = 0 is greedy decoding: its 3 samples per problem will be identical")
    assert plan[3].startswith("plan: batch 6 rows (memory rule:") and "capped at 64 and at the 6 rows" in plan[3]
    assert plan[4].startswith("plan: estimate from a warm-up (") and "of sampling" in plan[4]
    assert sum(1 for _ in (tmp_path / "out" / "samples.jsonl").open()) == 12  # the warm-up wrote nothing


def test_mtpb_prints_the_plan_and_sizes_the_batch(tiny, capsys, monkeypatch):
    problems = load_mtpb(mtpb_path()).by_id()
    chosen = [problems["3"], problems["5"]]
    planning.print_mtpb_work(chosen, ["multi", "single"], 2, 0.0)
    turns = sum(p.n_turns for p in chosen)
    budget = sum(p.n_turns * p.max_gen_length for p in chosen)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "plan: 2 problems, 10 test cases x 2 samples = 20 programs per mode (multi, single)"
    assert err[1] == (f"plan: multi-turn: {5 * turns * 2:,} turn completions, each within its problem's budget: "
                      f"at most {5 * budget * 2:,} generated tokens")
    assert err[3].startswith("warning: T = 0 is greedy decoding: its 2 samples")
    model = CodeGenForCausalLM.from_pretrained(tiny).eval()
    generator = Generator(model, CodeGenTokenizer.from_pretrained(tiny))
    row = planning.bytes_per_row(model.config, model.config.n_positions, 4)
    monkeypatch.setattr(planning, "free_memory", lambda device: int(3.5 * row / planning.MEMORY_FRACTION))
    assert planning.mtpb_batch(generator, chosen, ["multi"], 2, 0.0) == 3
    assert generator.max_batch_size == 3
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("plan: batch 3 rows") and lines[1].startswith("plan: estimate from a warm-up")


def test_mtpb_cli_prints_the_plan_and_warns(tiny, tmp_path, capsys):
    argv = ["eval", "mtpb", "--model", str(tiny), "--data", str(mtpb_path()), "--problems", "3", "--num-samples", "2",
            "--temperature", "0", "--out", str(tmp_path / "out"), "--device", "cpu", "--workers", "1"]
    assert cli(argv) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("plan:", "warning: T = 0"))]
    assert err[0] == "plan: 1 problems, 5 test cases x 2 samples = 10 programs per mode (multi)"
    assert err[1].startswith("plan: multi-turn: 30 turn completions") and err[2].startswith("warning: T = 0")
    assert err[3].startswith("plan: batch 10 rows") and err[4].startswith("plan: estimate from a warm-up")
    assert sum(1 for _ in (tmp_path / "out" / "samples_multi.jsonl").open()) == 10


def test_batch_rule_fits_the_16b_model_on_a_40gb_card():
    config = CodeGenConfig.from_preset("codegen-16B-mono")
    free = 40_000_000_000 - 2 * 16_100_000_000  # a 40 GB card holding the fp16 weights
    n_ctx = 1024  # HumanEval's longest prompt and 128 new tokens, rounded up
    row = planning.bytes_per_row(config, n_ctx, 2)
    assert row == 2 * 34 * 1024 * 6144 * 2 + 4 * 4 * config.vocab_size
    batch = planning.batch_for_memory(config, n_ctx, 2, free)
    assert batch == 7 and batch * row <= planning.MEMORY_FRACTION * free < (batch + 1) * row
    assert 200 * row > free  # the old default (every sample of a problem in one batch) does not fit
    assert planning.batch_for_memory(config, n_ctx, 2, row // 2) == 1  # never below one row
    assert planning.batch_for_memory(config, n_ctx, 2, 10**15) == planning.MAX_BATCH  # the cap


def test_free_memory_on_cuda_and_on_a_shared_host(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (8_000_000_000, 40_000_000_000))
    assert planning.free_memory(torch.device("cuda:1")) == 8_000_000_000
    monkeypatch.setattr(planning, "host_available_memory", lambda: 24_000_000_000)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert planning.free_memory(torch.device("cpu")) == 12_000_000_000  # two local ranks share the host
    monkeypatch.undo()
    assert 0 < planning.host_available_memory()


def test_choose_batch_sets_the_engine_bounds(monkeypatch):
    config = CodeGenConfig.from_preset("codegen-16B-mono")
    model = types.SimpleNamespace(config=config, dtype=torch.float16, device=torch.device("cuda:0"))
    generator = types.SimpleNamespace(model=model, max_batch_size=64, max_cache_bytes=2 << 30)
    monkeypatch.setattr(planning, "free_memory", lambda device: 7_800_000_000)
    choice = planning.choose_batch(generator, 5000, limit=200)  # more positions than the context: capped at it
    assert choice.n_ctx == config.n_positions == 2048 and choice.batch == generator.max_batch_size == 3
    assert generator.max_cache_bytes >= 3 * 2 * 34 * 2048 * 6144 * 2
    assert planning.choose_batch(generator, 100, limit=2).batch == 2  # never more rows than a call has


def _torchrun_options() -> list[str]:
    from torch.distributed.run import get_args_parser

    return [s for action in get_args_parser()._actions for s in action.option_strings]


def _options(*path: str) -> list[str]:
    parser = build_parser()
    for name in path:
        parser = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices[name]
    return [s for action in parser._actions for s in action.option_strings]


@pytest.mark.parametrize("command", ["humaneval", "mtpb"])
def test_no_eval_flag_is_a_torchrun_flag_or_its_abbreviation(command):
    """torchrun parses the whole command line (abbreviations allowed) before it starts the script:
    a flag of ours that equals or begins a torchrun flag is taken for torchrun's."""
    torchrun = _torchrun_options()
    clashes = {ours: [t for t in torchrun if t.startswith(ours)] for ours in _options("eval", command)
               if ours not in ("-h", "--help", "--n") and any(t.startswith(ours) for t in torchrun)}
    assert clashes == {}
    assert any(t.startswith("--n") and t != "--n" for t in torchrun)  # why --n is only an alias
