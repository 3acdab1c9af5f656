"""Named evaluation protocols: how `eval humaneval` and `eval mtpb` sample, cut and clean completions.

Each protocol restates one published evaluation script (docs/evaluation.md gives file and line):
``codegen-release`` (salesforce/CodeGen's mtpb_sample.py and jaxformer/hf/sample.py under the
transformers 4.16.2 they pin), ``human-eval`` (Codex's HumanEval protocol) and ``bigcode``
(bigcode-evaluation-harness's ``humaneval`` task). MTPB's turn structure, truncation and budgets
come from the benchmark itself; a protocol contributes its sampler and text handling there.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from opencodegen.errors import ConfigError

#: transformers 4.16.2 ``clean_up_tokenization``'s replacements, applied in this order, each to the
#: whole text (``batch_decode`` runs it unless told ``clean_up_tokenization_spaces=False``).
CLEAN_UP_REPLACEMENTS: tuple[tuple[str, str], ...] = (
    (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
    (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
)


def clean_up_tokenization(text: str) -> str:
    """`text` as transformers 4.16.2's decode clean-up leaves it (``' '.join`` becomes ``''.join``)."""
    for old, new in CLEAN_UP_REPLACEMENTS:
        text = text.replace(old, new)
    return text


@dataclass(frozen=True)
class Protocol:
    """One protocol's settings. The HumanEval budget is `new_tokens` generated tokens, or (when
    `total_tokens` is set) prompt plus completion at most `total_tokens` tokens."""

    name: str
    top_p: float
    top_k: int  # 0 = off
    truncate: str | None  # HumanEval completions: a stopping.TRUNCATE_PRESETS name or None
    stop: tuple[str, ...]  # HumanEval stop strings besides the truncation preset's
    new_tokens: int | None
    total_tokens: int | None
    strip_prompt: bool  # HumanEval prompt without its surrounding whitespace
    clean_up: bool  # completions pass through transformers 4.16.2's decode clean-up
    mtpb: bool  # whether the protocol has an MTPB form

    def prompt(self, prompt: str) -> str:
        """The HumanEval prompt the model continues (and the program starts with)."""
        return prompt.strip() if self.strip_prompt else prompt

    def budget(self, prompt_tokens: int) -> int:
        """New tokens for a prompt of `prompt_tokens` tokens (0 or less: nothing fits)."""
        return self.total_tokens - prompt_tokens if self.total_tokens is not None else self.new_tokens

    def finish(self, text: str, truncate: str | None) -> str:
        """A completion the engine cut with `truncate` as the protocol's script saw it: the decode
        clean-up first, then CodeGen's truncation again (the clean-up can start a line with ''')."""
        if not self.clean_up:
            return text
        from opencodegen.generation.stopping import truncate_codegen  # the package imports torch

        text = clean_up_tokenization(text)
        return truncate_codegen(text) if truncate == "codegen" else text


CODEGEN_RELEASE = Protocol(
    name="codegen-release", top_p=0.95, top_k=50, truncate="codegen", stop=(), new_tokens=128,
    total_tokens=None, strip_prompt=False, clean_up=True, mtpb=True,
)
#: The new-token budget fits the longest canonical solution (benchmarks/humaneval_budget.py).
HUMAN_EVAL = Protocol(
    name="human-eval", top_p=0.95, top_k=0, truncate="humaneval", stop=(), new_tokens=384,
    total_tokens=None, strip_prompt=False, clean_up=False, mtpb=True,
)
BIGCODE = Protocol(
    name="bigcode", top_p=0.95, top_k=0, truncate=None,
    stop=("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```", "<file_sep>", "<|endoftext|>"),
    new_tokens=None, total_tokens=512, strip_prompt=True, clean_up=False, mtpb=False,
)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (CODEGEN_RELEASE, HUMAN_EVAL, BIGCODE)}
DEFAULT_HUMANEVAL = HUMAN_EVAL.name
DEFAULT_MTPB = CODEGEN_RELEASE.name


def get_protocol(name: str, benchmark: str = "humaneval") -> Protocol:
    """The protocol called `name`; ConfigError when unknown or without a form for `benchmark`."""
    protocol = PROTOCOLS.get(name)
    if protocol is None:
        raise ConfigError(f"unknown protocol {name!r}; use one of {', '.join(PROTOCOLS)}")
    if benchmark == "mtpb" and not protocol.mtpb:
        usable = ", ".join(p.name for p in PROTOCOLS.values() if p.mtpb)
        raise ConfigError(f"protocol {name!r} has no MTPB form (its harness has no MTPB task); use {usable}")
    return protocol


def add_protocol_argument(parser: argparse.ArgumentParser, benchmark: str) -> None:
    """`--protocol NAME` on an eval command; its default is the benchmark's (see docs/evaluation.md)."""
    names = [p.name for p in PROTOCOLS.values() if benchmark != "mtpb" or p.mtpb]
    default = DEFAULT_MTPB if benchmark == "mtpb" else DEFAULT_HUMANEVAL
    parser.add_argument("--protocol", choices=names, default=None,
                        help=f"sampler, stops, budget and text handling of a published harness (default: {default})")


def protocol_settings(args: argparse.Namespace, benchmark: str) -> dict[str, Any]:
    """The run settings the protocol fixes, with `--top-p`, `--top-k` and (HumanEval) `--max-new-tokens`
    overriding its values; all of them are recorded, so a resumed run must match every one."""
    protocol = get_protocol(args.protocol or (DEFAULT_MTPB if benchmark == "mtpb" else DEFAULT_HUMANEVAL), benchmark)
    top_p = protocol.top_p if args.top_p is None else args.top_p
    top_k = protocol.top_k if args.top_k is None else args.top_k
    if not 0 < top_p <= 1 or top_k < 0:
        raise ConfigError("--top-p must be in (0, 1] and --top-k at least 0 (0 = off)")
    settings: dict[str, Any] = {"protocol": protocol.name, "top_p": top_p, "top_k": top_k}
    if benchmark == "humaneval":
        fixed = getattr(args, "max_new_tokens", None)
        if fixed is not None and fixed < 1:
            raise ConfigError("--max-new-tokens must be at least 1")
        settings["max_new_tokens"] = protocol.new_tokens if fixed is None else fixed
        settings["max_total_tokens"] = protocol.total_tokens if fixed is None else None
    return settings
