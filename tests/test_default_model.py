"""The embedded default model: its files, how commands fall back to it, and its recorded figures."""

import dataclasses
import hashlib
import json
import sysconfig
from pathlib import Path

import pytest
from safetensors import safe_open

import opencodegen
from opencodegen import default_model
from opencodegen.cli import main
from opencodegen.tokenizer import CodeGenTokenizer

CARD = default_model.DIRECTORY / "README.md"
RECORDED = json.loads((default_model.DIRECTORY / "evaluation.json").read_text())


def test_shipped_files_are_a_consistent_fp16_hf_checkpoint():
    weights = default_model.DIRECTORY / "model.safetensors"
    assert weights.stat().st_size <= 40_000_000
    with safe_open(str(weights), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    model, tokenizer = opencodegen.load("default")
    config = model.config
    assert len(tokenizer) == config.vocab_size == 8192 and model.num_parameters() == 18_705_536
    assert config.eos_token_id == config.bos_token_id == tokenizer.eos_token_id < config.vocab_size
    assert tokenizer.decode(tokenizer.encode("def f(x):\n        return x\n")) == "def f(x):\n        return x\n"
    assert CodeGenTokenizer.from_pretrained(default_model.DIRECTORY).eos_token == "<|endoftext|>"
    assert "Salesforce/codegen-350M-mono" in CARD.read_text()


def test_commands_fall_back_to_it_and_say_so(capsys):
    assert default_model.resolve("some/dir") == "some/dir" and capsys.readouterr().err == ""
    assert main(["generate", "--prompt", "def add(a, b):\n", "--max-new-tokens", "8", "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    assert "DEMO model" in captured.err and "--model Salesforce/codegen-350M-mono" in captured.err
    assert captured.out.strip()
    assert main(["generate", "--model", "default", "--prompt", "x = ", "--max-new-tokens", "2"]) == 0
    assert "DEMO model" in capsys.readouterr().err


def test_recorded_heldout_loss_reproduces():
    """Two held-out standard-library modules (never trained on): the per-file losses recorded in the card."""
    from opencodegen.evaluation import loss

    model, tokenizer = opencodegen.load("default")
    counts = loss.load_counts(default_model.DIRECTORY)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name, (sha256, recorded) in RECORDED["heldout_loss"]["per_file"].items():
        path = stdlib / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
            pytest.skip(f"{path} is not the file measured (another Python version)")
        stream = loss.token_stream([path.read_text()], tokenizer)
        nats, count = loss.model_loss(model, stream, progress=False)
        assert nats / count == pytest.approx(recorded, abs=0.02), name
        unigram = -loss.unigram_log_probs(counts, len(tokenizer))[stream[1:]].mean()
        assert nats / count < unigram - 3.0, (name, nats / count, unigram)  # far below the unigram baseline


def test_recorded_humaneval_figures_reproduce(tmp_path):
    """The card's HumanEval run, on the problems it solved (same seeds, so the same samples here)."""
    from opencodegen.evaluation import humaneval as he

    recorded = RECORDED["humaneval"]["subset"]
    problems = [p for p in he.load_problems() if p.task_id in recorded]
    subset = tmp_path / "problems.jsonl"
    subset.write_text("".join(json.dumps(dataclasses.asdict(p)) + "\n" for p in problems))
    out = tmp_path / "he"
    args = RECORDED["humaneval"]["subset_args"]
    assert main(["eval", "humaneval", "--problems", str(subset), "--out", str(out), "--quiet", *args]) == 0
    got: dict = {}
    for record in map(json.loads, (out / "results.jsonl").read_text().splitlines()):
        cell = got.setdefault(record["task_id"], {}).setdefault(str(record["temperature"]), [0, 0])
        cell[0] += record["passed"]
        cell[1] += record["syntax_valid"]
    for task, by_temperature in recorded.items():
        for temperature, (passed, valid) in by_temperature.items():
            assert abs(got[task][temperature][0] - passed) <= 2, (task, temperature, got[task][temperature])
            assert abs(got[task][temperature][1] - valid) <= 2, (task, temperature, got[task][temperature])


def test_recorded_mtpb_figures_reproduce(tmp_path):
    """The card's MTPB run on a few of its problems: the same pass count and outcome counts."""
    from mtpb_helpers import mtpb_path

    recorded = RECORDED["mtpb"]["subset"]
    out = tmp_path / "mtpb"
    args = RECORDED["mtpb"]["subset_args"]
    assert main(["eval", "mtpb", "--data", str(mtpb_path()), "--problems", ",".join(recorded), "--out", str(out),
                 *args]) == 0
    got: dict = {}
    for record in map(json.loads, (out / "results_multi.jsonl").read_text().splitlines()):
        counts = got.setdefault(record["id"], {})
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    for problem, statuses in recorded.items():
        for status in {*statuses, *got[problem]}:
            assert abs(got[problem].get(status, 0) - statuses.get(status, 0)) <= 1, (problem, got[problem])
