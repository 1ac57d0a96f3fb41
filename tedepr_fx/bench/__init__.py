"""``tedepr-fx bench``: the benchmark suite of issue 10 (run on demand, never by the tests' command).

Six models (:mod:`.zoo`), each with its shipped policy, against every
pruning-at-initialization baseline, low-rank only and dense (:mod:`.methods`), at
sparsities counted against the dense weights, over seeds (:mod:`.settings`). Each
cell is one JSON record cached on disk (:mod:`.store`, :mod:`.cell`); a run writes
a Markdown report (:mod:`.table`), PNG plots (:mod:`.plots`) and checks the issue's
targets (:mod:`.targets`). :mod:`.suite` runs it all, :mod:`.command` is the CLI.

This package module imports no torch; its submodules (but :mod:`.settings`) do.
"""

from tedepr_fx.bench.settings import BASELINES, METHODS, MODELS, SUITES, Suite, resolve_suite

__all__ = ["BASELINES", "METHODS", "MODELS", "SUITES", "Suite", "resolve_suite"]
