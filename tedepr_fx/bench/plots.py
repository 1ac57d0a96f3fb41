"""Accuracy against sparsity, one PNG per model, every method (matplotlib, the ``bench`` extra).

Sparsities are spaced evenly on the x axis (0.99, 0.995 and 0.998 would crowd
together on a linear one); error bars are the sample standard deviation over seeds;
the dense model's accuracy and twice chance are horizontal lines; a baseline that keeps
more weights than both the budget and TEDEPR (see :func:`tedepr_fx.bench.summary.is_rival`)
is dashed and labelled so.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tedepr_fx.bench.settings import BASELINES
from tedepr_fx.bench.summary import chance_of, is_rival, sparsities, summarize
from tedepr_fx.bench.zoo import SUITE_MODELS

#: one colour per method, red for TEDEPR only (matplotlib's tab10 names)
COLORS = {"random": "tab:gray", "magnitude": "tab:brown", "snip": "tab:blue", "grasp": "tab:orange",
          "synflow": "tab:purple", "force": "tab:olive", "trainability": "tab:pink",
          "lowrank": "tab:cyan", "tedepr": "tab:red"}


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported (it is an optional dependency)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plots(records: Iterable[dict[str, Any]], folder: Path) -> list[Path]:
    """One ``<model>.png`` per model in ``folder``; returns the files written.

    Raises
    ------
    ImportError
        When matplotlib is not installed (``pip install 'tedepr_fx[bench]'``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    summary = summarize(records)
    chance = chance_of(records)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for model, methods in summary.items():
        columns = sparsities(summary, model)
        if not columns:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        xs = list(range(len(columns)))
        for method, by in methods.items():
            if method == "dense":
                ax.axhline(100 * by[None].mean, color="black", linestyle="--", linewidth=1, label="dense")
                continue
            points = [(x, by[s]) for x, s in zip(xs, columns) if s in by]
            # a baseline that keeps more weights than the budget and TEDEPR somewhere: dashed
            over = method in BASELINES and any(not is_rival(summary, model, method, s) for s in columns
                                               if s in by)
            ax.errorbar([x for x, _ in points], [100 * st.mean for _, st in points],
                        yerr=[100 * st.spread for _, st in points], marker="o", capsize=3,
                        label=f"{method} (keeps more)" if over else method, color=COLORS.get(method),
                        linewidth=2.8 if method == "tedepr" else 1.2, linestyle="--" if over else "-")
        if model in chance:
            ax.axhline(200 * chance[model], color="grey", linestyle=":", linewidth=1, label="2 x chance")
        spec = SUITE_MODELS.get(model)
        ax.set_title(f"{spec.title if spec else model}: test accuracy vs sparsity")
        ax.set_xticks(xs, [f"{s:g}" for s in columns])
        ax.set_xlabel("sparsity (share of the dense weights removed)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="best")
        fig.tight_layout()
        path = folder / f"{model}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
