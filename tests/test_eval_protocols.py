"""Named evaluation protocols: transformers 4.16.2's top-k rule, warper order and decode clean-up
under `codegen-release` only, and each protocol's settings reaching `eval humaneval` / `eval mtpb`.

Expected outputs are worked out by hand from transformers 4.16.2's source (generation_utils.py
`_get_logits_warper`, generation_logits_process.py's warpers, tokenization_utils_base.py
`clean_up_tokenization`); docs/evaluation.md cites the lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import pytest
import torch

from generation_helpers import make_model_dir
from humaneval_fake_generator import FakeCompletion, settings_for
from mtpb_helpers import FakeParams, ScriptedGenerator, mtpb_path
from opencodegen.cli import main as cli
from opencodegen.errors import ConfigError
from opencodegen.evaluation import humaneval as he
from opencodegen.evaluation.mtpb.data import load_mtpb
from opencodegen.evaluation.mtpb.generate import generate_multi_turn, generate_single_turn
from opencodegen.evaluation.protocols import (
    BIGCODE,
    CODEGEN_RELEASE,
    HUMAN_EVAL,
    PROTOCOLS,
    clean_up_tokenization,
    get_protocol,
    protocol_settings,
)
from opencodegen.generation import SamplingParams
from opencodegen.generation.sampling import TokenSampler
from opencodegen.io import ResultStore

# ----------------------------------------------------------------------------- the decode clean-up

CLEAN_UP_CASES = [
    ("x = ' '.join(w)", "x =''.join(w)"),  # " ' " -> "'": the space separator is gone
    ("return ' '.join(words)", "return''.join(words)"),
    ("from . import utils", "from. import utils"),  # " ." -> "."
    ("print(a , b)", "print(a, b)"),  # " ," -> ","
    ("if a != b: pass", "if a!= b: pass"),  # " !" -> "!"
    ("x = y ? z", "x = y? z"),  # " ?" -> "?"
    ("print(x, 's')", "print(x,'s')"),  # " 's" -> "'s"
    ("d = {'a': 'm', 'b' : 'n'}", "d = {'a':'m', 'b' : 'n'}"),  # " 'm" -> "'m"; " 'n" is no rule
    ("re = 're' + 've", "re ='re' +'ve"),  # " 're" -> "'re", " 've" -> "'ve"
    ("s = x ve", "s = x ve"),  # " ve" is no rule: " 've" needs the quote
    ("do n't", "don't"),  # " n't" -> "n't"
    ("a ' 've", "a''ve"),  # in order: " ' " first, so " 've" never matches
    (" ' ' ", "'' "),  # str.replace takes non-overlapping matches from the left
    ("x = 1\n  .attr\n", "x = 1\n .attr\n"),  # only the space right before the dot goes
    ("a\tb  c\n\n\n", "a\tb  c\n\n\n"),  # untouched
]


@pytest.mark.parametrize("raw, cleaned", CLEAN_UP_CASES)
def test_clean_up_equals_transformers_4_16_2(raw, cleaned):
    assert clean_up_tokenization(raw) == cleaned


@pytest.mark.parametrize("protocol", list(PROTOCOLS.values()), ids=list(PROTOCOLS))
def test_only_codegen_release_cleans_and_uses_top_k(protocol):
    text = "    return ' '.join(w) , x\n"
    release = protocol is CODEGEN_RELEASE
    assert protocol.finish(text, protocol.truncate) == ("    return''.join(w), x\n" if release else text)
    assert protocol.clean_up is release and protocol.top_k == (50 if release else 0)
    assert protocol.top_p == 0.95


def test_codegen_release_truncates_after_the_clean_up():
    """The release truncated the cleaned text: a clean-up that starts a line with ''' cuts there."""
    raw = "x = 1\n ' ''doc\ny = 2"
    assert clean_up_tokenization(raw) == "x = 1\n'''doc\ny = 2"
    assert CODEGEN_RELEASE.finish(raw, "codegen") == "x = 1\n"
    assert CODEGEN_RELEASE.finish(raw, None) == "x = 1\n'''doc\ny = 2"  # single-turn MTPB: no truncation
    assert HUMAN_EVAL.finish(raw, "codegen") == raw


def test_protocol_lookup_and_bigcode_prompt_and_budget():
    assert get_protocol("bigcode") is BIGCODE
    with pytest.raises(ConfigError, match="unknown protocol 'codex'"):
        get_protocol("codex")
    with pytest.raises(ConfigError, match="no MTPB form"):
        get_protocol("bigcode", "mtpb")
    assert BIGCODE.prompt('\ndef f():\n    """Doc."""\n') == 'def f():\n    """Doc."""'
    assert HUMAN_EVAL.prompt("\ndef f():\n") == "\ndef f():\n"
    assert (BIGCODE.budget(100), BIGCODE.budget(512), HUMAN_EVAL.budget(100), CODEGEN_RELEASE.budget(9)) == (
        412, 0, 384, 128)


# ----------------------------------------------------------------------------- the sampler


def support_and_probs(logits: torch.Tensor, params: SamplingParams) -> tuple[set[int], torch.Tensor]:
    """Tokens the sampler can draw from `logits` [V] and their probabilities (from its candidates)."""
    probs, ids = TokenSampler(params)._nucleus(logits[None].float() / params.temperature)
    dist = torch.zeros(logits.shape[-1], dtype=torch.float64).scatter_add_(0, ids[0], probs[0].double())
    dist /= dist.sum()
    return set(dist.nonzero().flatten().tolist()), dist


def grid_draws(logits: torch.Tensor, params: SamplingParams, n: int = 20_000) -> torch.Tensor:
    """Token frequencies over evenly spaced uniforms (the engine's inverse-CDF draw, no randomness)."""
    uniforms = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    tokens = TokenSampler(params)(logits.expand(n, -1), uniforms)
    return torch.bincount(tokens, minlength=logits.shape[-1]).double() / n


def test_top_k_50_keeps_every_token_tied_with_the_50th():
    """4.16.2's TopKLogitsWarper removes scores < the k-th largest: ties with it all stay."""
    logits = torch.full((120,), -1.0)
    logits[:48] = torch.linspace(6.0, 5.0, 48)  # the 48 best, distinct
    logits[60:64] = 2.0  # the 49th-52nd best, tied: the 50th largest value is 2.0
    logits[100] = 1.99  # the next one: removed
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=CODEGEN_RELEASE.top_k)
    kept, dist = support_and_probs(logits, params)
    assert kept == set(range(48)) | {60, 61, 62, 63}
    expected = torch.zeros(120, dtype=torch.float64)
    expected[list(kept)] = logits[list(kept)].double().softmax(-1)
    assert torch.allclose(dist, expected, atol=1e-6)
    freq = grid_draws(logits, params)
    assert set(freq.nonzero().flatten().tolist()) == kept  # each tied token is drawn (p ~ 3e-4 each)


def test_top_k_ties_in_one_row_leave_the_other_rows_alone():
    """A batch where one row has ties with its 3rd score and one has none: each keeps its own set."""
    logits = torch.tensor([[5.0, 4.0, 3.0, 3.0, 3.0, 1.0], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    probs, ids = TokenSampler(SamplingParams(temperature=1.0, top_p=1.0, top_k=3))._nucleus(logits)
    kept = [set(i[p > 0].tolist()) for p, i in zip(probs, ids)]
    assert kept == [{0, 1, 2, 3, 4}, {0, 1, 2}]
    assert torch.allclose(probs[1][probs[1] > 0], logits[1, :3].softmax(-1))


def test_temperature_applies_before_top_p():
    """Logits [2, 1, 0, -1] with top-p 0.95: at T 1 the nucleus is 3 tokens (masses before them 0,
    .64, .88), at T 0.5 (scores [4, 2, 0, -2]) it is 2 (0, .87, .98); 4.16.2 scales first."""
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    assert support_and_probs(logits, SamplingParams(temperature=1.0, top_p=0.95))[0] == {0, 1, 2}
    kept, dist = support_and_probs(logits, SamplingParams(temperature=0.5, top_p=0.95))
    assert kept == {0, 1}
    assert math.isclose(dist[0].item(), math.exp(4) / (math.exp(4) + math.exp(2)), rel_tol=1e-6)


def test_top_p_sees_probabilities_renormalised_over_top_k():
    """Scores [4, 1, then 200 zeros], top-k 2, top-p 0.95. After top-k the masses are
    e^4/(e^4+e) = .9526 and .0474: top-p keeps token 0 alone. Top-p first (on the full
    distribution, where token 0 holds .21) would keep both."""
    logits = torch.zeros(202)
    logits[0], logits[1] = 4.0, 1.0
    kept, dist = support_and_probs(logits, SamplingParams(temperature=1.0, top_p=0.95, top_k=2))
    assert kept == {0} and dist[0] == 1.0
    assert support_and_probs(logits, SamplingParams(temperature=1.0, top_p=0.95))[0] > {0, 1}


def test_release_sampler_at_t_0_2_on_fixed_logits():
    """T 0.2, top-k 50, top-p 0.95 together, worked by hand: scores = logits / 0.2 = [10, 9, 8, 5,
    then 56 zeros]; the 50th largest score is 0, shared by all 56 zeros, so top-k keeps all 60;
    masses .6612, .2432, .0895, .0045, ...: before token 2 the mass is .9044 < .95, before token 3
    .9939 > .95: the nucleus is {0, 1, 2}, renormalised."""
    logits = torch.zeros(60)
    logits[:4] = torch.tensor([2.0, 1.8, 1.6, 1.0])
    params = SamplingParams(temperature=0.2, top_p=CODEGEN_RELEASE.top_p, top_k=CODEGEN_RELEASE.top_k)
    kept, dist = support_and_probs(logits, params)
    assert kept == {0, 1, 2}
    scores = torch.tensor([10.0, 9.0, 8.0], dtype=torch.float64)
    assert torch.allclose(dist[:3], scores.softmax(-1), atol=1e-7)


# ----------------------------------------------------------------------------- HumanEval


class Encoded(list):
    """A prompt's "token ids" (its words, or the prompt itself) that remember the prompt."""

    def __init__(self, prompt, ids):
        super().__init__(ids)
        self.prompt = prompt


@dataclasses.dataclass
class Event:
    prompt_index: int
    index: int
    completion: FakeCompletion


class RecordingGenerator:
    """Returns `text` for every sample and records, per prompt, the prompt and the params (with its
    budget and number of samples) it was asked for."""

    def __init__(self, text, tokenizer=None):
        self.text, self.tokenizer, self.calls = text, tokenizer, []

    def encode(self, prompts):
        return [Encoded(p, self.tokenizer.encode(p) if self.tokenizer else [p]) for p in prompts]

    def stream_work(self, work, params):
        for i, item in enumerate(work):
            prompt = item.ids.prompt
            self.calls.append(([prompt], dataclasses.replace(params, n=len(item.samples),
                                                             max_new_tokens=item.max_new_tokens)))
            for index, _ in enumerate(item.samples):
                yield Event(i, index, FakeCompletion(self.text(prompt) if callable(self.text) else self.text))


class WordCounter:
    """A tokenizer stand-in: one token per whitespace-separated word."""

    @staticmethod
    def encode(text):
        return text.split()


@pytest.fixture(scope="module")
def problems():
    return he.load_problems(limit=3)


def sample_with(protocol, problems, tmp_path, generator, **budget):
    store = ResultStore(tmp_path / f"{protocol.name}.jsonl", he.KEY)
    he.generate_samples(generator, problems, store, n=2, temperatures=[0.2], top_p=protocol.top_p,
                        max_new_tokens=budget.get("max_new_tokens", protocol.new_tokens), seed=0,
                        progress=False, protocol=protocol, top_k=protocol.top_k,
                        max_total_tokens=budget.get("max_total_tokens", protocol.total_tokens))
    return store.records


@pytest.mark.parametrize("protocol", list(PROTOCOLS.values()), ids=list(PROTOCOLS))
def test_humaneval_sampling_follows_the_protocol(protocol, problems, tmp_path):
    generator = RecordingGenerator("    return ' '.join(x)\n", tokenizer=WordCounter())
    records = sample_with(protocol, problems, tmp_path, generator)
    prompts, params = generator.calls[0]
    assert prompts == [problems[0].prompt]  # the caller (run_with_generator) strips bigcode's prompt
    assert (params.top_k, params.top_p, params.truncate, params.stop) == (
        protocol.top_k, 0.95, protocol.truncate, protocol.stop)
    words = len(problems[0].prompt.split())
    assert params.max_new_tokens == (512 - words if protocol is BIGCODE else protocol.new_tokens)
    assert {r["completion"] for r in records} == {
        "    return''.join(x)\n" if protocol is CODEGEN_RELEASE else "    return ' '.join(x)\n"}


def test_bigcode_budget_counts_the_prompt_and_may_leave_nothing(problems, tmp_path):
    generator = RecordingGenerator("never", tokenizer=WordCounter())
    records = sample_with(BIGCODE, problems[:1], tmp_path, generator, max_total_tokens=3)
    assert generator.calls == [] and [(r["completion"], r["finish_reason"]) for r in records] == [("", "length")] * 2


def test_bigcode_runs_the_stripped_prompt(problems, tmp_path):
    """bigcode's model continues prompt.strip() and its program starts with it: a completion that
    opens with the newline the strip removed passes, run on the stripped prompt."""
    by_prompt = {p.prompt.strip(): p for p in problems}
    generator = RecordingGenerator(lambda prompt: "\n" + by_prompt[prompt].canonical_solution)
    settings = dataclasses.replace(settings_for(problems, n=1, temperatures=[0.2], seed=0, limit=3, batch_size=1),
                                   protocol="bigcode", top_k=0, max_new_tokens=20)
    options = he.RunOptions(out=tmp_path, ks=(1,), workers=1, progress=False)
    summary = he.run_with_generator(generator, problems, settings, options)
    assert [prompts for prompts, _ in generator.calls] == [[p.prompt.strip()] for p in problems]
    assert summary["results"]["0.2"]["pass@1"] == 1.0 and summary["settings"]["protocol"] == "bigcode"


def read_json(path):
    return json.loads(path.read_text())


def test_humaneval_cli_records_the_protocol_and_refuses_another(tmp_path, capsys):
    model = make_model_dir(tmp_path / "model")
    out = tmp_path / "out"
    argv = ["eval", "humaneval", "--model", str(model), "--out", str(out), "--limit", "1", "--n", "2",
            "--temperature", "0.5", "--max-new-tokens", "4", "--k", "1", "--device", "cpu", "--quiet"]
    assert cli([*argv, "--protocol", "codegen-release"]) == 0
    run = read_json(out / "run.json")
    assert (run["protocol"], run["top_k"], run["top_p"], run["max_new_tokens"]) == ("codegen-release", 50, 0.95, 4)
    settings = read_json(out / "summary.json")["settings"]
    assert {k: settings[k] for k in ("protocol", "top_k", "top_p", "max_new_tokens")} == {
        "protocol": "codegen-release", "top_k": 50, "top_p": 0.95, "max_new_tokens": 4}
    capsys.readouterr()
    assert cli(argv) == 2  # the default protocol is human-eval: another run
    assert "protocol: 'codegen-release' -> 'human-eval'" in capsys.readouterr().err
    assert cli(["eval", "humaneval", "--samples", str(out / "samples.jsonl"), "--protocol", "bigcode",
                "--out", str(tmp_path / "scored"), "--limit", "1"]) == 2
    assert "scored as it is" in capsys.readouterr().err


def test_protocol_settings_defaults_and_overrides():
    def resolve(benchmark, **given):
        args = argparse.Namespace(**{"protocol": None, "top_p": None, "top_k": None, "max_new_tokens": None, **given})
        return protocol_settings(args, benchmark)

    assert resolve("humaneval") == {"protocol": "human-eval", "top_p": 0.95, "top_k": 0, "max_new_tokens": 384,
                                    "max_total_tokens": None}
    assert resolve("humaneval", protocol="bigcode") == {"protocol": "bigcode", "top_p": 0.95, "top_k": 0,
                                                        "max_new_tokens": None, "max_total_tokens": 512}
    assert resolve("humaneval", protocol="bigcode", max_new_tokens=300, top_k=5)["max_total_tokens"] is None
    assert resolve("mtpb") == {"protocol": "codegen-release", "top_p": 0.95, "top_k": 50}
    assert resolve("mtpb", top_k=0, top_p=0.9) == {"protocol": "codegen-release", "top_p": 0.9, "top_k": 0}
    for bad in ({"top_p": 0.0}, {"top_k": -1}, {"max_new_tokens": 0}):
        with pytest.raises(ConfigError):
            resolve("humaneval", **bad)


# ----------------------------------------------------------------------------- MTPB


def test_mtpb_histories_carry_the_release_clean_up(tmp_path):
    problem = load_mtpb(mtpb_path()).by_id()["3"]
    code = "x = ' '.join(['a', 'b'])\nprint(x)"
    for protocol, expected in ((CODEGEN_RELEASE, "x =''.join(['a', 'b'])\nprint(x)"), (HUMAN_EVAL, code), (None, code)):
        records = generate_multi_turn(ScriptedGenerator(lambda p, params, k: code), [problem], FakeParams(n=1), protocol)
        assert all(r["completions"] == [expected] * problem.n_turns and expected in r["program"] for r in records)
        single = generate_single_turn(ScriptedGenerator(lambda p, params, k: code), [problem], FakeParams(n=1), protocol)
        assert all(r["completions"] == [expected] for r in single)


def test_mtpb_cli_defaults_to_the_release_and_refuses_another_protocol(tmp_path, capsys):
    model = make_model_dir(tmp_path / "model")
    out = tmp_path / "out"
    argv = ["eval", "mtpb", "--model", str(model), "--data", str(mtpb_path()), "--problems", "3", "--mode", "single",
            "--temperature", "0", "--out", str(out), "--device", "cpu", "--workers", "1"]
    assert cli(argv) == 0
    settings = read_json(out / "summary.json")["settings"]
    assert (settings["protocol"], settings["top_k"], settings["top_p"]) == ("codegen-release", 50, 0.95)
    capsys.readouterr()
    assert cli([*argv, "--protocol", "human-eval"]) == 2
    assert "protocol: 'codegen-release' -> 'human-eval'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # bigcode's harness has no MTPB task
        cli([*argv, "--protocol", "bigcode"])
