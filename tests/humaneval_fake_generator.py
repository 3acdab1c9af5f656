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


class FakeGenerator:
    def __init__(self, problems: list[he.Problem], delay: float = 0.0):
        self.by_prompt = {p.prompt: p for p in problems}
        self.delay = delay
        self.calls = 0

    def encode(self, prompts):
        return [prompt.split() for prompt in prompts]  # one "token" per word: enough to weigh the shards

    def generate(self, prompts, params, progress=None, *, keys, first_sample=0):
        self.calls += 1
        time.sleep(self.delay)
        (prompt,), (key,) = prompts, keys
        problem = self.by_prompt[prompt]
        completions = []
        for j in range(first_sample, first_sample + params.n):
            draw = hashlib.sha256(f"{params.seed}-{key}-{j}".encode()).digest()[0]
            completions.append(FakeCompletion(problem.canonical_solution if draw % 3 else WRONG))
            if progress is not None:
                progress(1)
        return [completions]


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
