"""scripts/benchmarks_table.py: benchmarks/README.md's tables are generated from benchmarks/results/*.jsonl."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("benchmarks_table", ROOT / "scripts" / "benchmarks_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts benchmarks/ on sys.path, for `records`
    return module


table = load_script()
records = sys.modules["records"]

README = f"""# Benchmarks

Prose a person wrote.

{table.BEGIN}
old tables
{table.END}

More prose.
"""


def record(**changes) -> dict:
    base = {"benchmark": "bench_x", "setting": {"preset": "small", "threads": 2}, "metric": "greedy",
            "value": 17.25, "unit": "tok/s", "statistic": "best of 3 rounds", "reference": "transformers",
            "reference_value": 13.5, "ratio": 1.28, "date": "2026-12-07T10:58Z", "commit": "abc1234+dirty",
            "machine": {"cpu": "AMD EPYC", "cores": 2, "torch": "2.13.0+cpu", "load": 3.25},
            "command": "python benchmarks/bench_x.py --quick"}
    return {**base, **changes}


def write(results: Path, name: str, rows: list) -> Path:
    results.mkdir(exist_ok=True)
    path = results / f"{name}.jsonl"
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path]:
    results = tmp_path / "results"
    write(results, "bench_x", [record(), record(metric="prefill", value=0.61, unit="s", reference_value=0.7,
                                                ratio=1.15, setting={"preset": "small", "threads": 1})])
    write(results, "bench_y", [record(benchmark="bench_y", date="unknown", commit="unknown", setting={},
                                      machine={"cpu": "unknown", "cores": 2, "torch": "unknown"}, metric="load time",
                                      value=2.2, unit="s", reference_value=3.1, ratio=1.39)])
    readme = tmp_path / "README.md"
    readme.write_text(README)
    return results, readme


def run(results: Path, readme: Path, *extra: str) -> int:
    return table.main(["--results", str(results), "--readme", str(readme), *extra])


def test_tables_hold_one_number_per_cell_with_their_provenance(site):
    results, readme = site
    assert run(results, readme) == 0
    text = readme.read_text()
    assert text.startswith("# Benchmarks\n\nProse a person wrote.\n") and text.endswith("\nMore prose.\n")
    assert "old tables" not in text
    assert ("2026-12-07T10:58Z · commit abc1234+dirty · CPU AMD EPYC (2 cores), torch 2.13.0+cpu, load average 3.25"
            in text)
    assert "date unknown · commit unknown · CPU unknown (2 cores), torch unknown" in text
    assert "Setting: preset small." in text  # shared by the table, written once
    assert "| greedy (best of 3 rounds) | threads 2 | 17.2 tok/s | transformers 13.5 tok/s | 1.28 × |" in text
    assert "| load time (best of 3 rounds) | 2.2 s | transformers 3.1 s | 1.39 × |" in text


def test_the_generator_is_deterministic(site, tmp_path):
    results, readme = site
    run(results, readme)
    first = readme.read_text()
    assert run(results, readme) == 0 and readme.read_text() == first
    other = tmp_path / "other.md"
    other.write_text(README)
    run(results, other)
    assert other.read_text() == first
    assert table.render(table.load(results)) == table.render(table.load(results))


def test_check_fails_once_a_record_changes_and_passes_after_a_rewrite(site, capsys):
    results, readme = site
    assert run(results, readme, "--check") == 1  # the README still holds "old tables"
    assert readme.read_text() == README  # --check changes nothing
    run(results, readme)
    assert run(results, readme, "--check") == 0
    path = results / "bench_y.jsonl"
    path.write_text(path.read_text().replace('"value": 2.2', '"value": 2.3'))
    assert run(results, readme, "--check") == 1
    assert "out of date" in capsys.readouterr().err
    run(results, readme)
    assert run(results, readme, "--check") == 0 and "| load time (best of 3 rounds) | 2.3 s |" in readme.read_text()


def test_a_later_record_of_the_same_measure_replaces_the_earlier(site):
    results, readme = site
    write(results, "bench_y", [record(benchmark="bench_y", value=2.2), record(benchmark="bench_y", value=1.9,
                                                                              date="2026-12-08T09:00Z")])
    run(results, readme)
    text = readme.read_text()
    assert "| greedy (best of 3 rounds) | 1.9 tok/s |" in text and "2.2 tok/s" not in text
    assert "2026-12-08T09:00Z" in text


@pytest.mark.parametrize(("line", "field"), [
    (record(value="fast"), "'value'"),
    (record(ratio=float("nan")), "'ratio'"),
    ({k: v for k, v in record().items() if k != "unit"}, "'unit'"),
    (record(speed=3), "'speed'"),
    (record(date="07/12/2026"), "'date'"),
    (record(machine={"cores": 2, "torch": "2.13"}), "'machine.cpu'"),
    (record(machine={"cpu": "x", "cores": 2, "torch": "2.13", "load": "high"}), "'machine.load'"),
    (record(setting={"shape": [1, 2]}), "'setting'"),
    ({k: v for k, v in record().items() if k != "reference"}, "'reference'"),
    (record(benchmark="bench_z"), "'benchmark'"),
    ('{"benchmark": "bench_x", "value": ', "not valid JSON"),
])
def test_a_malformed_record_is_one_error_naming_file_line_and_field(site, capsys, line, field):
    results, readme = site
    path = write(results, "bench_x", [record(), line])
    assert run(results, readme) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}:2: ") and field in err and len(err.splitlines()) == 1
    assert readme.read_text() == README


def test_an_empty_results_file_is_an_error_naming_it(site, capsys):
    results, readme = site
    (results / "bench_z.jsonl").write_text("\n")
    assert run(results, readme) == 2
    assert f"{results / 'bench_z.jsonl'}: no records" in capsys.readouterr().err


def test_missing_markers_are_an_error_that_says_what_to_add(site, capsys):
    results, readme = site
    readme.write_text("# Benchmarks\n")
    assert run(results, readme) == 2
    assert table.BEGIN in capsys.readouterr().err


def test_a_benchmark_run_appends_records_the_generator_reads(tmp_path, site):
    results, readme = site
    recorder = records.Recorder("bench_z", results / "bench_z.jsonl", gpu="NVIDIA H100 80GB HBM3")
    recorder.add("prefill", 0.25, "s", {"dtype": "bf16"}, statistic="best of 2 rounds", reference="transformers",
                 reference_value=0.3, ratio=1.2)
    recorder.add("checks passed", 7, "of 7")
    recorder.write()
    recorder.write()  # a second run appends
    written = [json.loads(line) for line in (results / "bench_z.jsonl").read_text().splitlines()]
    assert len(written) == 4 and all(records.problem(r) is None for r in written)
    assert written[0]["machine"]["gpu"] == "NVIDIA H100 80GB HBM3" and written[0]["commit"] != ""
    assert run(results, readme) == 0
    assert "| prefill (best of 2 rounds) | dtype bf16 | 0.25 s | transformers 0.3 s | 1.2 × |" in readme.read_text()


def test_the_committed_readme_matches_the_committed_results():
    assert table.main(["--check"]) == 0, "run python scripts/benchmarks_table.py and commit benchmarks/README.md"
