"""The MTPB data: reading, validation and the single-turn prompts.

The data file is never vendored: it is read from a given path, from the cache
(`~/.cache/opencodegen/mtpb.jsonl`) or downloaded from the pinned upstream file and checked
against its sha256. Known quirks of the data are reported as warnings, not errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opencodegen.errors import DataError
from opencodegen.synthesis.history import PREFIX, turn_prompt
from opencodegen.user_cache import user_cache_dir

MTPB_URL = "https://raw.githubusercontent.com/salesforce/CodeGen/main/codegen1/benchmark/mtpb.jsonl"
MTPB_SHA256 = "3ab79ddb160f484a63491330ba72204930d56cc946f7c0c5fb469622a941f89c"
DEFAULT_MAX_GEN_LENGTH = 256  # the reference sampler's fallback when a problem has none
NUM_TEST_CASES = 5
SINGLE_TURN_NOTE = (
    "single-turn MTPB is a reconstruction: the original repository has no script for it; here all "
    "turn prompts are concatenated into one prompt and one generation gets the sum of the turn budgets"
)

# Defects of the pinned file that cannot be detected from the data alone: each is reported as a warning.
KNOWN_QUIRKS = {
    "9": "test case 2 expects 'Mike' but John has the top note (9 of [1, 9] vs Mike's 7): no correct "
    "program passes it, the best possible pass rate of problem 9 is 4/5",
    "31": "test case 0 expects [17, 2] for a=8, b=9 but the prompts ask for (a + b - 1, ...) = (16, 2): "
    "no correct program passes it, the best possible pass rate of problem 31 is 4/5",
    "57": 'test case 4 gives A as the string "[2, 2,2,2,2, 10000]" (it fills the prompt like a list)',
}


@dataclass(frozen=True)
class Problem:
    """One MTPB problem: turn templates, 5 test cases (inputs, expected outputs) and a budget."""

    id: str
    name: str
    description: str
    category: str
    prompts: tuple[str, ...]
    inputs: tuple[dict[str, Any], ...]
    outputs: tuple[Any, ...]
    max_gen_length: int

    @property
    def n_turns(self) -> int:
        return len(self.prompts)

    @property
    def tests(self) -> range:
        """Test-case indices; extra outputs without an input are ignored (as zip() does upstream)."""
        return range(min(len(self.inputs), len(self.outputs)))

    def turns(self, test: int) -> list[str]:
        """The turn prompts filled with the inputs of one test case."""
        return [template.format(**self.inputs[test]) for template in self.prompts]

    def expected(self, test: int) -> Any:
        return self.outputs[test]


@dataclass
class Benchmark:
    """Problems sorted by id, the file they came from and the data quirks found."""

    problems: list[Problem]
    source: str
    sha256: str
    warnings: list[str] = field(default_factory=list)

    def by_id(self) -> dict[str, Problem]:
        return {p.id: p for p in self.problems}


def default_cache_path() -> Path:
    return user_cache_dir() / "mtpb.jsonl"


def resolve_data(path: str | os.PathLike[str] | None = None, download: bool = True) -> Path:
    """The MTPB file: `path` if given, else the cache, else the pinned download (sha256-checked)."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"MTPB data file not found: {path}")
        return path
    cached = default_cache_path()
    if cached.is_file():
        return cached
    if not download:
        raise DataError(f"no MTPB data: pass --data FILE or put the file at {cached}")
    try:
        with urllib.request.urlopen(MTPB_URL, timeout=30) as response:
            data = response.read()
    except OSError as exc:
        raise DataError(
            f"could not download MTPB from {MTPB_URL} ({exc}); offline? pass --data FILE "
            f"or put the file at {cached}"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != MTPB_SHA256:
        raise DataError(f"downloaded MTPB has sha256 {digest}, expected {MTPB_SHA256}; not used")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(cached)
    return cached


def load_mtpb(path: str | os.PathLike[str] | None = None, download: bool = True) -> Benchmark:
    """Load and validate MTPB; malformed rows raise DataError, known quirks become warnings."""
    source = resolve_data(path, download)
    raw = source.read_bytes()
    problems: list[Problem] = []
    warnings: list[str] = []
    no_budget: list[str] = []
    for lineno, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}:{lineno}: not valid JSON ({exc.msg})") from None
        problem, notes = _parse_problem(row, f"{source}:{lineno}")
        problems.append(problem)
        if "max_gen_length" not in row:
            no_budget.append(problem.id)
        warnings += [f"problem {problem.id}: {note}" for note in notes]
    if not problems:
        raise DataError(f"{source}: no problems")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise DataError(f"{source}: duplicate problem ids")
    digest = hashlib.sha256(raw).hexdigest()
    if digest == MTPB_SHA256:
        warnings += [f"problem {pid}: {note}" for pid, note in KNOWN_QUIRKS.items()]
    if no_budget:
        warnings.insert(0, f"problems {_id_ranges(no_budget)} have no max_gen_length: using {DEFAULT_MAX_GEN_LENGTH}")
    problems.sort(key=lambda p: int(p.id))
    warnings.sort(key=lambda w: int(w.split()[1].rstrip(":")) if w.startswith("problem ") else 0)
    return Benchmark(problems, str(source), digest, warnings)


_REQUIRED = {"id": str, "prompts": list, "inputs": list, "outputs": list}


def _parse_problem(row: Any, where: str) -> tuple[Problem, list[str]]:
    if not isinstance(row, dict):
        raise DataError(f"{where}: a problem must be a JSON object")
    for key, kind in _REQUIRED.items():
        if not isinstance(row.get(key), kind):
            raise DataError(f"{where}: field {key!r} missing or not a {kind.__name__}")
    pid = row["id"]
    if not pid.isdigit():
        raise DataError(f"{where}: id {pid!r} is not a number")
    prompts, inputs = row["prompts"], row["inputs"]
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise DataError(f"{where}: problem {pid} needs a non-empty list of prompt strings")
    if not inputs or not all(isinstance(i, dict) for i in inputs):
        raise DataError(f"{where}: problem {pid} needs a non-empty list of input objects")
    budget = row.get("max_gen_length", DEFAULT_MAX_GEN_LENGTH)
    if not isinstance(budget, int) or budget <= 0:
        raise DataError(f"{where}: problem {pid} has max_gen_length {budget!r}")
    problem = Problem(
        id=pid,
        name=str(row.get("name", "")),
        description=str(row.get("description", "")),
        category=str(row.get("category", "unknown")),
        prompts=tuple(prompts),
        inputs=tuple(inputs),
        outputs=tuple(row["outputs"]),
        max_gen_length=budget,
    )
    return problem, _quirks(problem, where)


def _quirks(problem: Problem, where: str) -> list[str]:
    notes = []
    n_in, n_out = len(problem.inputs), len(problem.outputs)
    if n_in != n_out:
        notes.append(f"{n_out} outputs for {n_in} inputs: only the first {min(n_in, n_out)} test cases are used")
    if n_in != NUM_TEST_CASES:
        notes.append(f"{n_in} test cases instead of {NUM_TEST_CASES}")
    fields = _template_fields(problem.prompts, where)
    for test, inputs in enumerate(problem.inputs):
        if fields - set(inputs):
            raise DataError(f"{where}: problem {problem.id} test {test} lacks inputs {sorted(fields - set(inputs))}")
        if set(inputs) - fields:
            notes.append(f"test case {test} has unused input keys {sorted(set(inputs) - fields)}")
    files = sorted({m for p in problem.prompts for m in re.findall(r"[\w./-]+\.csv", p)})
    if files:
        notes.append(f"reads {', '.join(files)}, which MTPB does not ship: expect it to fail for every model")
    return notes


def _template_fields(prompts: Sequence[str], where: str) -> set[str]:
    fields = set()
    try:
        for template in prompts:
            fields |= {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError as exc:
        raise DataError(f"{where}: bad prompt template ({exc})") from None
    return fields


def _id_ranges(ids: list[str]) -> str:
    numbers = sorted(int(i) for i in ids)
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in spans)


# ---------------------------------------------------------------------------------------------
# Prompts


def single_turn_prompt(problem: Problem, test: int) -> str:
    """All turn comments of a test case after the prefix, for one generation (reconstruction)."""
    return PREFIX + "".join(turn_prompt(t) for t in problem.turns(test))


def single_turn_budget(problem: Problem) -> int:
    return problem.max_gen_length * problem.n_turns
