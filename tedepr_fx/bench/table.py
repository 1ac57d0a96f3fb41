"""The Markdown report of a suite run: one accuracy table and one kept-weights table per model.

Accuracy cells are ``mean ± sample standard deviation`` over seeds, in percent.
In each sparsity column the best baseline (every method but ``dense`` and
``tedepr``, ``lowrank`` included) is in bold, and the last row is TEDEPR's margin
over it in points. A dagger marks a cell whose seeds ended below twice chance
(``†`` all of them, ``†k/n`` k of n); a double dagger a baseline that keeps more
weights than both the budget and TEDEPR, left out of the comparison
(:func:`tedepr_fx.bench.summary.is_rival`); a section sign a margin for which TEDEPR
kept more weights than the budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tedepr_fx.bench.settings import BASELINES
from tedepr_fx.bench.summary import (
    Stat,
    Summary,
    best_baseline,
    chance_of,
    is_rival,
    over_budget,
    sparsities,
    summarize,
)
from tedepr_fx.bench.zoo import SUITE_MODELS


def _pct(stat: Stat, unit: str = "") -> str:
    text = f"{100 * stat.mean:.1f}"
    if stat.n > 1:
        text += f" ± {100 * stat.spread:.1f}"
    text += unit
    if stat.at_chance:
        text += " †" if stat.at_chance == stat.n else f" †{stat.at_chance}/{stat.n}"
    return text


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def model_tables(summary: Summary, model: str, chance: float | None) -> list[str]:
    """The Markdown lines of one model's section."""
    spec = SUITE_MODELS.get(model)
    title = f"{spec.title} (`{model}`, policy `{spec.policy}.yaml`)" if spec else f"`{model}`"
    columns = sparsities(summary, model)
    methods = summary[model]
    lines = [f"## {title}", ""]
    dense = methods.get("dense", {}).get(None)
    facts = []
    if dense is not None:
        facts.append(f"dense: {_pct(dense, ' %')} ({int(dense.kept)} weights)")
    if chance is not None:
        facts.append(f"chance: {100 * chance:.0f} %")
    if facts:
        lines += ["; ".join(facts) + ".", ""]
    if not columns:
        return lines
    lines += [_row(["method", *(f"{s:g}" for s in columns)]), _row(["---"] * (len(columns) + 1))]
    best = {s: best_baseline(summary, model, s) for s in columns}
    for method, by in methods.items():
        if method == "dense":
            continue
        cells = []
        for s in columns:
            stat = by.get(s)
            if stat is None:
                cells.append("-")
                continue
            text = _pct(stat)
            if method in BASELINES and not is_rival(summary, model, method, s):
                text += " ‡"
            top = best[s]
            cells.append(f"**{text}**" if top is not None and top[0] == method else text)
        lines.append(_row([method, *cells]))
    margins = []
    for s in columns:
        top, ours = best[s], methods.get("tedepr", {}).get(s)
        if top is None or ours is None:
            margins.append("-")
            continue
        over = " §" if over_budget(ours, s) else ""
        margins.append(f"{100 * (ours.mean - top[1].mean):+.1f} vs {top[0]}{over}")
    lines += [_row(["TEDEPR − best baseline (points)", *margins]), ""]
    lines += ["Weights kept (mean over seeds; share of the dense weights):", "",
              _row(["method", *(f"{s:g}" for s in columns)]), _row(["---"] * (len(columns) + 1))]
    for method, by in methods.items():
        if method == "dense":
            continue
        cells = []
        for s in columns:
            stat = by.get(s)
            cells.append("-" if stat is None else f"{stat.kept:.0f}"
                         + (f" ({100 * stat.density:.2f} %)" if stat.density is not None else ""))
        lines.append(_row([method, *cells]))
    return [*lines, ""]


def markdown(records: Iterable[dict[str, Any]], *, title: str, preamble: Sequence[str] = (),
             failures: Sequence[str] = (), targets: Sequence[str] = ()) -> str:
    """The whole report: ``title``, ``preamble`` lines, one section per model, failures, targets."""
    records = list(records)
    summary = summarize(records)
    chance = chance_of(records)
    lines = [f"# {title}", "", *preamble]
    if preamble:
        lines.append("")
    lines += ["Accuracy: test top-1 in %, mean ± sample standard deviation over seeds. Bold: the best "
              "baseline of the column (every method but dense and tedepr, lowrank included, "
              "among those that keep no more weights than the budget or TEDEPR). "
              "†: below twice chance (†k/n: k of n seeds). ‡: keeps more weights than both the "
              "budget and TEDEPR (see the kept-weights table), so not counted as a rival. §: TEDEPR "
              "keeps more weights than the budget (its policy's floors or kept layers).", ""]
    for model in summary:
        lines += model_tables(summary, model, chance.get(model))
    if failures:
        lines += ["## Cells that failed", "", *(f"- {f}" for f in failures), ""]
    if targets:
        lines += ["## Issue 10's targets", "", *(f"- {t}" for t in targets), ""]
    return "\n".join(lines).rstrip() + "\n"
