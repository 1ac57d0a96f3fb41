"""Names the rule language and the registries share, importable without torch.

The rule schema (:mod:`tedepr_fx.rules.schema`) builds its ``Literal`` types from
these tuples and the registries check themselves against them at import, so a
scorer or a format is named in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

ScorerName = Literal["trainability", "snip", "grasp", "synflow", "force", "magnitude", "random"]
SCORER_NAMES: tuple[ScorerName, ...] = get_args(ScorerName)


@dataclass(frozen=True)
class FormatEntry:
    """One low-rank format as the rule language sees it, and where its implementation lives.

    ``impl`` is ``"module:attr"`` of the :class:`tedepr_fx.formats.base.Format` instance,
    imported only when a layer is built, so that the rule schema never imports torch.
    """

    impl: str
    title: str  # the schema's and the error messages' name of the format
    description: str  # one line for the JSON Schema
    modes: bool  # whether a rule may give ``modes: {in: [...], out: [...]}``


# The format registry: adding a format is its module plus one line here.
FORMATS: dict[str, FormatEntry] = {
    "tt": FormatEntry("tedepr_fx.formats.tt:TT", "TT",
                      "A tensor-train (TT) factorization: the layer becomes a chain of small cores.",
                      modes=True),
    "tucker": FormatEntry("tedepr_fx.formats.tucker:TUCKER", "Tucker",
                          "A Tucker factorization (for a conv: the 1x1 -> kxk -> 1x1 chain of Tucker-2).",
                          modes=False),
    "tr": FormatEntry("tedepr_fx.formats.tr:TR", "TR",
                      "A tensor-ring (TR) factorization: a TT whose first and last cores share a traced bond.",
                      modes=True),
}

FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)


#: The loss presets of :mod:`tedepr_fx.losses` (``scoring.loss`` in the rules, ``--loss`` on the CLI).
LOSS_NAMES: tuple[str, ...] = ("classification", "causal_lm", "masked_lm")
