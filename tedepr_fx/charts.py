"""A per-layer chart of a plan or report: weights (dense, stored, kept) and FLOPs before / after.

matplotlib is an optional extra (``pip install tedepr_fx[plot]``); without it
:func:`layer_chart` raises a ``ValueError`` that says how to install it. The PNG is
written with a fixed size, DPI and font and without the metadata timestamps
matplotlib adds by default, so the same table gives the same file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tedepr_fx.reporting import Plan

_BARS = (("dense", "dense", "#bdbdbd"), ("stored", "stored (factors)", "#6baed6"), ("kept", "kept", "#08519c"))


def layer_chart(table: Plan, path: str | Path) -> Path:
    """Write a PNG with two panels: per layer, dense / stored / kept weights (log scale), and
    FLOPs before / after at the example input (when the table has FLOP counts)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("the chart needs matplotlib: pip install 'tedepr_fx[plot]'") from None

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: the chart is a PNG; give a path ending in .png")
    records = [r for r in table.records if r.dense]
    if not records:
        raise ValueError("the table has no weight-bearing layer to chart")
    names = [r.name for r in records]
    with_flops = all(r.flops_before is not None for r in records)
    height = max(3.0, 0.28 * len(records) + 1.5)
    fig, axes = plt.subplots(1, 2 if with_flops else 1, figsize=(12 if with_flops else 7, height),
                             sharey=True, squeeze=False)
    positions = list(range(len(records)))
    weights = axes[0][0]
    bar = 0.27
    for i, (key, label, colour) in enumerate(_BARS):
        values = [max(getattr(r, key), 0.5) for r in records]  # log scale: 0 drawn as a stub
        weights.barh([p + (i - 1) * bar for p in positions], values, height=bar, label=label, color=colour)
    weights.set_xscale("log")
    weights.set_yticks(positions, names)
    weights.invert_yaxis()
    weights.set_xlabel("weights (log scale)")
    weights.legend(loc="lower right", fontsize=8)
    weights.set_title("weights per layer")
    if with_flops:
        flops = axes[0][1]
        for i, (key, label, colour) in enumerate((("flops_before", "before", "#bdbdbd"),
                                                  ("flops_after", "after", "#08519c"))):
            values = [max(getattr(r, key) or 0, 0.5) for r in records]
            flops.barh([p + (i - 0.5) * bar for p in positions], values, height=bar, label=label, color=colour)
        flops.set_xscale("log")
        flops.set_xlabel("FLOPs at the example input (log scale)")
        flops.legend(loc="lower right", fontsize=8)
        flops.set_title("FLOPs per layer")
    fig.suptitle(table.title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path
