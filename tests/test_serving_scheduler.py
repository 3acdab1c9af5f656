"""Continuous batching: a request's output is the same whether it ran alone or joined a busy batch;
n samples share one prefill; cancellation frees queue and batch slots; a failing step fails only
its requests. (The running batch itself is tested in test_generation_running_batch.py.)"""

import asyncio
import dataclasses

import pytest

from generation_helpers import one_thread  # noqa: F401 (fixture)
from opencodegen.generation import SamplingParams
from opencodegen.generation.running_batch import RunningBatch
from opencodegen.serving.scheduler import Delta, Failed, Finished, QueueFull, Scheduler
from serving_helpers import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny"))


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
                                                                      ignore_eos=True), stream=True)
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


def test_rows_of_one_prompt_share_its_cache_and_give_what_copies_give(loaded):
    """On CPU a request with n > 1 joining a busy batch turns it into one that keeps each prompt once;
    every choice is what the batch of copied prompts gives."""
    model, tok = loaded
    requests = [([tok.encode("class Point:\n")], SamplingParams(max_new_tokens=40, temperature=0.0, ignore_eos=True)),
                ([tok.encode("def add(a, b):\n"), tok.encode("x")], SamplingParams(n=3, max_new_tokens=24,
                                                                                    temperature=1.0, seed=8)),
                ([tok.encode("for i")], SamplingParams(n=2, max_new_tokens=16, temperature=0.7, seed=9, logprobs=1))]

    def outputs(share_prefix):
        scheduler = Scheduler(model, tok, max_batch=8, share_prefix=share_prefix)
        shared, admitted = [], asyncio.Event()
        scheduler.step_hook = lambda: shared.append(scheduler._batch.shared)

        async def scenario():
            scheduler.start()
            first = scheduler.submit(*requests[0], stream=True)
            texts = [asyncio.ensure_future(collect(first, lambda event: admitted.set()))]
            await admitted.wait()  # the first request is decoding: the others join its batch
            texts += [asyncio.ensure_future(collect(scheduler.submit(*r))) for r in requests[1:]]
            return [await t for t in texts]

        try:
            return run(scenario()), shared
        finally:
            scheduler.stop()

    copied, never = outputs(False)
    kept, shared = outputs(True)
    assert kept == copied and not any(never) and any(shared)
