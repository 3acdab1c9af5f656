"""Independent, reproducible samples in the evaluations: every HumanEval sample and every MTPB turn
of every sample draws from its own stream, fixed by the seed alone (a tiny real model)."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from generation_helpers import make_model_dir, one_thread  # noqa: F401 (fixture)
from mtpb_helpers import mtpb_path
from opencodegen import load
from opencodegen.evaluation import humaneval as he
from opencodegen.evaluation.mtpb import run as mtpb_run
from opencodegen.evaluation.mtpb.data import load_mtpb
from opencodegen.generation import Generator, SamplingParams
from opencodegen.io import ResultStore
from opencodegen.synthesis.history import PREFIX

pytestmark = pytest.mark.usefixtures("one_thread")

HOT = SamplingParams(n=4, temperature=1.0, top_p=1.0, seed=3)


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    return Generator(*load(str(make_model_dir(tmp_path_factory.mktemp("tiny") / "model"))))


class AgreeingFirstTurn:
    """The real engine, except that every sample of turn 1 writes the same code: the n histories of
    a test case are copies after turn 1, as when a model is near-certain of its first step."""

    def __init__(self, engine: Generator):
        self.engine, self.model, self.tokenizer = engine, engine.model, engine.tokenizer

    def generate(self, prompts, params, progress=None, **streams):
        if all(prompt.startswith(PREFIX) and prompt.count("\n# ") == 1 for prompt in prompts):
            return [[self.engine.generate(["x = 1\n"], params)[0][0]] * params.n for _ in prompts]
        return self.engine.generate(prompts, params, progress, **streams)


def _records(path):
    return sorted((json.loads(line) for line in path.read_text().splitlines()),
                  key=lambda r: (r["id"], r["test"], r["sample"]))


def test_mtpb_samples_that_agree_after_turn_1_still_diverge(generator, tmp_path):
    benchmark = load_mtpb(mtpb_path())
    problems = [benchmark.by_id()["3"]]  # three turns
    forced = AgreeingFirstTurn(generator)
    records = mtpb_run.generate(problems, forced, HOT, "multi", tmp_path / "a")
    assert len(records) == 5 * 4
    for test in problems[0].tests:
        samples = [r for r in records if r["test"] == test]
        assert len({r["completions"][0] for r in samples}) == 1  # turn 1: copies
        assert len({tuple(r["completions"][1:]) for r in samples}) == 4  # later turns: four different samples
    # the same seed reproduces every sample; another seed does not
    again = mtpb_run.generate(problems, forced, HOT, "multi", tmp_path / "b")
    assert _records(tmp_path / "a" / "samples_multi.jsonl") == _records(tmp_path / "b" / "samples_multi.jsonl")
    assert sorted(r["program"] for r in again) == sorted(r["program"] for r in records)
    other = mtpb_run.generate(problems, forced, SamplingParams(n=4, temperature=1.0, top_p=1.0, seed=4), "multi",
                              tmp_path / "c")
    assert sorted(r["program"] for r in other) != sorted(r["program"] for r in records)


def test_a_resumed_mtpb_run_redraws_the_samples_it_lost(generator, tmp_path):
    problems = [load_mtpb(mtpb_path()).by_id()["3"]]
    params = SamplingParams(n=3, temperature=0.8, top_p=0.95, seed=5)
    mtpb_run.generate(problems, generator, params, "multi", tmp_path / "full")
    mtpb_run.generate(problems, generator, params, "single", tmp_path / "full")
    for mode in ("multi", "single"):
        lines = (tmp_path / "full" / f"samples_{mode}.jsonl").read_text().splitlines(keepends=True)
        cut = tmp_path / "cut" / f"samples_{mode}.jsonl"
        cut.parent.mkdir(exist_ok=True)
        cut.write_text("".join(lines[::2]))  # every other sample lost
        mtpb_run.generate(problems, generator, params, mode, tmp_path / "cut")
        assert _records(cut) == _records(tmp_path / "full" / f"samples_{mode}.jsonl")


def _humaneval_samples(generator, problems, out, cap, seed=7):
    """The samples of a run with at most `cap` rows in the running batch."""
    store = ResultStore(out / "samples.jsonl", he.KEY)
    default, generator.max_batch_size = generator.max_batch_size, cap
    try:
        he.generate_samples(generator, problems, store, n=4, temperatures=[0.8, 1.0], top_p=0.95, max_new_tokens=8,
                            seed=seed, progress=False)
    finally:
        generator.max_batch_size = default
    return sorted(store.records, key=lambda r: (r["task_id"], r["temperature"], r["sample"]))


TOY = [he.Problem(f"Toy/{i}", prompt, "", "f") for i, prompt in
       enumerate(["def add(a, b):\n    ", "import numpy as np\n", "def add(a, b):\n    "])]


def test_humaneval_samples_are_reproducible_whatever_the_batch_size(generator, tmp_path):
    whole = _humaneval_samples(generator, TOY, tmp_path / "whole", cap=64)
    assert _humaneval_samples(generator, TOY, tmp_path / "again", cap=64) == whole
    assert _humaneval_samples(generator, TOY, tmp_path / "split", cap=3) == whole
    assert _humaneval_samples(generator, TOY, tmp_path / "ones", cap=1) == whole
    # identical prompts under different task ids, and the two temperatures, draw different samples
    texts = defaultdict(list)
    for r in whole:
        texts[r["task_id"], r["temperature"]].append(r["completion"])
    assert texts[("Toy/0", 1.0)] != texts[("Toy/2", 1.0)]
    assert texts[("Toy/0", 0.8)] != texts[("Toy/0", 1.0)] and len(set(texts[("Toy/0", 1.0)])) > 1
    other = _humaneval_samples(generator, TOY, tmp_path / "other", cap=64, seed=8)
    assert [r["completion"] for r in other] != [r["completion"] for r in whole]
    # a resumed run redraws what it lost: keep every third sample, resume
    cut = tmp_path / "cut" / "samples.jsonl"
    cut.parent.mkdir()
    cut.write_text("".join(line for i, line in enumerate((tmp_path / "whole" / "samples.jsonl").read_text()
                                                         .splitlines(keepends=True)) if i % 3 == 0))
    assert _humaneval_samples(generator, TOY, tmp_path / "cut", cap=2) == whole


class Killed(Exception):
    pass


class DiesAfter:
    """The real engine, killed after `limit` completions of one run; counts the rows each run draws."""

    def __init__(self, engine: Generator, limit: int | None):
        self.engine, self.tokenizer, self.limit, self.drawn = engine, engine.tokenizer, limit, 0
        self.encode = engine.encode

    @property
    def max_batch_size(self):
        return self.engine.max_batch_size

    @max_batch_size.setter
    def max_batch_size(self, value):
        self.engine.max_batch_size = value

    def stream_work(self, work, params):
        self.drawn += sum(len(w.samples) for w in work)
        for event in self.engine.stream_work(work, params):
            if event.completion is not None and self.limit is not None:
                self.limit -= 1
                if self.limit < 0:
                    raise Killed
            yield event


def test_a_humaneval_run_killed_mid_batch_resumes_with_only_the_missing_samples(generator, tmp_path):
    whole = _humaneval_samples(generator, TOY, tmp_path / "whole", cap=5)
    dying = DiesAfter(generator, limit=7)
    with pytest.raises(Killed):
        _humaneval_samples(dying, TOY, tmp_path / "killed", cap=5)
    kept = (tmp_path / "killed" / "samples.jsonl").read_text().splitlines()
    assert len(kept) == 7  # written as they completed, while the batch still held other rows
    resumed = DiesAfter(generator, limit=None)
    assert _humaneval_samples(resumed, TOY, tmp_path / "killed", cap=5) == whole
    assert resumed.drawn == len(whole) - 7


def test_mtpb_samples_are_the_same_whatever_the_window_and_batch(generator, tmp_path):
    """Problems generated together (one call per turn and budget, rows streaming through one batch)
    give the samples each problem gives alone in a batch of one row."""
    by_id = load_mtpb(mtpb_path()).by_id()
    problems = [by_id["3"], by_id["1"]]  # three and five turns
    # no nucleus cut: a batch's float rounding could move a token across it (the tiny model's long,
    # nearly flat distributions make that likely over many turns; it is no property of the batching)
    params = SamplingParams(n=2, temperature=0.8, top_p=1.0, seed=6)
    default = generator.max_batch_size
    try:
        for mode in ("multi", "single"):
            generator.max_batch_size = 64  # one window: both problems at every turn
            together = mtpb_run.generate(problems, generator, params, mode, tmp_path / "together")
            generator.max_batch_size = 1  # one problem per window, one row per batch
            mtpb_run.generate(problems, generator, params, mode, tmp_path / "alone")
            assert len(together) == 2 * 5 * 2
            assert _records(tmp_path / "together" / f"samples_{mode}.jsonl") == _records(
                tmp_path / "alone" / f"samples_{mode}.jsonl")
    finally:
        generator.max_batch_size = default
