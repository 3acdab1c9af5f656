"""The generation engine on a tiny random model: shared prefill, batching, seeds, stops, streaming, errors."""

import copy
import dataclasses

import pytest
import torch

from generation_helpers import make_model_dir, one_thread  # noqa: F401 (fixture)
from opencodegen import load
from opencodegen.errors import GenerationError
from opencodegen.generation import Generator, SamplingParams, Work, truncate_codegen
from opencodegen.generation.running_batch import RunningBatch
from opencodegen.generation.sampling import penalize

PROMPTS = ["def add(a, b):\n    ", "import numpy as np\n", "class Point:\n", "x"]
SAMPLE = SamplingParams(n=4, max_new_tokens=16, temperature=1.0, top_p=0.95, seed=11)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load(str(make_model_dir(tmp_path_factory.mktemp("tiny"))))


@pytest.fixture()
def gen(loaded):
    return Generator(*loaded)


def teacher_forced_logprobs(gen, prompt_ids, token_ids):
    """Log-probabilities of `token_ids` after the prompt, from one full forward without a cache."""
    ids = torch.tensor([prompt_ids + token_ids])
    with torch.no_grad():
        logits = gen.model(ids).logits[0, len(prompt_ids) - 1 : -1, : gen.vocab_limit]
    return logits.log_softmax(-1).gather(-1, torch.tensor(token_ids)[:, None]).squeeze(-1)


def count_prefills(gen, monkeypatch):
    calls = []
    original = gen._prefill
    monkeypatch.setattr(gen, "_prefill", lambda ids: calls.append(ids) or original(ids))
    return calls


@pytest.mark.parametrize("share_prefix", [True, False])
def test_n_samples_share_one_prefill_and_match_independent_runs(loaded, monkeypatch, share_prefix):
    gen = Generator(*loaded, share_prefix=share_prefix)
    calls = count_prefills(gen, monkeypatch)
    params = dataclasses.replace(SAMPLE, logprobs=0, ignore_eos=True)
    results = gen.generate(PROMPTS, params)
    assert len(calls) == len(PROMPTS)  # one prefill per prompt, not per sample
    for prompt, completions in zip(PROMPTS, results):
        assert len(completions) == 4 and len({tuple(c.token_ids) for c in completions}) > 1
        prompt_ids = gen.tokenizer.encode(prompt)
        for c in completions:
            assert len(c.token_ids) == 16 and c.finish_reason == "length"
            got = torch.tensor([t.logprob for t in c.logprobs])
            assert torch.allclose(got, teacher_forced_logprobs(gen, prompt_ids, c.token_ids), atol=1e-4)
            assert c.text == gen.tokenizer.decode(c.token_ids)


def test_sharing_the_prefix_cache_leaves_the_samples_unchanged(loaded):
    assert Generator(*loaded).share_prefix  # the default on CPU
    shared = Generator(*loaded, share_prefix=True).generate(PROMPTS, SAMPLE)
    copied = Generator(*loaded, share_prefix=False).generate(PROMPTS, SAMPLE)
    assert [[c.token_ids for c in row] for row in shared] == [[c.token_ids for c in row] for row in copied]


@pytest.mark.parametrize("presence, frequency", [(0.0, 2.0), (1.5, 0.0), (-0.5, 0.7)])
def test_penalties_match_a_direct_greedy_loop(gen, presence, frequency):
    """Greedy with OpenAI's penalties == argmax of (logits - frequency * count - presence * [count > 0])
    over the completion's own tokens, with one full forward per step."""
    params = SamplingParams(n=1, max_new_tokens=12, temperature=0, ignore_eos=True, presence_penalty=presence,
                            frequency_penalty=frequency, logprobs=0)
    for prompt in PROMPTS[:2]:
        [[got]] = gen.generate([prompt], params)
        ids, out = gen.tokenizer.encode(prompt), []
        counts = torch.zeros(gen.vocab_limit)
        with torch.no_grad():
            for _ in range(12):
                logits = gen.model(torch.tensor([ids + out])).logits[0, -1, : gen.vocab_limit]
                token = int((logits - frequency * counts - presence * (counts > 0).float()).argmax())
                out.append(token)
                counts[token] += 1
        assert got.token_ids == out
        # logprobs stay the model's, not the penalized scores
        assert torch.allclose(torch.tensor([t.logprob for t in got.logprobs]),
                              teacher_forced_logprobs(gen, ids, out), atol=1e-4)


def test_penalize_subtracts_presence_once_and_frequency_per_occurrence():
    logits = torch.zeros(2, 5)
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    out = penalize(logits, [[1, 1, 3], []], params)
    assert out.tolist() == [[0.0, -1.0, 0.0, -0.75, 0.0], [0.0] * 5]
    assert penalize(logits, [[1]], SamplingParams()) is logits  # off: untouched


def test_a_sample_does_not_depend_on_its_batch(loaded):
    gen = Generator(*loaded)
    alone = gen.generate([PROMPTS[0]], SAMPLE, keys=["add"])[0]
    mixed = gen.generate([PROMPTS[2], PROMPTS[0], PROMPTS[3]], SAMPLE, keys=["point", "add", "x"])[1]
    assert [c.token_ids for c in alone] == [c.token_ids for c in mixed]
    # by default the key is the prompt's index: the other prompts of the call do not matter
    first = gen.generate([PROMPTS[0], PROMPTS[1]], SAMPLE)[0]
    assert [c.token_ids for c in first] == [c.token_ids for c in gen.generate([PROMPTS[0], PROMPTS[3]], SAMPLE)[0]]
    # nor does the batch size: one row per batch gives the same samples
    single_rows = Generator(*loaded, max_batch_size=1).generate([PROMPTS[2], PROMPTS[0]], SAMPLE, keys=["p", "add"])
    assert [c.token_ids for c in single_rows[1]] == [c.token_ids for c in alone]
    # sample j of n is the same sequence whatever n is, and whatever call draws it (first_sample)
    one = gen.generate([PROMPTS[0]], dataclasses.replace(SAMPLE, n=1), keys=["add"])[0][0]
    assert one.token_ids == alone[0].token_ids
    later = gen.generate([PROMPTS[0]], dataclasses.replace(SAMPLE, n=2), keys=["add"], first_sample=2)[0]
    assert [c.token_ids for c in later] == [c.token_ids for c in alone[2:]]
    other_seed = gen.generate([PROMPTS[0]], dataclasses.replace(SAMPLE, seed=12), keys=["add"])[0]
    assert [c.token_ids for c in other_seed] != [c.token_ids for c in alone]
    other_key = gen.generate([PROMPTS[0]], SAMPLE, keys=["sub"])[0]
    assert [c.token_ids for c in other_key] != [c.token_ids for c in alone]
    # one key, a sample index per prompt: rows continuing samples 3 and 1 of "add"
    n1 = dataclasses.replace(SAMPLE, n=1)
    rows = gen.generate([PROMPTS[0], PROMPTS[0]], n1, keys=["add", "add"], first_sample=[3, 1])
    assert [c.token_ids for (c,) in rows] == [alone[3].token_ids, alone[1].token_ids]


def test_identical_prompts_in_one_call_draw_different_samples(gen):
    params = SamplingParams(n=1, max_new_tokens=16, temperature=1.0, top_p=1.0, seed=5, ignore_eos=True)
    rows = gen.generate([PROMPTS[0]] * 3, params)
    assert len({tuple(c.token_ids) for (c,) in rows}) == 3
    again = gen.generate([PROMPTS[0]] * 3, params)
    assert [c.token_ids for (c,) in again] == [c.token_ids for (c,) in rows]  # the same seed reproduces them
    both = gen.generate([PROMPTS[0]] * 3, dataclasses.replace(params, n=2))
    assert len({tuple(c.token_ids) for row in both for c in row}) == 6


def test_small_cache_budget_splits_batches_and_reuses_the_prefill(loaded, monkeypatch):
    whole = Generator(*loaded).generate(PROMPTS[:2], SAMPLE)
    small = Generator(*loaded, max_cache_bytes=1)  # one row per batch
    calls = count_prefills(small, monkeypatch)
    progress = []
    split = small.generate(PROMPTS[:2], SAMPLE, progress=progress.append)
    assert len(calls) == 2 and sum(progress) == 8
    assert [[c.token_ids for c in cs] for cs in split] == [[c.token_ids for c in cs] for cs in whole]


def test_untrained_vocabulary_rows_are_never_sampled(loaded):
    model, tok = loaded
    boosted = copy.deepcopy(model)
    with torch.no_grad():
        boosted.lm_head.bias[len(tok):] += 100.0  # the untrained rows would win every draw
    params = SamplingParams(n=4, max_new_tokens=12, temperature=1.0, top_p=1.0, seed=0, ignore_eos=True)
    for p in (params, dataclasses.replace(params, temperature=0)):
        for c in Generator(boosted, tok).generate(PROMPTS, p)[0]:
            assert max(c.token_ids) < len(tok)
    unmasked = Generator(boosted).generate_ids([tok.encode(PROMPTS[0])], params)[0]
    assert all(min(c.token_ids) >= len(tok) for c in unmasked)  # without the tokenizer nothing masks them


def test_stop_strings_cut_text_and_finished_rows_leave_the_batch(gen):
    """Rows that stop early leave the batch; the others go on exactly as without stops."""
    params = dataclasses.replace(SAMPLE, n=8, max_new_tokens=24, ignore_eos=True)
    free = gen.generate([PROMPTS[1]], params)[0]
    stop = "e"
    assert sum(stop in c.text for c in free) >= 2
    stopped = gen.generate([PROMPTS[1]], dataclasses.replace(params, stop=[stop]))[0]
    for f, s in zip(free, stopped):
        if stop in f.text:
            assert s.text == f.text[: f.text.index(stop)] and s.finish_reason == "stop"
            assert f.token_ids[: len(s.token_ids)] == s.token_ids and len(s.token_ids) < 24
        else:
            assert (s.text, s.token_ids, s.finish_reason) == (f.text, f.token_ids, "length")


def test_codegen_truncation_in_the_engine(gen):
    params = dataclasses.replace(SAMPLE, n=8, max_new_tokens=48, temperature=1.2, top_p=1.0, ignore_eos=True, seed=17)
    free = gen.generate([PROMPTS[0]], params)[0]
    truncated = gen.generate([PROMPTS[0]], dataclasses.replace(params, truncate="codegen"))[0]
    assert any(truncate_codegen(f.text) != f.text for f in free)
    for f, t in zip(free, truncated):
        assert t.text == truncate_codegen(f.text)
        assert t.finish_reason == ("stop" if t.text != f.text else "length")
        assert f.token_ids[: len(t.token_ids)] == t.token_ids


def test_stream_yields_the_final_text(gen):
    params = dataclasses.replace(SAMPLE, n=1, max_new_tokens=30, stop=["\n\n"])
    [[full]] = gen.generate([PROMPTS[0]], params)
    deltas = list(gen.stream(PROMPTS[0], params))
    assert all(isinstance(d, str) and d for d in deltas) and "".join(deltas) == full.text
    multi = dataclasses.replace(params, n=3)
    texts = ["", "", ""]
    for index, delta in gen.stream(PROMPTS[0], multi):
        texts[index] += delta
    assert texts == [c.text for c in gen.generate([PROMPTS[0]], multi)[0]]


def test_logprobs_with_alternatives(gen):
    [[c]] = gen.generate([PROMPTS[2]], SamplingParams(max_new_tokens=8, temperature=0, logprobs=3, ignore_eos=True))
    for t in c.logprobs:
        assert len(t.top) == 3 and t.top[0][0] == t.token_id  # greedy picks the most likely token
        assert t.top[0][1] == pytest.approx(t.logprob) and t.top[0][1] >= t.top[1][1] >= t.top[2][1]


def test_eos_is_not_part_of_the_completion(gen):
    model, tok = gen.model, gen.tokenizer
    boosted = copy.deepcopy(model)
    with torch.no_grad():
        boosted.lm_head.bias[tok.eos_token_id] += 100.0
    [[c]] = Generator(boosted, tok).generate([PROMPTS[0]], SamplingParams(temperature=0))
    assert (c.text, c.token_ids, c.finish_reason) == ("", [], "stop")


def test_left_truncation_of_long_prompts(gen):
    context = gen.model.config.n_positions
    ids = (gen.tokenizer.encode("print(add(1, 2))\n") * 200)[: context + 20]
    params = SamplingParams(max_new_tokens=8, temperature=0)
    with pytest.raises(GenerationError, match=r"prompt 0 has \d+ tokens.*context of 512"):
        gen.generate_ids([ids], params)
    kept = gen.generate_ids([ids[-(context - 8):]], params)
    assert gen.generate_ids([ids], dataclasses.replace(params, truncate_prompt=True)) == kept


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda g: g.generate([""], SamplingParams()), "prompt 0 is empty"),
        (lambda g: g.generate(["ok", ""], SamplingParams()), "prompt 1 is empty"),
        (lambda g: g.generate("a prompt", SamplingParams()), "list of strings"),
        (lambda g: g.generate_ids([[1, 5000]], SamplingParams()), "token id 5000"),
        (lambda g: g.generate(["x"], SamplingParams(max_new_tokens=512)), "leaves no room"),
        (lambda g: g.generate(["x"], SamplingParams(n=0)), "n must be"),
        (lambda g: g.generate(["x"], SamplingParams(top_p=1.5)), "top_p"),
        (lambda g: g.generate(["x"], SamplingParams(presence_penalty=2.5)), "presence_penalty"),
        (lambda g: g.generate(["x"], SamplingParams(frequency_penalty="1")), "frequency_penalty"),
        (lambda g: g.generate(["x"], SamplingParams(temperature=-1)), "temperature"),
        (lambda g: g.generate(["x"], SamplingParams(truncate="python")), "unknown truncation preset"),
        (lambda g: Generator(g.model).generate_ids([[1]], SamplingParams(stop=["\n"])), "need a tokenizer"),
        (lambda g: g.generate(["x", "y"], SamplingParams(), keys=["k", "k"]), "share a random stream"),
        (lambda g: g.generate(["x", "y"], SamplingParams(n=2), keys=["k", "k"], first_sample=[0, 1]),
         "share a random stream"),
        (lambda g: g.generate(["x", "y"], SamplingParams(), keys=["k"]), "one string per prompt"),
        (lambda g: g.generate(["x"], SamplingParams(), first_sample=-1), "first_sample"),
        (lambda g: g.generate(["x"], SamplingParams(), first_sample=[0, 1]), "first_sample"),
    ],
)
def test_bad_input_raises_generation_error(gen, call, message):
    with pytest.raises(GenerationError, match=message):
        call(gen)


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_rows_joining_a_running_batch_give_what_a_batch_at_once_gives(loaded, monkeypatch, share_prefix, temperature):
    """Rows stopping early make room for waiting ones, which join between steps (into a batch whose
    prompts are shared, on CPU by default): every completion equals the one drawn with all rows at once
    and the one drawn alone."""
    params = SamplingParams(n=3, max_new_tokens=20, temperature=temperature, seed=21, stop=("\n", "e"))
    many = [PROMPTS[i % 4] + " " * (i // 4) for i in range(6)]

    def completions(**options):
        gen = Generator(*loaded, share_prefix=share_prefix, **options)
        joins = []
        original = RunningBatch.add
        monkeypatch.setattr(RunningBatch, "add", lambda self, *a: joins.append(len(self)) or original(self, *a))
        out = gen.generate(many, params)
        monkeypatch.setattr(RunningBatch, "add", original)
        return [[(c.token_ids, c.finish_reason) for c in row] for row in out], joins

    at_once, joins = completions()
    assert joins == [0]
    streamed, joins = completions(max_batch_size=4)
    assert streamed == at_once and any(rows > 0 for rows in joins)  # rows joined a running batch
    assert completions(max_batch_size=1)[0] == at_once
    assert any(reason == "stop" for row in at_once for _, reason in row)


def test_work_with_its_own_budget_and_samples(gen):
    """`stream_work`: each prompt with its own sample indices and token budget, all in one batch, gives
    what one call per prompt gives."""
    params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=4, ignore_eos=True)
    ids = gen.encode(PROMPTS[:3])
    work = [Work(ids[0], "a", [3, 0], 5), Work(ids[1], "b", [1]), Work(ids[2], "a", [1, 2], 9)]
    got: dict[tuple[int, int], list[int]] = {}
    for event in gen.stream_work(work, params):
        if event.completion is not None:
            got[event.prompt_index, event.index] = event.completion.token_ids
    for p, w in enumerate(work):
        budget = w.max_new_tokens or params.max_new_tokens
        for index, sample in enumerate(w.samples):
            alone = gen.generate_ids([w.ids], dataclasses.replace(params, max_new_tokens=budget), keys=[w.key],
                                     first_sample=sample)[0][0]
            assert got[p, index] == alone.token_ids and len(alone.token_ids) == budget
    with pytest.raises(GenerationError, match="share a random stream"):
        list(gen.stream_work([Work(ids[0], "a", [1]), Work(ids[1], "a", [1])], params))
