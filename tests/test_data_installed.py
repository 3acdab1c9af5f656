"""License-aware offline corpus: the license classifier, fake installed distributions, and the CLI."""

import functools
import json
import sysconfig
from pathlib import Path

import pytest

from opencodegen.cli import main
from opencodegen.commands.init import tokenizer_corpus
from opencodegen.data import installed
from opencodegen.data.installed import (
    classify_license,
    expand_inputs,
    is_heldout,
    select_installed,
    stdlib_files,
    stdlib_split,
)
from opencodegen.errors import DataError

MIT = "License :: OSI Approved :: MIT License"
BSD = "License :: OSI Approved :: BSD License"
GPL = "License :: OSI Approved :: GNU General Public License v3 (GPLv3)"


@pytest.mark.parametrize(
    ("expression", "field", "classifiers", "permissive", "source"),
    [
        (None, None, [MIT], True, "classifier"),
        (None, None, [BSD], True, "classifier"),
        ("Apache-2.0", None, [], True, "License-Expression"),
        ("GPL-3.0-or-later", None, [MIT], False, "License-Expression"),  # the expression wins
        ("LGPL-2.1-only", None, [], False, "License-Expression"),
        (None, None, ["License :: OSI Approved :: GNU Lesser General Public License v3 (LGPLv3)"], False, "classifier"),
        (None, None, [GPL], False, "classifier"),
        (None, None, [MIT, GPL], False, "classifier"),  # several classifiers: all must be permissive
        (None, "UNKNOWN", [], False, "none"),
        (None, "", [], False, "none"),
        (None, None, [], False, "none"),
        (None, None, ["License :: OSI Approved"], False, "none"),  # says nothing specific
        ("MIT OR GPL-3.0", None, [], True, "License-Expression"),  # a choice: taken under MIT
        ("MIT AND GPL-3.0", None, [], False, "License-Expression"),
        ("(MIT OR GPL-2.0) AND BSD-3-Clause", None, [], True, "License-Expression"),
        ("GPL-2.0 OR (MIT AND AGPL-3.0)", None, [], False, "License-Expression"),
        ("Apache-2.0 WITH LLVM-exception", None, [], True, "License-Expression"),
        ("GPL-2.0 WITH Classpath-exception-2.0", None, [], False, "License-Expression"),
        ("MPL-2.0", None, [], False, "License-Expression"),  # weak copyleft: excluded
        ("MIT OR (", None, [], False, "License-Expression"),  # malformed: excluded
        ("MIT GPL-3.0", None, [], False, "License-Expression"),
        (None, "MIT License\n\nCopyright (c) 2020 someone\n...", [], True, "License"),
        (None, "Apache License, Version 2.0", [], True, "License"),
        (None, "Copyright (c) 2020 someone. All rights reserved.", [], False, "License"),
        (None, "GNU GENERAL PUBLIC LICENSE\nVersion 3", [], False, "License"),
    ],
)
def test_classify_license(expression, field, classifiers, permissive, source):
    verdict = classify_license(expression, field, classifiers)
    assert (verdict.permissive, verdict.source) == (permissive, source)


def make_dist(site: Path, name: str, metadata: str, files: dict[str, str]) -> None:
    """A dist-info directory with METADATA and a RECORD listing `files` (written relative to `site`)."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n{metadata}\n")
    record = [f"{name}-1.0.dist-info/METADATA,,", f"{name}-1.0.dist-info/RECORD,,"]
    for rel, text in files.items():
        path = (site / rel).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        record.append(f"{rel},sha256=x,{len(text)}")
    record.append(f"{name}/listed_but_missing.py,,")
    (info / "RECORD").write_text("\n".join(record) + "\n")


@pytest.fixture
def site(tmp_path):
    site = tmp_path / "lib" / "site-packages"
    make_dist(site, "goodpkg", f"Classifier: {MIT}", {
        "goodpkg/__init__.py": "GOOD = 1\n",
        "goodpkg/core.py": "def good():\n    return 2\n",
        "goodpkg/tests/test_core.py": "def test_good():\n    pass\n",
        "goodpkg/data.txt": "not python\n",
        "../../bin/good-script.py": "print('outside site-packages')\n",
    })
    make_dist(site, "badpkg", "License-Expression: GPL-3.0-only", {"badpkg/__init__.py": "BAD = 1\n"})
    make_dist(site, "dualpkg", "License-Expression: MIT OR GPL-3.0-only", {"dualpkg/__init__.py": "DUAL = 1\n"})
    return site


def test_select_installed_by_verdict(site):
    selection = select_installed(paths=[str(site)])
    names = sorted(str(p.relative_to(site.resolve())) for p in selection.files)
    assert names == ["dualpkg/__init__.py", "goodpkg/__init__.py", "goodpkg/core.py"]
    rows = {row["name"]: row for row in selection.report["distributions"]}
    assert rows["badpkg"] == {"name": "badpkg", "version": "1.0", "license": "GPL-3.0-only",
                              "license_source": "License-Expression", "verdict": "excluded", "files": 0}
    assert rows["goodpkg"]["verdict"] == "included" and rows["goodpkg"]["files"] == 2
    assert rows["goodpkg"]["license"] == "MIT License"
    with_tests = select_installed(paths=[str(site)], include_tests=True)
    assert len(with_tests.files) == 4


def test_stdlib_files_leave_out_site_packages_and_tests():
    files = stdlib_files()
    root = Path(sysconfig.get_paths()["stdlib"])
    assert root / "os.py" in files and root / "json" / "decoder.py" in files
    assert not any({"site-packages", "dist-packages", "test", "tests"} & set(f.parts) for f in files)


def test_stdlib_heldout_split_is_whole_modules_and_stable():
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    every, train, held = (stdlib_split(part) for part in ("", "train", "heldout"))
    assert sorted(train + held) == sorted(every) and not set(train) & set(held)
    assert 0 < len(held) < len(every) / 5
    top = {f.resolve().relative_to(root).parts[0].removesuffix(".py") for f in held}
    assert not any(f.resolve().relative_to(root).parts[0].removesuffix(".py") in top for f in train)
    # the choice is a hash of the name: fixed for every machine and Python version
    assert [is_heldout(name) for name in ("pprint.py", "socket.py", "sqlite3/dump.py", "os.py", "json/decoder.py")] \
        == [True, True, True, False, False]
    assert not any(f.name.startswith("_sysconfigdata") for f in every)
    files, report = expand_inputs(["stdlib:heldout"])
    assert files == [str(f) for f in held] and report["stdlib:heldout"]["files"] == len(held)


def test_expand_inputs_keeps_paths_and_rejects_unknown_specs(tmp_path):
    assert expand_inputs(["a.py", str(tmp_path)]) == (["a.py", str(tmp_path)], None)
    with pytest.raises(DataError, match="unknown corpus spec"):
        expand_inputs(["installed:everything"])


@pytest.fixture
def small_selection(site, monkeypatch):
    """`stdlib:` = three stdlib modules, `installed:` = the fake site-packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    monkeypatch.setattr(installed, "stdlib_files", lambda include_tests=False: [root / m for m in
                                                                               ("bisect.py", "colorsys.py", "fnmatch.py")])
    monkeypatch.setattr(installed, "select_installed", functools.partial(select_installed, paths=[str(site)]))
    return site


def test_cli_init_and_build_on_the_selection(small_selection, tmp_path, capsys):
    texts = [t for t in tokenizer_corpus(["stdlib:", "installed:permissive"]) if isinstance(t, str)]
    assert "GOOD = 1\n" in texts and "DUAL = 1\n" in texts and "BAD = 1\n" not in texts and len(texts) == 6

    model = tmp_path / "model"
    assert main(["init", "--preset", "tiny", "--out", str(model),
                 "--train-tokenizer-on", "stdlib:", "installed:permissive"]) == 0
    out = tmp_path / "data"
    assert main(["data", "build", "--input", "stdlib:", "installed:permissive", "--tokenizer", str(model),
                 "--out", str(out), "--seq-len", "32", "--workers", "1", "--val-fraction", "0", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["documents"]["kept"] == 6 and manifest["licenses"] == "licenses.json"
    assert manifest["args"]["inputs"] == ["stdlib:", "installed:permissive"]
    report = json.loads((out / "licenses.json").read_text())
    assert report["stdlib"]["files"] == 3 and report["stdlib"]["license"] == "PSF-2.0"
    assert {r["name"]: r["verdict"] for r in report["distributions"]} == {
        "badpkg": "excluded", "dualpkg": "included", "goodpkg": "included"}
