"""PNG plots of evaluation results (matplotlib's Agg canvas: no display, no global state)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path


def plot_lines(
    x: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    path: str | os.PathLike[str],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    ymin: float | None = None,
) -> Path:
    """One line with markers per series over the shared x values (None leaves a gap); saved as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, values in series.items():
        points = [(a, b) for a, b in zip(x, values) if b is not None]
        axes.plot([a for a, _ in points], [b for _, b in points], marker="o", label=label)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title)
    if ymin is not None:
        axes.set_ylim(bottom=ymin)
    axes.grid(True, alpha=0.3)
    if series:
        axes.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def plot_passk_vs_temperature(
    table: Mapping[float, Mapping[str, float]], path: str | os.PathLike[str], title: str = ""
) -> Path:
    """pass@k (in %) against sampling temperature, one line per k; `table` maps temperature -> {"pass@k": value}."""
    temperatures = sorted(table)
    metrics = sorted({m for row in table.values() for m in row}, key=lambda m: int(m.split("@")[1]))
    series = {m: [100 * table[t][m] if m in table[t] else None for t in temperatures] for m in metrics}
    return plot_lines(temperatures, series, path, xlabel="temperature", ylabel="pass@k (%)", title=title, ymin=0)
