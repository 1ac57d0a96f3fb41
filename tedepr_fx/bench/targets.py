"""Issue 10's targets, checked against the records of a run; misses are reported, never hidden.

For every model of the run:

* at sparsity 0.99, TEDEPR's mean >= the best baseline's mean;
* at 0.998 and 0.999, TEDEPR's mean >= the best baseline's mean + 10 points;
* no TEDEPR cell (any seed, any sparsity up to 0.999) below twice chance.

For LeNet-300-100: TEDEPR's mean >= 84 / 83 / 80 % at 0.99 / 0.998 / 0.999. That
target is stated for Fashion-MNIST, the whole training set, 3 epochs of SGD (lr
0.05, momentum 0.9, batch 128); a run with other settings shows its number but
reports the target as not applicable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tedepr_fx.bench.summary import best_baseline, chance_of, over_budget, summarize

MARGIN_AT = {0.99: 0.0, 0.998: 0.10, 0.999: 0.10}
LENET_TARGETS = {0.99: 0.84, 0.998: 0.83, 0.999: 0.80}
ISSUE_TRAINING = {"epochs": 3, "batch_size": 128, "lr": 0.05, "momentum": 0.9}
HOLDS, MISSED, NOT_MEASURED, NOT_APPLICABLE = "HOLDS", "MISSED", "NOT MEASURED", "NOT APPLICABLE"


@dataclass(frozen=True)
class Target:
    """One target for one model, and whether the run meets it."""

    model: str
    what: str
    status: str
    detail: str

    def line(self) -> str:
        return f"{self.status}: {self.model}: {self.what} ({self.detail})"


def check_targets(records: Iterable[dict[str, Any]]) -> list[Target]:
    """Every target for every model that has records, in model order."""
    records = [r for r in records if r.get("status") == "ok"]
    summary = summarize(records)
    chance = chance_of(records)
    results: list[Target] = []
    for model, methods in summary.items():
        ours = methods.get("tedepr", {})
        for sparsity, margin in MARGIN_AT.items():
            what = (f"TEDEPR >= best baseline at {sparsity:g}" if margin == 0
                    else f"TEDEPR >= best baseline + {100 * margin:.0f} points at {sparsity:g}")
            top = best_baseline(summary, model, sparsity)
            stat = ours.get(sparsity)
            if top is None or stat is None:
                results.append(Target(model, what, NOT_MEASURED, "no TEDEPR or baseline cell"))
                continue
            gap = stat.mean - top[1].mean
            ok = gap >= margin - 1e-12
            kept = (f"; TEDEPR keeps {100 * stat.density:.2f} % of the dense weights, the budget "
                    f"{100 * (1 - sparsity):.2f} %" if over_budget(stat, sparsity) and stat.density else "")
            results.append(Target(model, what, HOLDS if ok else MISSED,
                                  f"TEDEPR {100 * stat.mean:.1f} %, {top[0]} {100 * top[1].mean:.1f} %, "
                                  f"{100 * gap:+.1f} points{kept}"))
        low = 2 * chance.get(model, 0.1)
        cells = [(s, a) for r in records if r["config"]["model"] == model
                 and r["config"]["method"] == "tedepr" and (s := r["config"]["sparsity"]) <= 0.999
                 for a in (float(r["accuracy"]),)]
        what = f"no TEDEPR cell below 2 x chance ({100 * low:.0f} %) up to 0.999"
        if not cells:
            results.append(Target(model, what, NOT_MEASURED, "no TEDEPR cell"))
        else:
            below = sorted((s, a) for s, a in cells if a < low)
            results.append(Target(model, what, MISSED if below else HOLDS,
                                  f"{len(cells)} cells" + (": below at " + ", ".join(
                                      f"{s:g} ({100 * a:.1f} %)" for s, a in below) if below else "")))
        if model == "lenet300100":
            results += _lenet(records, ours)
    return results


def _lenet(records: Sequence[dict[str, Any]], ours: dict[float | None, Any]) -> list[Target]:
    mine = [r["config"] for r in records
            if r["config"]["model"] == "lenet300100" and r["config"]["method"] == "tedepr"]
    differ = sorted({f"{k}={c['training'][k]}" for c in mine for k, v in ISSUE_TRAINING.items()
                     if c["training"].get(k) != v})
    differ += sorted({f"data={c['data']['name']} ({c['data']['train_images']} train images)" for c in mine
                      if c["data"]["name"] != "fashion-mnist" or c["data"]["train_images"] < 60000})
    results = []
    for sparsity, goal in LENET_TARGETS.items():
        what = f"TEDEPR >= {100 * goal:.0f} % at {sparsity:g}"
        stat = ours.get(sparsity)
        if stat is None:
            results.append(Target("lenet300100", what, NOT_MEASURED, "no TEDEPR cell"))
        elif differ:
            results.append(Target("lenet300100", what, NOT_APPLICABLE,
                                  f"measured {100 * stat.mean:.1f} % with {', '.join(differ)}; "
                                  "the target is for Fashion-MNIST, 3 epochs, batch 128"))
        else:
            results.append(Target("lenet300100", what, HOLDS if stat.mean >= goal else MISSED,
                                  f"{100 * stat.mean:.1f} % over {stat.n} seed(s)"))
    return results
