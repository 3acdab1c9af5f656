"""Writing MTPB programs with a model, multi-turn (the reference protocol) or single-turn.

Multi-turn, per test case and sample (all 5 x n histories of a turn go in one generate call):

    history = PREFIX
    for prompt in turns:
        completion = truncate_codegen(sample(history + "# " + prompt + "\\n", max_gen_length))
        history += "# " + prompt + "\\n" + completion + "\\n\\n"

Single-turn (a reconstruction, see mtpb.SINGLE_TURN_NOTE): one generation after all turn
comments with the summed budget; the completion is kept as generated (the CodeGen
truncation would cut a whole program after its first step).

Randomness: sample s of test case t of problem p draws, at turn k, from the engine's stream of
(seed, "p|test=t|turn=k", s) (`stream_key`), so two samples whose histories agree after a turn
still diverge later, every sample is reproducible from the seed alone, and a resumed run redraws
exactly the samples it lost.

The model's context bounds both: a budget never exceeds what is left after the prompt (at
least a quarter of the context), and a history longer than that is cut from the left (the
reference sampler would stop with an assertion there). Records keep the budget used.
With a `protocol`, completions get its text handling (e.g. the 4.16.2 decode clean-up under
``codegen-release``) before they join the history, as in the script it restates.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from opencodegen.evaluation.mtpb.data import Problem, single_turn_budget, single_turn_prompt
from opencodegen.evaluation.protocols import Protocol
from opencodegen.synthesis.history import PREFIX, append_turn, turn_prompt


def _context(generator: Any) -> int | None:
    config = getattr(getattr(generator, "model", None), "config", None)
    return getattr(config, "n_positions", None)


def _budget(generator: Any, prompts: list[str], wanted: int) -> int:
    """`wanted` new tokens, or fewer when the longest prompt leaves less room in the context."""
    context = _context(generator)
    tokenizer = getattr(generator, "tokenizer", None)
    if context is None or tokenizer is None:
        return wanted
    longest = max(len(ids) for ids in tokenizer.encode_batch(prompts))
    return max(1, min(wanted, max(context - longest, context // 4)))


def stream_key(problem: Problem, test: int, turn: int | str) -> str:
    """The engine's row key of test case `test` of `problem` at `turn` ("single" for single-turn);
    with the run's seed and the sample index it fixes a sample's random stream."""
    return f"{problem.id}|test={test}|turn={turn}"


def _finished(outputs: list[list[Any]], protocol: Protocol | None, truncate: str | None) -> list[list[Any]]:
    """`outputs` of one generate call with each completion's text as `protocol` hands it on."""
    if protocol is None:
        return outputs
    return [[dataclasses.replace(c, text=protocol.finish(c.text, truncate)) for c in row] for row in outputs]


def generate_multi_turn(
    generator: Any, problem: Problem, params: Any, protocol: Protocol | None = None
) -> list[dict[str, Any]]:
    """params.n samples per test case of one problem, as sample records (one per program)."""
    tests = list(problem.tests)
    turns = {t: problem.turns(t) for t in tests}
    # states: (test, sample, history so far, completions, finish reasons)
    states: list[tuple[int, int, str, list[str], list[str]]] = []
    budgets: list[int] = []
    for turn in range(problem.n_turns):
        if turn == 0:  # one prompt per test case, its n samples drawn together
            prompts = [PREFIX + turn_prompt(turns[t][0]) for t in tests]
            keys, samples, n = [stream_key(problem, t, 0) for t in tests], [0] * len(tests), params.n
        else:  # one prompt per (test case, sample): each history goes on with its own sample's stream
            prompts = [history + turn_prompt(turns[t][turn]) for t, _, history, _, _ in states]
            keys, samples, n = [stream_key(problem, t, turn) for t, *_ in states], [s for _, s, *_ in states], 1
        step = dataclasses.replace(
            params,
            n=n,
            max_new_tokens=_budget(generator, prompts, problem.max_gen_length),
            truncate="codegen",
            truncate_prompt=True,
        )
        budgets.append(step.max_new_tokens)
        outputs = generator.generate(prompts, step, keys=keys, first_sample=samples)
        outputs = _finished(outputs, protocol, step.truncate)
        if turn == 0:
            states = [
                (t, s, append_turn(PREFIX, turns[t][0], c.text), [c.text], [c.finish_reason])
                for t, completions in zip(tests, outputs)
                for s, c in enumerate(completions)
            ]
        else:
            states = [
                (t, s, append_turn(history, turns[t][turn], c.text), texts + [c.text], reasons + [c.finish_reason])
                for (t, s, history, texts, reasons), (c,) in zip(states, outputs)
            ]
    return [
        {"mode": "multi", "id": problem.id, "test": t, "sample": s, "program": history,
         "completions": texts, "finish_reasons": reasons, "max_new_tokens": budgets}
        for t, s, history, texts, reasons in states
    ]


def generate_single_turn(
    generator: Any, problem: Problem, params: Any, protocol: Protocol | None = None
) -> list[dict[str, Any]]:
    """params.n single-turn programs per test case of one problem (reconstruction)."""
    tests = list(problem.tests)
    prompts = [single_turn_prompt(problem, t) for t in tests]
    step = dataclasses.replace(
        params,
        max_new_tokens=_budget(generator, prompts, single_turn_budget(problem)),
        truncate=None,
        truncate_prompt=True,
    )
    outputs = generator.generate(prompts, step, keys=[stream_key(problem, t, "single") for t in tests])
    outputs = _finished(outputs, protocol, step.truncate)
    return [
        {"mode": "single", "id": problem.id, "test": t, "sample": s, "program": prompt + c.text,
         "completions": [c.text], "finish_reasons": [c.finish_reason], "max_new_tokens": [step.max_new_tokens]}
        for t, prompt, completions in zip(tests, prompts, outputs)
        for s, c in enumerate(completions)
    ]


GENERATORS = {"multi": generate_multi_turn, "single": generate_single_turn}
