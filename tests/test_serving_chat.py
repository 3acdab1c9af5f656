"""/v1/chat/completions through the `openai` client: the prompt the engine receives is byte for
byte the one `eval mtpb` builds for the same instructions; streaming, n, stop, seed; top_k;
/tokenize and /detokenize as vLLM has them; OpenAI-style 400s; code execution in a lent session."""

import threading
import time

import httpx
import openai
import pytest

from generation_helpers import one_thread  # noqa: F401 (fixture)
from mtpb_helpers import FakeParams, ScriptedGenerator, mtpb_path
from opencodegen.evaluation.mtpb.data import Problem, load_mtpb
from opencodegen.evaluation.mtpb.generate import generate_multi_turn
from opencodegen.generation import Generator, SamplingParams
from serving_helpers import MODEL_NAME, serve, sse_data, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

# instructions with the cases a prompt builder can get wrong: a continuation line, non-ASCII, a quote
PROBLEM = Problem(
    id="t1", name="t", description="", category="", max_gen_length=32,
    prompts=("Assign the list [3, 1, 2] to a variable named xs.\n# Keep it unsorted.",
             "Sort xs in place; call the result 'ys' — héllo.", "Print the first element of ys."),
    inputs=({},), outputs=(None,),
)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def server(loaded):
    with serve(*loaded, max_batch=8, max_sessions_per_client=1) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


class EnginePrompts:
    """Records the token ids of every prompt the scheduler finished a job for (a test hook)."""

    def __init__(self, server):
        self.scheduler = server.app.state.scheduler
        self.prompts: list[list[int]] = []
        self.lock = threading.Lock()

    def __enter__(self):
        def hook(job):
            with self.lock:
                self.prompts.extend(job.prompts)

        self.scheduler.finish_hook = hook
        return self

    def __exit__(self, *exc):
        self.scheduler.finish_hook = None


def mtpb_prompts(problem: Problem) -> tuple[list[str], list[str]]:
    """The prompt `eval mtpb` builds for every turn of test case 0, and the code it got back."""
    codes = iter(f"v{k} = {k} * 2\nprint(v{k})" for k in range(100))
    generator = ScriptedGenerator(lambda prompt, params, k: next(codes))
    [record, *_] = generate_multi_turn(generator, [problem], FakeParams(n=1))
    return [prompts[0] for prompts, _ in generator.calls], record["completions"]


def conversation(turns: list[str], codes: list[str], upto: int) -> list[dict]:
    messages = []
    for k in range(upto):
        messages += [{"role": "user", "content": turns[k]}, {"role": "assistant", "content": codes[k]}]
    return messages + [{"role": "user", "content": turns[upto]}]


@pytest.mark.parametrize("stream", [False, True])
def test_the_engine_prompt_is_eval_mtpbs_byte_for_byte(client, server, loaded, stream):
    tokenizer = loaded[1]
    expected_prompts, codes = mtpb_prompts(PROBLEM)
    turns = PROBLEM.turns(0)
    for upto, expected in enumerate(expected_prompts):
        with EnginePrompts(server) as seen:
            reply = client.chat.completions.create(model=MODEL_NAME, messages=conversation(turns, codes, upto),
                                                   max_tokens=4, temperature=0, stream=stream)
            if stream:
                list(reply)
        [ids] = seen.prompts
        assert tokenizer.decode(ids).encode() == expected.encode()
        assert ids == tokenizer.encode(expected)


def test_text_parts_are_joined_like_a_string(client, server):
    with EnginePrompts(server) as seen:
        for content in ("Print 1.", [{"type": "text", "text": "Print "}, {"type": "text", "text": "1."}]):
            client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": content}],
                                           max_tokens=1, temperature=0)
    assert len(seen.prompts) == 2 and seen.prompts[0] == seen.prompts[1]


def test_a_real_mtpb_problem_gives_the_same_prompt(client, server, loaded):
    problem = next(p for p in load_mtpb(mtpb_path(), download=False).problems if p.n_turns >= 3)
    expected_prompts, codes = mtpb_prompts(problem)
    with EnginePrompts(server) as seen:
        client.chat.completions.create(model=MODEL_NAME, messages=conversation(problem.turns(0), codes, 2),
                                       max_tokens=2, temperature=0)
    assert seen.prompts == [loaded[1].encode(expected_prompts[2])]


def test_chat_reply_is_the_engines_code_for_the_prompt(client, loaded):
    expected_prompts, codes = mtpb_prompts(PROBLEM)
    engine = Generator(*loaded)
    params = SamplingParams(n=3, max_new_tokens=12, temperature=0.8, top_p=0.9, seed=5, truncate="codegen",
                            stop=("print",))
    [expected] = engine.generate([expected_prompts[1]], params)
    messages = conversation(PROBLEM.turns(0), codes, 1)
    r = client.chat.completions.create(model=MODEL_NAME, messages=messages, n=3, max_tokens=12, temperature=0.8,
                                       top_p=0.9, seed=5, stop="print")
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == MODEL_NAME
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.message.role for c in r.choices] == ["assistant"] * 3
    assert [c.message.content for c in r.choices] == [c.text for c in expected]
    assert [c.finish_reason for c in r.choices] == [c.finish_reason for c in expected]
    prompt_tokens = len(loaded[1].encode(expected_prompts[1]))
    assert r.usage.prompt_tokens == prompt_tokens
    assert r.usage.completion_tokens == sum(len(c.token_ids) for c in expected)
    # streamed: chunks add up to the same contents, each choice ends with a finish_reason, usage last
    chunks = list(client.chat.completions.create(
        model=MODEL_NAME, messages=messages, n=3, max_tokens=12, temperature=0.8, top_p=0.9, seed=5, stop="print",
        stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    texts, reasons, roles = ["", "", ""], {}, set()
    for chunk in chunks[:-1]:
        [choice] = chunk.choices
        texts[choice.index] += choice.delta.content or ""
        roles.add(choice.delta.role)
        if choice.finish_reason is not None:
            reasons[choice.index] = choice.finish_reason
    assert texts == [c.text for c in expected] and roles >= {"assistant"}
    assert reasons == {i: c.finish_reason for i, c in enumerate(expected)}
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == r.usage.total_tokens


def test_top_k_1_at_temperature_1_is_greedy(client, loaded):
    prompt = "def add(a, b):\n    "
    greedy = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=16, temperature=0).choices[0].text
    sampled = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=16, temperature=1.0, n=4,
                                        seed=11, extra_body={"top_k": 1})
    assert [c.text for c in sampled.choices] == [greedy] * 4
    free = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=16, temperature=1.0, n=4, seed=11)
    assert any(c.text != greedy for c in free.choices)  # so top_k is what made them greedy
    # the engine's top-k sampler, seed for seed
    params = SamplingParams(n=2, max_new_tokens=16, temperature=1.0, top_p=1.0, top_k=5, seed=3)
    [expected] = Generator(*loaded).generate([prompt], params)
    r = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=16, temperature=1.0, n=2, seed=3,
                                  extra_body={"top_k": 5})
    assert [c.text for c in r.choices] == [c.text for c in expected]
    messages = [{"role": "user", "content": "Print the sum of 1 and 2."}]
    chat_greedy = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=8, temperature=0)
    chat_top1 = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=8, temperature=1.0,
                                               seed=2, extra_body={"top_k": 1})
    assert chat_top1.choices[0].message.content == chat_greedy.choices[0].message.content


def test_ignore_eos_is_accepted_like_vllm(http):
    r = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 5, "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5


def test_tokenize_and_detokenize_round_trip(http, loaded):
    tokenizer = loaded[1]
    text = "def f(x):\n\treturn x  # héllo 😀\n"
    r = http.post("/tokenize", json={"model": MODEL_NAME, "prompt": text, "return_token_strs": True})
    assert r.status_code == 200
    body = r.json()
    assert body["tokens"] == tokenizer.encode(text) and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == loaded[0].config.n_positions
    assert body["token_strs"] == [tokenizer.id_to_token(t) for t in body["tokens"]]
    back = http.post("/detokenize", json={"model": MODEL_NAME, "tokens": body["tokens"]})
    assert back.status_code == 200 and back.json() == {"prompt": text}
    # a conversation tokenizes to the prompt /v1/chat/completions sends the model
    expected_prompts, codes = mtpb_prompts(PROBLEM)
    chat = http.post("/tokenize", json={"messages": conversation(PROBLEM.turns(0), codes, 2)}).json()
    assert chat["tokens"] == tokenizer.encode(expected_prompts[2])
    assert "token_strs" not in chat


@pytest.mark.parametrize(
    ("path", "body", "param", "code"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "system", "content": "Be nice."},
                                               {"role": "user", "content": "x"}]}, "messages.0",
         "unsupported_parameter"),
        ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "x = 1"}]}, "messages.0",
         "invalid_value"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
         "messages.1", "invalid_value"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"},
                                               {"role": "assistant", "content": "x = 1"}]}, "messages.1",
         "invalid_value"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "  "}]}, "messages.0", "invalid_value"),
        ("/v1/chat/completions", {"messages": []}, "messages", "invalid_value"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "n": 9}, "n", None),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "max_tokens": 10**6},
         "max_tokens", "max_tokens_exceeded"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "logprobs": True}, "logprobs",
         "unsupported_parameter"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "tools": []}, "tools",
         "unknown_parameter"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "top_k": -2}, "top_k",
         "invalid_value"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "max_tokens": 2,
                                  "max_completion_tokens": 2}, "max_completion_tokens", None),
        ("/v1/chat/completions", {"messages": "hi"}, "messages", "invalid_value"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "text": "a"}]}]},
         "messages", "invalid_value"),
        ("/v1/completions", {"prompt": "a", "top_k": "5"}, "top_k", "invalid_value"),
        ("/v1/completions", {"prompt": "a", "min_p": 0.1}, "min_p", "unknown_parameter"),
        ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "a"}]}, "prompt", None),
        ("/tokenize", {}, "prompt", None),
        ("/detokenize", {"tokens": [10**6]}, "tokens", "invalid_value"),
        ("/detokenize", {"tokens": "abc"}, "tokens", "invalid_value"),
    ],
)
def test_bad_requests_are_openai_style_400s(http, path, body, param, code):
    r = http.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["code"] == code
    assert error["message"]


def test_new_routes_go_through_the_guard(tmp_path_factory, loaded):
    with serve(*loaded, api_key="k") as server, httpx.Client(base_url=server.url, timeout=60) as http:
        for path, body in (("/tokenize", {"prompt": "a"}), ("/detokenize", {"tokens": [1]}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}]})):
            assert http.post(path, json=body).status_code == 401
            keyed = {"Authorization": "Bearer k"}
            assert http.post(path, content=b"{}", headers={**keyed, "Content-Type": "text/plain"}).status_code == 415
            assert http.post(path, json=body, headers={**keyed, "Host": "evil.example"}).status_code == 421
        assert http.post("/tokenize", json={"prompt": "a"}, headers={"Authorization": "Bearer k"}).status_code == 200


def test_execute_runs_the_turns_in_a_lent_session(http, server):
    messages = [{"role": "user", "content": "Assign 6 times 7 to x."}, {"role": "assistant", "content": "x = 6 * 7"},
                {"role": "user", "content": "Print x."}, {"role": "assistant", "content": "print(x)"},
                {"role": "user", "content": "Print x plus one."}]
    body = {"messages": messages, "max_tokens": 6, "temperature": 0, "n": 2, "execute": True}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert [t["status"] for t in reply["history_execution"]] == ["ok", "ok"]
    assert reply["history_execution"][1]["stdout"] == "42\n"
    for choice in reply["choices"]:
        assert choice["execution"]["status"] in ("ok", "error", "timeout", "memory", "crashed")
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        events = sse_data(response)
    finals = [c for e in events for c in e["choices"] if c.get("finish_reason")]
    assert len(finals) == 2 and all("execution" in c for c in finals)
    assert events[-1]["history_execution"][1]["stdout"] == "42\n"
    assert len(server.app.state.sessions) == 0  # the lent sessions were given back


def test_execute_counts_against_the_session_bounds(http, server):
    mine = http.post("/v1/sessions", json={})  # the one session this client may hold (max_sessions_per_client=1)
    assert mine.status_code == 201
    try:
        r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a"}], "max_tokens": 2,
                                                    "execute": True})
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_sessions"
        plain = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a"}],
                                                        "max_tokens": 2})
        assert plain.status_code == 200
    finally:
        http.delete(f"/v1/sessions/{mine.json()['id']}")


def test_a_client_that_leaves_a_stream_gives_the_lent_session_back(server):
    body = {"messages": [{"role": "user", "content": "Print 1."}], "max_tokens": 200, "temperature": 1.0,
            "ignore_eos": True, "execute": True, "stream": True}
    with httpx.Client(base_url=server.url, timeout=60) as http, http.stream("POST", "/v1/chat/completions",
                                                                           json=body) as response:
        assert response.status_code == 200
        next(response.iter_lines())  # the stream started; then the client leaves
    sessions = server.app.state.sessions
    deadline = time.monotonic() + 60  # a bound on a state change, not a speed assumption
    while len(sessions) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sessions) == 0
