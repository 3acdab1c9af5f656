"""Engine and server outputs on fixed seeds equal the tokens recorded before the decode core was shared.

`tests/data/decode_tokens.json` was written once by the engine and scheduler as they were before
`generation/running_batch.py` replaced their two decode loops (run this file as a script with
PYTHONPATH pointing at that code to record it again). Any change to the tokens, the finish
reasons or the logprobs of these calls is a behaviour change of the decode path.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from pathlib import Path

import pytest
import torch

from generation_helpers import make_model_dir, one_thread  # noqa: F401 (fixture)
from opencodegen import load
from opencodegen.generation import Generator, SamplingParams
from opencodegen.serving.scheduler import Failed, Finished, Scheduler

FIXTURE = Path(__file__).parent / "data" / "decode_tokens.json"
PROMPTS = ["def add(a, b):\n    ", "import numpy as np\n\nx = np.arange(10)\n", "class Point:\n", "x"]
ENGINE_CALLS = {
    "greedy": dict(params=dict(max_new_tokens=24, temperature=0.0, ignore_eos=True)),
    "greedy_eos": dict(params=dict(max_new_tokens=40, temperature=0.0)),
    "sampled_n8": dict(params=dict(n=8, max_new_tokens=20, temperature=0.8, top_p=0.95, seed=1234)),
    "sampled_n8_unshared": dict(share_prefix=False,
                                params=dict(n=8, max_new_tokens=20, temperature=0.8, top_p=0.95, seed=1234)),
    "stops": dict(params=dict(n=3, max_new_tokens=32, temperature=1.0, seed=7, stop=("\n\n", "print"))),
    "truncate_codegen": dict(params=dict(n=2, max_new_tokens=32, temperature=1.0, seed=8, truncate="codegen")),
    "logprobs": dict(params=dict(n=2, max_new_tokens=12, temperature=1.0, seed=9, logprobs=3, ignore_eos=True)),
    "penalties": dict(params=dict(n=2, max_new_tokens=16, temperature=0.7, top_k=20, seed=10,
                                  presence_penalty=0.5, frequency_penalty=0.8)),
    "small_cache_batches": dict(max_cache_bytes=40_000,
                                params=dict(n=3, max_new_tokens=16, temperature=1.0, seed=11, ignore_eos=True)),
}
SERVER_JOBS = [
    dict(prompts=[0, 1], params=dict(max_new_tokens=24, temperature=0.0, ignore_eos=True)),
    dict(prompts=[2], params=dict(n=4, max_new_tokens=20, temperature=0.9, seed=3, logprobs=2)),
    dict(prompts=[3, 0], params=dict(n=2, max_new_tokens=30, temperature=1.0, seed=4, stop=("\n",))),
    dict(prompts=[1], params=dict(n=3, max_new_tokens=16, temperature=0.8, seed=5, presence_penalty=1.0)),
]


def completion_record(completion) -> dict:
    record = {"text": completion.text, "token_ids": completion.token_ids, "finish_reason": completion.finish_reason}
    if completion.logprobs is not None:
        record["logprobs"] = [[t.logprob, [list(pair) for pair in t.top]] for t in completion.logprobs]
    return record


def engine_outputs(model, tokenizer) -> dict:
    outputs = {}
    for name, call in ENGINE_CALLS.items():
        options = {k: v for k, v in call.items() if k != "params"}
        generator = Generator(model, tokenizer, **options)
        results = generator.generate(PROMPTS, SamplingParams(**call["params"]))
        outputs[name] = [[completion_record(c) for c in completions] for completions in results]
    return outputs


def server_outputs(model, tokenizer) -> list:
    """Every job submitted before the scheduler's thread starts, so admission order is fixed."""
    scheduler = Scheduler(model, tokenizer, max_batch=8)
    submitted = threading.Event()
    scheduler.step_hook = submitted.wait  # the model thread waits for the whole workload

    async def scenario():
        scheduler.start()
        jobs = [scheduler.submit([tokenizer.encode(PROMPTS[p]) for p in job["prompts"]],
                                 SamplingParams(**job["params"])) for job in SERVER_JOBS]
        submitted.set()
        results = []
        for job in jobs:
            choices: dict[int, dict] = {}
            while len(choices) < job.choices:
                event = await job.next_event()
                assert not isinstance(event, Failed), event.message
                if isinstance(event, Finished):
                    choices[event.index] = {
                        "text": event.text, "finish_reason": event.finish_reason,
                        "tokens": [[t.token, t.logprob, t.top and [list(p) for p in t.top]] for t in event.tokens],
                    }
            results.append([choices[i] for i in sorted(choices)])
        return results

    try:
        return asyncio.run(asyncio.wait_for(scenario(), 120))
    finally:
        scheduler.stop()


def record(directory: Path) -> dict:
    torch.set_num_threads(1)
    model, tokenizer = load(str(make_model_dir(directory)))
    with torch.inference_mode():
        return {"engine": engine_outputs(model, tokenizer), "server": server_outputs(model, tokenizer)}


def assert_same(got, expected, where: str = "") -> None:
    """Equal, with floats (logprobs) equal to 1e-4."""
    if isinstance(expected, float):
        assert got == pytest.approx(expected, abs=1e-4), where
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), where
        for key in expected:
            assert_same(got[key], expected[key], f"{where}.{key}")
    else:
        assert got == expected, where


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load(str(make_model_dir(tmp_path_factory.mktemp("tiny"))))


@pytest.mark.usefixtures("one_thread")
def test_engine_tokens_equal_the_recorded_ones(loaded):
    expected = json.loads(FIXTURE.read_text())["engine"]
    with torch.inference_mode():
        got = engine_outputs(*loaded)
    for name in ENGINE_CALLS:
        assert_same(got[name], expected[name], name)


@pytest.mark.usefixtures("one_thread")
def test_server_tokens_equal_the_recorded_ones(loaded):
    expected = json.loads(FIXTURE.read_text())["server"]
    assert_same(json.loads(json.dumps(server_outputs(*loaded))), expected, "server")


if __name__ == "__main__":  # record the fixture: PYTHONPATH=<the reference code>/src python tests/<this file>
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as tmp:
        FIXTURE.write_text(json.dumps(record(Path(tmp)), indent=None) + "\n")
    print(f"wrote {FIXTURE}")
