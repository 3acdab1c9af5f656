"""Before an evaluation run: check `--out`, warn about settings that waste work, size the batch to
the device's free memory, and print the work ahead with a time estimate from a short warm-up.

The batch rule (docs/evaluation.md): a row of a batch holds a KV cache of
2 x n_layer x n_ctx x n_embd elements of the model's dtype (n_ctx: the positions a row needs) and
fp32 sampling buffers over the vocabulary; the batch is the number of such rows that fit in
MEMORY_FRACTION of the free memory (CUDA: `torch.cuda.mem_get_info`; CPU: the host's available
memory shared by the local ranks), at least 1 and at most MAX_BATCH.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opencodegen.errors import ConfigError

MEMORY_FRACTION = 0.8  # of the free memory; the rest is for the allocator, prefill and other processes
MAX_BATCH = 64  # rows per decode step, at most (the engine's own default bound)
SAMPLING_BUFFERS = 4  # fp32 vocabulary-sized tensors per row while sampling (logits, probabilities, sorted, indices)
WARMUP_STEPS = 8  # decode steps timed by the warm-up


def check_out_dir(out: str | os.PathLike[str]) -> Path:
    """Create `out` if needed and prove a file can be written in it; one ConfigError otherwise."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out} is a file: --out names a directory (created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write there ({exc.strerror or exc}); "
                          "give a directory you can write to") from None
    return path


def greedy_repeats(temperatures: Sequence[float], n: int, flag: str = "--num-samples") -> str | None:
    """The warning for T = 0 with n > 1 (greedy samples are all the same), or None."""
    if n > 1 and any(t == 0 for t in temperatures):
        return (f"T = 0 is greedy decoding: its {n} samples per problem will be identical. "
                f"Use {flag} 1 for T = 0, or a temperature above 0")
    return None


def warn(message: str | None) -> None:
    if message:
        print(f"warning: {message}", file=sys.stderr)


def say(line: str) -> None:
    """One line of the plan (stderr: stdout keeps the results)."""
    print(f"plan: {line}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- batch size


def bytes_per_row(config: Any, n_ctx: int, element_bytes: int) -> int:
    """Memory one batch row needs: its KV cache (keys and values of every layer) and fp32 sampling buffers."""
    return 2 * config.n_layer * n_ctx * config.n_embd * element_bytes + SAMPLING_BUFFERS * 4 * config.vocab_size


def batch_for_memory(config: Any, n_ctx: int, element_bytes: int, free_bytes: int, cap: int = MAX_BATCH) -> int:
    """The rows that fit in MEMORY_FRACTION of `free_bytes`, between 1 and `cap`."""
    fitting = int(free_bytes * MEMORY_FRACTION) // bytes_per_row(config, n_ctx, element_bytes)
    return max(1, min(cap, fitting))


def free_memory(device: Any) -> int:
    """Bytes free for this process's batches on `device` (a torch.device)."""
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return host_available_memory() // local_ranks


def host_available_memory() -> int:
    """MemAvailable of /proc/meminfo (Linux), else the free physical pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class BatchChoice:
    batch: int
    row_bytes: int
    free_bytes: int
    n_ctx: int
    limit: int

    def describe(self, device: Any) -> str:
        fitting = int(self.free_bytes * MEMORY_FRACTION) // self.row_bytes
        return (f"batch {self.batch} rows (memory rule: {_size(self.free_bytes)} free on {device}, {MEMORY_FRACTION:.0%} "
                f"of it holds {fitting:,} rows of {_size(self.row_bytes)} (KV cache of {self.n_ctx} positions and "
                f"sampling buffers); capped at {MAX_BATCH} and at the {self.limit} rows of one call)")


def choose_batch(generator: Any, n_ctx: int, limit: int) -> BatchChoice:
    """The memory rule's batch for `generator`'s model (at most `limit`), applied to the generator so
    that its decode batches are that large and no larger."""
    model = generator.model
    config = model.config
    n_ctx = min(n_ctx, config.n_positions)
    element = _element_bytes(model.dtype)
    free = free_memory(model.device)
    batch = min(limit, batch_for_memory(config, n_ctx, element, free))
    generator.max_batch_size = batch
    generator.max_cache_bytes = max(generator.max_cache_bytes, batch * 2 * config.n_layer * n_ctx * config.n_embd * element)
    return BatchChoice(batch, bytes_per_row(config, n_ctx, element), free, n_ctx, limit)


def _element_bytes(dtype: Any) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


# ----------------------------------------------------------------------------- warm-up and estimate


@dataclass(frozen=True)
class Speed:
    """Seconds of one generation call's fixed part (prefill, batch set-up) and of one decode step."""

    call_s: float
    step_s: float
    batch: int

    def seconds(self, calls: int, steps: int) -> float:
        return calls * self.call_s + steps * self.step_s


def warm_up(generator: Any, prompt: str, batch: int, temperature: float, steps: int = WARMUP_STEPS) -> Speed:
    """Time generation calls of `batch` rows on `prompt` (EOS ignored), after a first untimed one
    (lazy initialisation): of 1 token and of 1 + `steps` tokens, the faster of two tries each (a
    busy machine's stalls are not the model's speed). Samples of the run are unaffected: each
    draws from its own keyed random stream."""
    from opencodegen.generation import SamplingParams

    def timed(new_tokens: int) -> float:
        params = SamplingParams(n=batch, max_new_tokens=new_tokens, temperature=temperature, seed=0,
                                ignore_eos=True, truncate_prompt=True)
        start = time.perf_counter()
        generator.generate([prompt], params)
        return time.perf_counter() - start

    timed(1)
    first = min(timed(1), timed(1))
    longer = min(timed(1 + steps), timed(1 + steps))
    return Speed(first, max(0.0, longer - first) / steps, batch)


def describe_speed(speed: Speed, seconds: float) -> str:
    return (f"estimate from a warm-up ({speed.call_s:.3f} s per call, {speed.step_s:.4f} s per decode step at batch "
            f"{speed.batch}): at most ~{_duration(seconds)} of sampling (less when completions stop early), "
            "then the programs run in the sandbox")


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


# ----------------------------------------------------------------------------- the two benchmarks


def print_humaneval_work(problems: int, temperatures: Sequence[float], n: int, max_new_tokens: int, world: int) -> None:
    """The work of a HumanEval sampling run, before the model loads (rank 0 prints it)."""
    completions = problems * len(temperatures) * n
    ranks = f", over {world} ranks" if world > 1 else ""
    say(f"{problems} problems x {len(temperatures)} temperatures ({', '.join(map(str, temperatures))}) x {n} samples "
        f"= {completions:,} completions{ranks}")
    say(f"token budget {max_new_tokens} new tokens per completion: at most {completions * max_new_tokens:,} "
        "generated tokens")
    warn(greedy_repeats(temperatures, n))


def humaneval_batch(
    generator: Any, prompts: Sequence[str], n: int, temperatures: Sequence[float], max_new_tokens: int,
    batch_size: int | None, world: int, show: bool,
) -> int:
    """The row cap of a HumanEval run's running batch (`batch_size`, or the memory rule's), applied
    to `generator`, and, when `show`, the batch choice and the time estimate of this rank's share.
    One call streams the samples of every problem at a temperature, so the cap is at most those rows."""
    mine = math.ceil(len(prompts) / world)
    rows = mine * n
    if batch_size is None:
        longest = max(len(ids) for ids in generator.encode(list(prompts)))
        choice = choose_batch(generator, longest + max_new_tokens, rows)
        batch, text = choice.batch, choice.describe(generator.model.device) + "; --batch-size overrides it"
    else:
        batch, text = batch_size, f"batch {batch_size} (--batch-size)"
        generator.max_batch_size = batch_size
    if show:
        say(text)
        prefills, steps = mine * len(temperatures), len(temperatures) * math.ceil(rows / batch) * max_new_tokens
        speed = warm_up(generator, prompts[0], min(batch, rows), max(temperatures))
        say(describe_speed(speed, speed.seconds(prefills, steps)))
    return batch


def print_mtpb_work(problems: Sequence[Any], modes: Sequence[str], n: int, temperature: float) -> None:
    """The work of an MTPB generation run, before the model loads."""
    from opencodegen.evaluation.mtpb.data import single_turn_budget

    cases = sum(len(p.tests) for p in problems)
    turns = sum(len(p.tests) * p.n_turns for p in problems)
    budget = sum(len(p.tests) * single_turn_budget(p) for p in problems)
    say(f"{len(problems)} problems, {cases} test cases x {n} samples = {cases * n:,} programs per mode "
        f"({', '.join(modes)})")
    if "multi" in modes:
        say(f"multi-turn: {turns * n:,} turn completions, each within its problem's budget: at most "
            f"{budget * n:,} generated tokens")
    if "single" in modes:
        say(f"single-turn: {cases * n:,} completions with the summed budget: at most {budget * n:,} generated tokens")
    warn(greedy_repeats([temperature], n))


def mtpb_batch(generator: Any, problems: Sequence[Any], modes: Sequence[str], n: int, temperature: float) -> int:
    """Apply the memory rule to `generator` (rows of a whole context each) and print it with the
    time estimate of the generation (every prompt prefilled, every budget used up, full batches:
    the problems' rows stream through one running batch)."""
    from opencodegen.evaluation.mtpb.data import single_turn_budget
    from opencodegen.synthesis.history import PREFIX

    context = generator.model.config.n_positions
    choice = choose_batch(generator, context, max(1, sum(len(p.tests) for p in problems) * n))
    say(choice.describe(generator.model.device))
    speed = warm_up(generator, PREFIX, choice.batch, temperature)
    prefills = row_steps = 0
    for p in problems:
        rows = len(p.tests) * n
        if "multi" in modes:
            prefills += p.n_turns * rows
            row_steps += p.n_turns * rows * p.max_gen_length
        if "single" in modes:
            prefills += rows
            row_steps += rows * min(single_turn_budget(p), context)
    say(describe_speed(speed, speed.seconds(prefills, math.ceil(row_steps / choice.batch))))
    return choice.batch
