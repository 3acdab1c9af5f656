"""Prompt perplexity on MTPB (the paper's analysis): how well the model predicts the turn
prompts, given the history, when they are interleaved with code (multi-turn) versus written
all at once before any code (single-turn).

For one test case the text is tokenized once and one forward pass gives the negative log
likelihood of every token; only the tokens of the `# prompt` comments are counted (a token
that straddles a boundary counts with the prompt). A problem's perplexity is
exp(total NLL / total prompt tokens) over its test cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from opencodegen.errors import GenerationError
from opencodegen.evaluation.mtpb.data import Problem
from opencodegen.synthesis.history import PREFIX, turn_prompt


def multi_turn_segments(turns: Sequence[str], completions: Sequence[str]) -> list[tuple[str, bool]]:
    """(text, is_prompt) pieces of a multi-turn program."""
    segments = [(PREFIX, False)]
    for prompt, completion in zip(turns, completions):
        segments += [(turn_prompt(prompt), True), (completion + "\n\n", False)]
    return segments


def single_turn_segments(turns: Sequence[str]) -> list[tuple[str, bool]]:
    """(text, is_prompt) pieces of the single-turn prompt."""
    return [(PREFIX, False)] + [(turn_prompt(prompt), True) for prompt in turns]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prompt_token_mask(tokenizer: Any, segments: Sequence[tuple[str, bool]]) -> tuple[list[int], list[bool]]:
    """The token ids of the joined text and, per token, whether it belongs to a prompt."""
    text = "".join(s for s, _ in segments)
    ids = tokenizer.encode(text)
    mask = [False] * len(ids)
    offset = 0
    starts = []
    for segment, _ in segments:
        starts.append(_common_prefix(tokenizer.encode(text[:offset]), ids) if offset else 0)
        offset += len(segment)
    starts.append(len(ids))
    for k, (_, scored) in enumerate(segments):
        if scored:
            for i in range(starts[k], starts[k + 1]):
                mask[i] = True
    return ids, mask


def prompt_nll(model: Any, ids: Sequence[int], mask: Sequence[bool]) -> tuple[float, int]:
    """Total NLL (nats) of the masked tokens given everything before them, and their count."""
    import torch

    limit = getattr(getattr(model, "config", None), "n_positions", None)
    if limit is not None and len(ids) > limit:
        raise GenerationError(f"{len(ids)} tokens exceed the model's context of {limit}")
    device = next(model.parameters()).device
    input_ids = torch.tensor([list(ids)], dtype=torch.long, device=device)
    with torch.no_grad():
        logits = model(input_ids).logits[0, :-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    targets = input_ids[0, 1:]
    token_nll = -logp.gather(1, targets[:, None])[:, 0]
    keep = torch.tensor(list(mask[1:]), dtype=torch.bool, device=device)
    return float(token_nll[keep].sum()), int(keep.sum())


def problem_perplexity(
    model: Any,
    tokenizer: Any,
    problem: Problem,
    completions: dict[int, Sequence[str]],
) -> dict[str, Any]:
    """Multi- and single-turn prompt perplexity of one problem.

    `completions[test]` are the code turns of a multi-turn program for that test case;
    test cases without them, or too long for the model, are skipped (and counted).
    """
    totals = {"multi": [0.0, 0], "single": [0.0, 0]}
    skipped = 0
    for test in problem.tests:
        if test not in completions:
            skipped += 1
            continue
        turns = problem.turns(test)
        try:
            pieces = {
                "multi": prompt_token_mask(tokenizer, multi_turn_segments(turns, completions[test])),
                "single": prompt_token_mask(tokenizer, single_turn_segments(turns)),
            }
            results = {mode: prompt_nll(model, *pieces[mode]) for mode in pieces}
        except GenerationError:
            skipped += 1
            continue
        for mode, (nll, count) in results.items():
            totals[mode][0] += nll
            totals[mode][1] += count
    out: dict[str, Any] = {"name": problem.name, "category": problem.category, "skipped_tests": skipped}
    for mode, (nll, count) in totals.items():
        out[mode] = math.exp(nll / count) if count else None
        out[f"{mode}_tokens"] = count
    return out
