"""A duck-typed stand-in for opencodegen.generation.Generator in HumanEval tests.

Each completion is the canonical solution or a wrong body, decided by (seed, row key, sample
index) as the real engine's randomness is. Run as a script, it runs one HumanEval rank:
`python humaneval_fake_generator.py '<json settings>'`, printing the summary as JSON.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from opencodegen.evaluation import humaneval as he

WRONG = "    return None\n"


@dataclass
class FakeCompletion:
    text: str
    finish_reason: str = "stop"


@dataclass
class FakeEvent:
    prompt_index: int
    index: int
    completion: FakeCompletion


class FakeGenerator:
    """Token ids are the prompts' indices among the problems; `delay` seconds pass before each completion."""

    def __init__(self, problems: list[he.Problem], delay: float = 0.0):
        self.problems = problems
        self.by_prompt = {p.prompt: i for i, p in enumerate(problems)}
        self.delay = delay
        self.calls = 0
        self.drawn = 0

    def encode(self, prompts):
        # the problem's index, then one "token" per word: enough to weigh the shards
        return [[self.by_prompt[prompt], *prompt.split()] for prompt in prompts]

    def stream_work(self, work, params):
        self.calls += 1
        for p, item in enumerate(work):
            problem = self.problems[item.ids[0]]
            for index, j in enumerate(item.samples):
                time.sleep(self.delay)
                self.drawn += 1
                draw = hashlib.sha256(f"{params.seed}-{item.key}-{j}".encode()).digest()[0]
                yield FakeEvent(p, index, FakeCompletion(problem.canonical_solution if draw % 3 else WRONG))


def settings_for(problems: list[he.Problem], *, n: int, temperatures: list[float], seed: int, limit: int,
                 batch_size: int, world: int = 1) -> he.Settings:
    return he.Settings(mode="model", source="fake", problems_file=None, limit=limit,
                       problems=he.problems_digest(problems), n=n, temperatures=temperatures, seed=seed,
                       batch_size=batch_size, world=world)


def main(spec: dict) -> None:
    problems = he.load_problems(limit=spec["limit"])
    settings = settings_for(problems, n=spec["n"], temperatures=spec["temperatures"], seed=spec["seed"],
                            limit=spec["limit"], batch_size=spec["batch_size"], world=spec["world"])
    options = he.RunOptions(out=Path(spec["out"]), ks=(1, 2, 5), workers=1, rank=spec["rank"], world=spec["world"],
                            progress=False, wait_poll_s=0.1)
    summary = he.run_with_generator(FakeGenerator(problems, spec["delay"]), problems, settings, options)
    print(json.dumps(summary))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
