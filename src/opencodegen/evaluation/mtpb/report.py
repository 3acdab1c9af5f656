"""MTPB summaries: pass rate per problem, the benchmark mean, breakdowns, and a comparison plot."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from opencodegen.evaluation.mtpb.data import Problem


def summarize(records: Iterable[Mapping[str, Any]], problems: Mapping[str, Problem]) -> dict[str, Any]:
    """Pass rates (percent) from scored records {"id", "passed", "status", ...}.

    A problem's rate is passes / (test cases x samples); the benchmark score is the mean of
    the problems' rates; categories and turn counts average the rates of their problems.
    """
    passed: Counter[str] = Counter()
    total: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    for record in records:
        total[record["id"]] += 1
        passed[record["id"]] += bool(record["passed"])
        statuses[record["status"]] += 1
    per_problem = {}
    for pid in sorted(total, key=int):
        problem = problems[pid]
        per_problem[pid] = {
            "name": problem.name,
            "category": problem.category,
            "n_turns": problem.n_turns,
            "passed": passed[pid],
            "total": total[pid],
            "pass_rate": 100.0 * passed[pid] / total[pid],
        }
    return {
        "pass_rate": _mean(p["pass_rate"] for p in per_problem.values()),
        "problems": len(per_problem),
        "programs": sum(total.values()),
        "per_category": _breakdown(per_problem, "category"),
        "per_turns": _breakdown(per_problem, "n_turns"),
        "status_counts": dict(sorted(statuses.items())),
        "per_problem": per_problem,
    }


def _breakdown(per_problem: Mapping[str, Mapping[str, Any]], key: str) -> dict[str, Any]:
    groups: dict[str, list[float]] = defaultdict(list)
    for row in per_problem.values():
        groups[str(row[key])].append(row["pass_rate"])
    order = sorted(groups, key=lambda g: (not g.isdigit(), int(g) if g.isdigit() else 0, g))
    return {g: {"pass_rate": _mean(groups[g]), "problems": len(groups[g])} for g in order}


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def plot_comparison(summaries: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """A grouped bar chart of the pass rate per category, one bar per mode (multi vs single)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = sorted({c for s in summaries.values() for c in s["per_category"]})
    modes = list(summaries)
    width = 0.8 / max(len(modes), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(categories) + 2), 4.0))
    for i, mode in enumerate(modes):
        per_category = summaries[mode]["per_category"]
        heights = [per_category.get(c, {}).get("pass_rate", 0.0) for c in categories]
        xs = [k + (i - (len(modes) - 1) / 2) * width for k in range(len(categories))]
        names = {"multi": "multi-turn", "single": "single-turn, reconstructed"}
        label = f"{names.get(mode, mode)} ({summaries[mode]['pass_rate']:.1f}%)"
        ax.bar(xs, heights, width, label=label)
    ax.set_xticks(range(len(categories)), categories, rotation=20, ha="right")
    ax.set_ylabel("pass rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title("MTPB pass rate per category")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
