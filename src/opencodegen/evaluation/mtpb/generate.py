"""Writing MTPB programs with a model, multi-turn (the reference protocol) or single-turn.

Multi-turn, per test case and sample (the histories of all the problems given at one turn go in
one generate call per token budget, where they stream through the engine's running batch):

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

The model's context bounds both: a prompt's budget never exceeds what is left after it (at
least a quarter of the context), and a history longer than that is cut from the left (the
reference sampler would stop with an assertion there). Records keep the budget used.
With a `protocol`, completions get its text handling (e.g. the 4.16.2 decode clean-up under
``codegen-release``) before they join the history, as in the script it restates.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from opencodegen.evaluation.mtpb.data import Problem, single_turn_budget, single_turn_prompt
from opencodegen.evaluation.protocols import Protocol
from opencodegen.synthesis.history import PREFIX, append_turn, turn_prompt


def _context(generator: Any) -> int | None:
    config = getattr(getattr(generator, "model", None), "config", None)
    return getattr(config, "n_positions", None)


def _budgets(generator: Any, prompts: list[str], wanted: list[int]) -> list[int]:
    """Each prompt's `wanted` new tokens, or fewer when the prompt leaves less room in the context."""
    context = _context(generator)
    tokenizer = getattr(generator, "tokenizer", None)
    if context is None or tokenizer is None:
        return list(wanted)
    lengths = [len(ids) for ids in tokenizer.encode_batch(prompts)]
    return [max(1, min(w, max(context - length, context // 4))) for w, length in zip(wanted, lengths)]


def stream_key(problem: Problem, test: int, turn: int | str) -> str:
    """The engine's row key of test case `test` of `problem` at `turn` ("single" for single-turn);
    with the run's seed and the sample index it fixes a sample's random stream."""
    return f"{problem.id}|test={test}|turn={turn}"


@dataclasses.dataclass
class _Prompt:
    """One prompt of a turn: its text, random stream (key, first sample), rows and budget."""

    text: str
    key: str
    first: int
    n: int
    budget: int


def _complete(
    generator: Any, prompts: list[_Prompt], params: Any, truncate: str | None, protocol: Protocol | None
) -> list[list[Any]]:
    """Completions of every prompt (`n` each), in order, the texts as `protocol` hands them on: one
    generate call per budget (all prompts of a turn when they share one) with `truncate`."""
    by_budget: dict[int, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        by_budget[prompt.budget, prompt.n].append(i)
    outputs: list[list[Any]] = [[] for _ in prompts]
    for (budget, n), indices in by_budget.items():
        step = dataclasses.replace(params, n=n, max_new_tokens=budget, truncate=truncate, truncate_prompt=True)
        got = generator.generate([prompts[i].text for i in indices], step, keys=[prompts[i].key for i in indices],
                                 first_sample=[prompts[i].first for i in indices])
        for i, completions in zip(indices, got):
            outputs[i] = completions if protocol is None else [
                dataclasses.replace(c, text=protocol.finish(c.text, truncate)) for c in completions]
    return outputs


def generate_multi_turn(
    generator: Any, problems: Sequence[Problem], params: Any, protocol: Protocol | None = None
) -> list[dict[str, Any]]:
    """params.n samples per test case of each problem, as sample records (one per program); each turn
    of all the problems goes in one generate call per budget."""
    # (problem, test, sample) -> [history so far, completions, finish reasons, budgets]
    states: dict[tuple[int, int, int], list[Any]] = {}
    for turn in range(max((p.n_turns for p in problems), default=0)):
        if turn == 0:  # one prompt per test case, its n samples drawn together
            rows = [(i, t, None) for i, p in enumerate(problems) for t in p.tests]
            texts = [PREFIX + turn_prompt(problems[i].turns(t)[0]) for i, t, _ in rows]
        else:  # one prompt per (test case, sample): each history goes on with its own sample's stream
            rows = [key for key in states if problems[key[0]].n_turns > turn]
            texts = [states[i, t, s][0] + turn_prompt(problems[i].turns(t)[turn]) for i, t, s in rows]
        budgets = _budgets(generator, texts, [problems[i].max_gen_length for i, _, _ in rows])
        prompts = [_Prompt(text, stream_key(problems[i], t, turn), s or 0, params.n if s is None else 1, budget)
                   for (i, t, s), text, budget in zip(rows, texts, budgets)]
        outputs = _complete(generator, prompts, params, "codegen", protocol)
        for (i, t, s), prompt, completions in zip(rows, prompts, outputs):
            turn_text = problems[i].turns(t)[turn]
            for sample, c in enumerate(completions) if s is None else [(s, completions[0])]:
                history, done, reasons, used = states.get((i, t, sample), (PREFIX, [], [], []))
                states[i, t, sample] = [append_turn(history, turn_text, c.text), done + [c.text],
                                        reasons + [c.finish_reason], used + [prompt.budget]]
    return [
        {"mode": "multi", "id": problems[i].id, "test": t, "sample": s, "program": history,
         "completions": texts, "finish_reasons": reasons, "max_new_tokens": budgets}
        for (i, t, s), (history, texts, reasons, budgets) in sorted(states.items())
    ]


def generate_single_turn(
    generator: Any, problems: Sequence[Problem], params: Any, protocol: Protocol | None = None
) -> list[dict[str, Any]]:
    """params.n single-turn programs per test case of each problem (reconstruction)."""
    rows = [(p, t) for p in problems for t in p.tests]
    texts = [single_turn_prompt(p, t) for p, t in rows]
    budgets = _budgets(generator, texts, [single_turn_budget(p) for p, _ in rows])
    prompts = [_Prompt(text, stream_key(p, t, "single"), 0, params.n, budget)
               for (p, t), text, budget in zip(rows, texts, budgets)]
    outputs = _complete(generator, prompts, params, None, protocol)
    return [
        {"mode": "single", "id": p.id, "test": t, "sample": s, "program": prompt.text + c.text,
         "completions": [c.text], "finish_reasons": [c.finish_reason], "max_new_tokens": [prompt.budget]}
        for (p, t), prompt, completions in zip(rows, prompts, outputs)
        for s, c in enumerate(completions)
    ]


GENERATORS = {"multi": generate_multi_turn, "single": generate_single_turn}
