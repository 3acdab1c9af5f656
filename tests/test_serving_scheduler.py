"""Continuous batching: merged caches compute what each row computes alone; a request's output
is the same whether it ran alone or joined a busy batch; n samples share one prefill;
cancellation frees queue and batch slots; a failing step fails only its requests."""

import asyncio
import dataclasses

import pytest
import torch

from generation_helpers import one_thread  # noqa: F401 (fixture)
from opencodegen.generation import SamplingParams
from opencodegen.serving.batch import RunningBatch, merge_caches, prefill
from opencodegen.serving.scheduler import Delta, Failed, Finished, QueueFull, Scheduler
from serving_helpers import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny"))


def decode_alone(model, ids: list[int], tokens: list[int]) -> torch.Tensor:
    """Logits after each of `tokens`, fed one by one after the prompt `ids` (batch of one)."""
    cache = model.new_cache(1, len(ids) + len(tokens))
    model(torch.tensor([ids]), past_key_values=cache)
    out = [model(torch.tensor([[t]]), past_key_values=cache).logits[0, -1] for t in tokens]
    return torch.stack(out)


@torch.no_grad()
def test_merged_rows_compute_what_they_compute_alone(loaded):
    model, tok = loaded
    a, b, c = tok.encode("def add(a, b):\n    return"), tok.encode("x"), tok.encode("import numpy as np\n")
    feed = {0: [5, 9, 11, 3], 1: [7, 7, 2, 8], 2: [1, 4, 6, 10]}
    batch = RunningBatch(model)
    cache, mask, _ = prefill(model, [a], tok.pad_token_id, room=10)
    batch.add(cache, mask, ["a"], room=10)
    batch.step(torch.tensor([feed[0][0]]))  # row a runs one step alone first
    cache, mask, _ = prefill(model, [b, c], tok.pad_token_id, room=0)  # then b and c join (padded)
    batch.add(cache, mask, ["b", "c"], room=8)
    assert batch.cache.length == len(a) + 1 and batch.cache.max_len - batch.cache.length >= 8
    got = {0: [], 1: [], 2: []}
    for step in range(3):
        logits = batch.step(torch.tensor([feed[0][step + 1], feed[1][step], feed[2][step]]))
        for row in range(3):
            got[row].append(logits[row])
    expected = {0: decode_alone(model, a, feed[0])[1:], 1: decode_alone(model, b, feed[1][:3]),
                2: decode_alone(model, c, feed[2][:3])}  # fmt: skip
    for row in range(3):
        torch.testing.assert_close(torch.stack(got[row]), expected[row], atol=1e-4, rtol=1e-4)

    # a leaves: the columns only it used are cut, and b, c go on unchanged
    batch.keep([1, 2])
    assert batch.rows == ["b", "c"]
    assert batch.cache.length == max(len(b), len(c)) + 3 and bool(batch.mask[:, 0].any())
    logits = batch.step(torch.tensor([feed[1][3], feed[2][3]]))
    torch.testing.assert_close(logits[0], decode_alone(model, b, feed[1])[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1], decode_alone(model, c, feed[2])[-1], atol=1e-4, rtol=1e-4)


def test_merge_pads_with_zeros_not_garbage(loaded):
    model, tok = loaded
    short, long = tok.encode("x"), tok.encode("a much longer prompt here")
    parts = [prefill(model, [p], tok.pad_token_id, room=0)[:2] for p in (short, long)]
    for cache, _ in parts:  # poison the unused capacity: merging must never copy it
        for t in (*cache.keys, *cache.values):
            t[:, :, cache.length :] = float("nan")
    merged, mask = merge_caches(model, parts, room=2)
    pad = len(long) - len(short)
    assert mask.tolist()[0] == [0] * pad + [1] * len(short)
    assert all(bool(t[:, :, : merged.length].isfinite().all()) for t in (*merged.keys, *merged.values))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def collect(job, on_event=None) -> dict[int, str]:
    """The full text of every choice of a job (stream or not)."""
    texts: dict[int, str] = {}
    finished = 0
    while finished < job.choices:
        event = await job.next_event()
        if on_event is not None:
            on_event(event)
        assert not isinstance(event, Failed), event.message
        if isinstance(event, (Delta, Finished)):
            texts[event.index] = texts.get(event.index, "") + event.text
        finished += isinstance(event, Finished)
    return texts


GREEDY = SamplingParams(max_new_tokens=40, temperature=0.0, ignore_eos=True)
SAMPLED = SamplingParams(n=2, max_new_tokens=30, temperature=1.0, top_p=0.9, seed=5)


def test_output_is_the_same_alone_or_joining_a_busy_batch(loaded):
    model, tok = loaded
    scheduler = Scheduler(model, tok, max_batch=8)
    scheduler.start()
    prompts = {"long": tok.encode("class Point:\n"), "x": tok.encode("def add(a, b):\n"), "y": tok.encode("for i")}
    long_params = SamplingParams(max_new_tokens=120, temperature=0.0, ignore_eos=True)

    async def alone():
        return {
            "long": await collect(scheduler.submit([prompts["long"]], long_params)),
            "x": await collect(scheduler.submit([prompts["x"]], GREEDY)),
            "y": await collect(scheduler.submit([prompts["y"]], SAMPLED)),
        }

    async def together():
        started, done = asyncio.Event(), []

        def watch(name):
            def on_event(event):
                started.set()
                if isinstance(event, Finished):
                    done.append(name)

            return on_event

        long_job = scheduler.submit([prompts["long"]], long_params, stream=True)
        long_task = asyncio.ensure_future(collect(long_job, watch("long")))
        await started.wait()  # the long request is decoding: the others join its batch mid-flight
        x = asyncio.ensure_future(collect(scheduler.submit([prompts["x"]], GREEDY, stream=True), watch("x")))
        y = asyncio.ensure_future(collect(scheduler.submit([prompts["y"]], SAMPLED), watch("y")))
        results = {"x": await x, "y": await y, "long": await long_task}
        return results, done

    try:
        expected = run(alone())
        got, done = run(together())
    finally:
        scheduler.stop()
    assert got == expected
    assert done[-1] == "long" and set(done[:-1]) == {"x", "y"}  # they joined and left while it ran
    assert len(expected["y"]) == 2 and expected["y"][0] != expected["y"][1]
    assert all(len(text) > 10 for texts in expected.values() for text in texts.values())


def test_n_samples_share_one_prefill_and_cancellation_frees_slots(loaded):
    model, tok = loaded
    scheduler = Scheduler(model, tok, max_batch=4, max_queue=1)
    scheduler.start()
    prompt = tok.encode("def add(a, b):\n    return a + b\n")
    long = SamplingParams(max_new_tokens=400, temperature=1.0, seed=1, ignore_eos=True)

    async def scenario():
        job = scheduler.submit([prompt], SamplingParams(n=4, max_new_tokens=3, temperature=1.0, seed=2))
        await collect(job)
        assert scheduler.metrics.prompt_tokens == len(prompt)  # one prefill for the 4 samples
        running = scheduler.submit([prompt], dataclasses.replace(long, n=4), stream=True)
        await running.next_event()  # decoding, the batch is full
        waiting = scheduler.submit([prompt], long)
        assert scheduler.queue_depth == 1
        with pytest.raises(QueueFull):
            scheduler.submit([prompt], long)
        waiting.cancel()  # leaves the queue at once
        assert scheduler.queue_depth == 0
        running.cancel()  # its 4 rows leave the batch at the next step
        small = scheduler.submit([prompt], SamplingParams(max_new_tokens=2, temperature=0.0))
        await collect(small)

    try:
        run(scenario())
        # the cancelled rows left long before their 400 tokens each; nothing is left running
        assert scheduler.metrics.running_sequences == 0 and scheduler.metrics.generated_tokens < 400
    finally:
        scheduler.stop()


def test_a_failing_step_fails_its_requests_and_the_scheduler_goes_on(loaded, monkeypatch):
    model, tok = loaded
    scheduler = Scheduler(model, tok, max_batch=4)
    scheduler.start()
    real_step = RunningBatch.step

    def broken(self, tokens):
        monkeypatch.setattr(RunningBatch, "step", real_step)  # fails once
        raise RuntimeError("device lost")

    async def scenario():
        monkeypatch.setattr(RunningBatch, "step", broken)
        job = scheduler.submit([tok.encode("x")], GREEDY)
        event = await job.next_event()
        assert isinstance(event, Failed) and "device lost" in event.message
        return await collect(scheduler.submit([tok.encode("x")], SamplingParams(max_new_tokens=3, temperature=0)))

    try:
        assert len(run(scenario())) == 1
    finally:
        scheduler.stop()


def test_stop_fails_what_is_left(loaded):
    model, tok = loaded
    scheduler = Scheduler(model, tok, max_batch=1)
    scheduler.start()

    async def scenario():
        running = scheduler.submit([tok.encode("x")], SamplingParams(max_new_tokens=400, temperature=1.0,
                                                                      ignore_eos=True), stream=True)  # fmt: skip
        queued = scheduler.submit([tok.encode("y")], GREEDY)
        await running.next_event()
        await asyncio.get_running_loop().run_in_executor(None, scheduler.stop)
        events = [await queued.next_event()]
        while not isinstance(events[-1], Failed):
            events.append(await running.next_event())
        return events[0], events[-1]

    queued_event, running_event = run(scenario())
    assert isinstance(queued_event, Failed) and "shutting down" in queued_event.message
    assert isinstance(running_event, Failed)
