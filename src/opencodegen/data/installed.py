"""A license-aware offline Python corpus: the standard library and permissively licensed installed packages.

Input specs (for `opencodegen data build --input` and `opencodegen init --train-tokenizer-on`):
``stdlib:`` is the running interpreter's standard library (PSF-2.0) without site-packages;
``stdlib:heldout`` is a fixed 5 % of its top-level modules and packages (whole packages, so no
near-copy of a held-out file, like the generated codec tables of ``encodings``, is trained on;
chosen by a hash of the name, so the same modules on every machine and Python version) and
``stdlib:train`` the rest: a validation set of files that training never saw;
``installed:permissive`` is the ``.py`` files listed in the RECORD of every installed distribution
whose license `classify_license` finds permissive. Test directories are left out of both.

License policy (conservative; a distribution is excluded unless it is clearly permissive):
- ``License-Expression`` (SPDX) wins when present. ``OR`` is a choice, permissive when any
  alternative is ("MIT OR GPL-3.0-only" is taken under MIT); ``AND`` needs every part
  permissive; ``X WITH exception`` counts as X.
- Else the ``License ::`` classifiers: every specific one must be permissive (several
  classifiers do not say whether they are alternatives or all apply).
- Else the free-text ``License`` field: its first line must name one permissive license.
- Permissive: MIT, MIT-0, MIT-CMU, BSD-2/3-Clause, 0BSD, Apache-2.0, PSF-2.0/Python-2.0,
  CNRI-Python, ISC, Unlicense, Zlib, HPND, BSL-1.0, CC0-1.0. Excluded: MPL-2.0 (weak copyleft), GPL/LGPL/AGPL, anything unknown or missing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from opencodegen.errors import DataError
from opencodegen.io import write_atomic

PERMISSIVE_SPDX = frozenset({
    "mit", "mit-0", "bsd-2-clause", "bsd-3-clause", "0bsd", "apache-2.0", "psf-2.0", "python-2.0",
    "isc", "unlicense", "zlib", "hpnd", "mit-cmu", "cnri-python", "bsl-1.0", "cc0-1.0",
})
"""SPDX ids (lower case) counted as permissive."""

LICENSE_NAMES: dict[str, str] = {
    # License :: classifiers (the part after the last "::") and common free-text spellings -> SPDX id
    "mit license": "MIT", "mit": "MIT", "mit no attribution license (mit-0)": "MIT-0",
    "bsd license": "BSD-3-Clause", "bsd": "BSD-3-Clause", "new bsd license": "BSD-3-Clause",
    "bsd-3-clause": "BSD-3-Clause", "3-clause bsd license": "BSD-3-Clause", "bsd 3-clause license": "BSD-3-Clause",
    "bsd-2-clause": "BSD-2-Clause", "simplified bsd license": "BSD-2-Clause", "bsd 2-clause license": "BSD-2-Clause",
    "apache software license": "Apache-2.0", "apache 2.0": "Apache-2.0", "apache-2.0": "Apache-2.0",
    "apache license 2.0": "Apache-2.0", "apache license, version 2.0": "Apache-2.0",
    "apache license version 2.0": "Apache-2.0", "apache 2": "Apache-2.0", "apache 2.0 license": "Apache-2.0",
    "python software foundation license": "PSF-2.0", "psf": "PSF-2.0", "psf license": "PSF-2.0",
    "isc license (iscl)": "ISC", "isc license": "ISC", "isc": "ISC",
    "the unlicense (unlicense)": "Unlicense", "unlicense": "Unlicense",
    "zlib/libpng license": "Zlib", "zlib": "Zlib",
    "historical permission notice and disclaimer (hpnd)": "HPND", "hpnd": "HPND",
    "mozilla public license 2.0 (mpl 2.0)": "MPL-2.0",
}
"""Names of licenses that are not SPDX ids -> SPDX id. Names not listed stay unknown (excluded)."""

TEST_DIRS = frozenset({"test", "tests", "testing", "idle_test"})
PACKAGE_DIRS = frozenset({"site-packages", "dist-packages"})
SPECS = ("stdlib:", "stdlib:train", "stdlib:heldout", "installed:permissive")
HELDOUT_PERCENT = 5
GENERATED = "_sysconfigdata"  # the build's configuration, written by the build: not code anyone wrote


@dataclass(frozen=True)
class Verdict:
    """Whether a license is permissive, the license as declared, and where it was read."""

    permissive: bool
    license: str
    source: str  # "License-Expression", "classifier", "License" or "none"


def _spdx_permissive(expression: str) -> bool:
    """Evaluate an SPDX expression: OR = any alternative, AND = all parts, WITH ignored, unknown = False."""
    tokens = re.findall(r"\(|\)|[^\s()]+", expression)
    pos = 0

    def atom() -> bool:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError("unexpected end")
        tok = tokens[pos]
        pos += 1
        if tok == "(":
            value = disjunction()
            if pos >= len(tokens) or tokens[pos] != ")":
                raise ValueError("unbalanced parenthesis")
            pos += 1
        else:
            name = tok.lower().removesuffix("+")
            value = name in PERMISSIVE_SPDX or LICENSE_NAMES.get(name, "").lower() in PERMISSIVE_SPDX
        if pos < len(tokens) and tokens[pos].upper() == "WITH":
            pos += 2  # the exception adds permissions; it never removes them
        return value

    def conjunction() -> bool:
        nonlocal pos
        value = atom()
        while pos < len(tokens) and tokens[pos].upper() == "AND":
            pos += 1
            value = atom() and value
        return value

    def disjunction() -> bool:
        nonlocal pos
        value = conjunction()
        while pos < len(tokens) and tokens[pos].upper() == "OR":
            pos += 1
            value = conjunction() or value
        return value

    try:
        result = disjunction()
    except ValueError:
        return False
    return result and pos == len(tokens)


def classify_license(expression: str | None, license_field: str | None, classifiers: Iterable[str]) -> Verdict:
    """The verdict for one distribution's license metadata (see the module docstring for the policy)."""
    if expression and expression.strip():
        return Verdict(_spdx_permissive(expression.strip()), expression.strip(), "License-Expression")
    names = [c.split("::")[-1].strip() for c in classifiers if c.startswith("License ::")]
    names = [n for n in names if n not in ("OSI Approved", "")]  # "License :: OSI Approved" alone says nothing
    if names:
        spdx = [LICENSE_NAMES.get(n.lower(), "") for n in names]
        return Verdict(all(s.lower() in PERMISSIVE_SPDX for s in spdx), "; ".join(names), "classifier")
    text = (license_field or "").strip()
    if text and text.upper() != "UNKNOWN":
        first = text.splitlines()[0].strip()
        return Verdict(_spdx_permissive(first) or LICENSE_NAMES.get(first.lower(), "").lower() in PERMISSIVE_SPDX,
                       first[:200], "License")
    return Verdict(False, text, "none")


def _is_test_path(parts: Sequence[str]) -> bool:
    return any(p in TEST_DIRS for p in parts)


def distribution_files(dist: importlib.metadata.Distribution, include_tests: bool = False) -> list[Path]:
    """The existing ``.py`` files of `dist`'s RECORD that lie inside its installation directory."""
    root = Path(dist.locate_file("")).resolve()
    files = []
    for entry in dist.files or ():
        if entry.suffix != ".py" or (not include_tests and _is_test_path(entry.parts[:-1])):
            continue
        path = Path(dist.locate_file(entry)).resolve()
        if path.is_relative_to(root) and path.is_file():
            files.append(path)
    return sorted(set(files))


def stdlib_files(include_tests: bool = False) -> list[Path]:
    """The ``.py`` files of the running interpreter's standard library, without site-packages."""
    paths = sysconfig.get_paths()
    root = Path(paths["stdlib"]).resolve()
    packages = {Path(paths[k]).resolve() for k in ("purelib", "platlib")}
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames
            if d not in PACKAGE_DIRS and d != "__pycache__" and (here / d).resolve() not in packages
            and (include_tests or d not in TEST_DIRS)
        )
        files.extend(here / f for f in sorted(filenames) if f.endswith(".py") and not f.startswith(GENERATED))
    return files


def is_heldout(relative: str) -> bool:
    """Whether the stdlib file at `relative` (a POSIX path inside the standard library) is held out:
    decided by its top-level module or package name."""
    top = relative.split("/", 1)[0].removesuffix(".py")
    digest = hashlib.sha256(top.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PERCENT


def stdlib_split(part: str, include_tests: bool = False) -> list[Path]:
    """The stdlib files of `part`: "" (all), "train" or "heldout"."""
    files = stdlib_files(include_tests)
    if not part:
        return files
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    held = part == "heldout"
    return [f for f in files if is_heldout(f.relative_to(root).as_posix()) == held]


@dataclass
class Selection:
    """Files chosen by the specs and the license report of every distribution considered."""

    files: list[Path] = field(default_factory=list)
    report: dict = field(default_factory=dict)


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def select_installed(paths: Sequence[str] | None = None, include_tests: bool = False) -> Selection:
    """Files of the permissive distributions on `paths` (default sys.path), and a row per distribution.

    A distribution found twice (e.g. user and system site-packages) counts once, as importlib finds it.
    """
    seen: set[str] = set()
    selection = Selection(report={"distributions": []})
    dists = importlib.metadata.distributions(path=list(paths)) if paths is not None else importlib.metadata.distributions()
    for dist in dists:
        meta = dist.metadata
        name = meta.get("Name") or ""
        if not name or _normalized(name) in seen:
            continue
        seen.add(_normalized(name))
        verdict = classify_license(meta.get("License-Expression"), meta.get("License"), meta.get_all("Classifier") or [])
        files = distribution_files(dist, include_tests) if verdict.permissive else []
        selection.files.extend(files)
        selection.report["distributions"].append({
            "name": name, "version": dist.version, "license": verdict.license, "license_source": verdict.source,
            "verdict": "included" if verdict.permissive else "excluded", "files": len(files),
        })
    selection.report["distributions"].sort(key=lambda row: _normalized(row["name"]))
    return selection


def is_spec(item: str) -> bool:
    """Whether an input names a corpus spec (``stdlib:...`` or ``installed:...``) rather than a path."""
    return item.startswith(("stdlib:", "installed:"))


def expand_inputs(inputs: Sequence[str], include_tests: bool = False) -> tuple[list[str], dict | None]:
    """Replace the specs among `inputs` by their files; the license report, or None when no spec was given."""
    out: list[str] = []
    report: dict | None = None
    for item in inputs:
        if not is_spec(item):
            out.append(item)
            continue
        if item not in SPECS:
            raise DataError(f"unknown corpus spec {item!r} (known: {', '.join(SPECS)})")
        report = report if report is not None else {"policy": "permissive only; see opencodegen.data.installed"}
        if item.startswith("stdlib:"):
            part = item.removeprefix("stdlib:")
            files = stdlib_split(part, include_tests)
            entry = {"root": sysconfig.get_paths()["stdlib"], "license": "PSF-2.0", "files": len(files)}
            report["stdlib" if not part else f"stdlib:{part}"] = entry
        else:
            selection = select_installed(include_tests=include_tests)
            files = selection.files
            report["distributions"] = selection.report["distributions"]
        out.extend(str(f) for f in files)
    return out, report


def write_report(report: dict, path: str | Path) -> None:
    """Write the license report as JSON, atomically."""
    write_atomic(path, json.dumps(report, indent=2) + "\n")
