"""The completion server through the `openai` client: outputs equal the generation engine's,
streaming deltas add up to the same text, stop strings, logprobs, echo, models/health/metrics."""

import dataclasses

import httpx
import openai
import pytest
import torch

from generation_helpers import one_thread  # noqa: F401 (fixture)
from opencodegen.generation import Generator, SamplingParams
from serving_helpers import MODEL_NAME, reference_logprobs, serve, tiny_model

PROMPT = "def add(a, b):\n    "
GREEDY = SamplingParams(max_new_tokens=24, temperature=0.0)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def server(loaded):
    with serve(*loaded, max_batch=8) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def engine(loaded):
    return Generator(*loaded)


def test_greedy_completion_equals_the_engine(client, engine, loaded):
    [[expected]] = engine.generate([PROMPT], GREEDY)
    r = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=24, temperature=0)
    assert r.object == "text_completion" and r.model == MODEL_NAME and r.id.startswith("cmpl-")
    [choice] = r.choices
    assert (choice.text, choice.finish_reason, choice.index) == (expected.text, expected.finish_reason, 0)
    prompt_tokens = len(loaded[1].encode(PROMPT))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (prompt_tokens, len(expected.token_ids))
    assert r.usage.total_tokens == prompt_tokens + len(expected.token_ids)


def test_seeded_samples_equal_the_engine_for_every_prompt_and_choice(client, engine):
    params = SamplingParams(n=3, max_new_tokens=16, temperature=0.9, top_p=0.9, seed=7)
    prompts = [PROMPT, "import numpy as np\n", PROMPT]
    expected = engine.generate(prompts, params)
    r = client.completions.create(model=MODEL_NAME, prompt=prompts, n=3, max_tokens=16, temperature=0.9,
                                  top_p=0.9, seed=7)
    assert [c.index for c in r.choices] == list(range(9))
    assert [c.text for c in r.choices] == [c.text for per_prompt in expected for c in per_prompt]
    assert len({c.text for c in r.choices[:3]}) > 1  # the n samples differ from one another
    assert [c.text for c in r.choices[:3]] != [c.text for c in r.choices[6:]]  # so do identical prompts
    again = client.completions.create(model=MODEL_NAME, prompt=prompts, n=3, max_tokens=16, temperature=0.9,
                                      top_p=0.9, seed=7)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]


def test_presence_and_frequency_penalties_equal_the_engine(client, engine):
    params = SamplingParams(n=2, max_new_tokens=16, temperature=0.9, top_p=0.9, seed=3, presence_penalty=0.8,
                            frequency_penalty=1.2)
    expected = engine.generate([PROMPT], params)[0]
    r = client.completions.create(model=MODEL_NAME, prompt=PROMPT, n=2, max_tokens=16, temperature=0.9, top_p=0.9,
                                  seed=3, presence_penalty=0.8, frequency_penalty=1.2)
    assert [c.text for c in r.choices] == [c.text for c in expected]
    plain = engine.generate([PROMPT], dataclasses.replace(params, presence_penalty=0, frequency_penalty=0))[0]
    assert [c.text for c in plain] != [c.text for c in expected]  # the penalties changed the samples


def test_stream_sends_token_deltas_that_add_up_to_the_completion(client):
    whole = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=24, temperature=0)
    chunks = list(client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    text_chunks = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in text_chunks) == whole.choices[0].text
    assert len(text_chunks) >= 5  # real token-by-token deltas, not one block at the end
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    assert text_chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_cut_the_decoded_text(client, stream):
    text = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=24, temperature=0).choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]  # spans token boundaries in general
    assert len(stop) == 3
    expected = text[: text.index(stop)]
    kwargs = dict(model=MODEL_NAME, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop, "\x00never"])
    if stream:
        pieces = [c.choices[0] for c in client.completions.create(stream=True, **kwargs)]
        assert "".join(p.text for p in pieces) == expected
        assert all(stop not in p.text for p in pieces)
        assert pieces[-1].finish_reason == "stop"
    else:
        choice = client.completions.create(**kwargs).choices[0]
        assert (choice.text, choice.finish_reason) == (expected, "stop")


def test_logprobs_are_the_model_distribution_with_real_alternatives(client, engine, loaded):
    model, tokenizer = loaded
    r = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    [[expected]] = engine.generate([PROMPT], dataclasses.replace(GREEDY, max_new_tokens=12))
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(expected.token_ids)
    for text, token in zip(lp.tokens, expected.token_ids):  # a piece of a character is shown as its bytes
        as_bytes = "bytes:" + "".join(f"\\x{b:02x}" for b in tokenizer.token_bytes(token))
        assert text == tokenizer.decode([token]) or text == as_bytes
    prompt_ids = tokenizer.encode(PROMPT)
    reference = reference_logprobs(model, len(tokenizer), prompt_ids + expected.token_ids)[len(prompt_ids) - 1 :]
    torch.testing.assert_close(torch.tensor(lp.token_logprobs), reference, atol=1e-4, rtol=1e-4)
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert 3 <= len(top) <= 4 and max(top.values()) == pytest.approx(chosen)  # greedy: the best one
        assert all(v <= 0 for v in top.values())
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_echo_scores_the_prompt_without_generating(client, loaded):
    model, tokenizer = loaded
    r = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1)
    choice = r.choices[0]
    assert (choice.text, choice.finish_reason, r.usage.completion_tokens) == (PROMPT, "length", 0)
    ids = tokenizer.encode(PROMPT)
    assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
    expected = reference_logprobs(model, len(tokenizer), ids)
    torch.testing.assert_close(torch.tensor(choice.logprobs.token_logprobs[1:]), expected, atol=1e-4, rtol=1e-4)
    assert "".join(choice.logprobs.tokens) == PROMPT
    # echo with generation: the prompt, then the same completion as without echo
    plain = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=8, temperature=0)
    echoed = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=8, temperature=0, echo=True,
                                       logprobs=0)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    offsets = echoed.choices[0].logprobs.text_offset
    assert offsets[len(ids)] == len(PROMPT)  # the first generated token starts right after the prompt
    chunks = list(client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=8, temperature=0, n=2,
                                            echo=True, stream=True))
    for index in (0, 1):
        texts = [c.choices[0].text for c in chunks if c.choices[0].index == index]
        assert texts[0] == PROMPT and "".join(texts) == echoed.choices[0].text


def test_token_id_prompts_equal_text_prompts(client, loaded):
    ids = loaded[1].encode(PROMPT)
    by_ids = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=10, temperature=0)
    by_text = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=10, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    empty = client.completions.create(model=MODEL_NAME, prompt="", max_tokens=4, temperature=0, echo=True)
    assert empty.usage.prompt_tokens == 1  # the model sees <|endoftext|>, as GPT-2 style models do
    assert empty.choices[0].finish_reason in ("stop", "length")


def test_models_health_and_metrics(client, server, loaded):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["queue_depth"] == 0
    client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=4, temperature=0)
    metrics = httpx.get(server.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    values = dict(line.rsplit(" ", 1) for line in metrics.text.splitlines() if not line.startswith("#"))
    assert float(values["opencodegen_generation_tokens_total"]) >= 4
    assert float(values['opencodegen_requests_total{outcome="ok"}']) >= 1
    assert float(values["opencodegen_queue_depth"]) == 0
    count = float(values["opencodegen_request_latency_seconds_count"])
    assert count >= 1 and float(values['opencodegen_request_latency_seconds_bucket{le="+Inf"}']) == count


def test_default_sampling_is_openai_s(client, engine):
    """Without temperature/top_p the server samples at 1.0/1.0, as OpenAI does (seeded: reproducible)."""
    params = dataclasses.replace(GREEDY, temperature=1.0, top_p=1.0, seed=3, max_new_tokens=10)
    [[expected]] = engine.generate([PROMPT], params)
    r = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=10, seed=3)
    assert r.choices[0].text == expected.text


def test_a_quantized_model_serves_what_its_engine_writes(tmp_path):
    from opencodegen.quantize import quantize

    model, tokenizer = tiny_model(tmp_path / "tiny")
    quantize(model, "int8")
    [[expected]] = Generator(model, tokenizer).generate([PROMPT], GREEDY)
    with serve(model, tokenizer, max_batch=2) as server:
        r = httpx.post(server.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 24, "temperature": 0},
                       timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == expected.text
