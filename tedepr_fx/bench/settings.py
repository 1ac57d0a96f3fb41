"""The two suites of ``tedepr-fx bench`` and the names they are built from (no torch import).

A :class:`Suite` is the grid (models x methods x sparsities x seeds) plus the one
training and scoring setting every cell of it uses. ``paper`` is issue 10's table;
``quick`` is the same grid cut down to one seed, two sparsities and a reduced
training run so that the whole of it fits in about 20 minutes on a 2-core CPU.
Settings are per suite (and, for ``quick``, per data set), never per method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

#: Every method of the suite, in table order (see :mod:`tedepr_fx.bench.methods`).
METHODS: tuple[str, ...] = ("dense", "random", "magnitude", "snip", "grasp", "synflow", "force",
                            "trainability", "lowrank", "tedepr")
#: The pruning-at-initialization scorers that are run on the dense weights of every layer.
SCORER_BASELINES: tuple[str, ...] = ("random", "magnitude", "snip", "grasp", "synflow", "force",
                                     "trainability")
#: The methods TEDEPR is compared with: every method but ``dense`` and ``tedepr`` itself.
BASELINES: tuple[str, ...] = (*SCORER_BASELINES, "lowrank")
#: The suite's models, in table order (see :mod:`tedepr_fx.bench.zoo`).
MODELS: tuple[str, ...] = ("lenet300100", "lenet5", "vgg", "resnet", "vit", "lstm")
PAPER_SPARSITIES: tuple[float, ...] = (0.9, 0.99, 0.995, 0.998, 0.999)
DATA_CHOICES = "auto, digits, fashion-mnist, mnist, cifar10 or a directory"


@dataclass(frozen=True)
class Suite:
    """One benchmark grid and the settings all its cells share.

    Attributes
    ----------
    name
        ``"quick"`` or ``"paper"``.
    models, methods, sparsities, seeds
        The grid; ``dense`` is run once per model and seed (it has no sparsity).
    epochs, batch_size, lr, momentum
        Training: SGD with momentum, cross-entropy, constant learning rate.
    train_subset, test_subset
        How many images of each split are used (a fixed, seeded subset; None: all).
    scoring_batches, scoring_batch_size
        The seeded train batches every scorer of a cell sees (the rules' ``scoring.batches``
        takes the first ones).
    real_data
        Whether the suite refuses the embedded 8x8 digits set.
    """

    name: str
    models: tuple[str, ...] = MODELS
    methods: tuple[str, ...] = METHODS
    sparsities: tuple[float, ...] = PAPER_SPARSITIES
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    train_subset: int | None = None
    test_subset: int | None = None
    scoring_batches: int = 10
    scoring_batch_size: int = 128
    real_data: bool = True

    def for_data(self, dataset: str) -> Suite:
        """The suite as run on ``dataset``: ``quick`` on digits uses its own settings."""
        if self.name == "quick" and dataset == "digits":
            # 1,437 train images of 8x8: all of them, more passes, smaller batches
            return dataclasses.replace(self, epochs=QUICK_DIGITS_EPOCHS, batch_size=32, train_subset=None, test_subset=None,
                                       scoring_batch_size=32)
        return self


QUICK_DIGITS_EPOCHS = 5

SUITES: dict[str, Suite] = {
    "paper": Suite("paper"),
    # sized on a shared 2-core CPU: see docs/benchmarks/suite.md for the measured wall time
    "quick": Suite("quick", sparsities=(0.99, 0.998), seeds=(0,), epochs=1, batch_size=32,
                   train_subset=6000, test_subset=1000, scoring_batches=4, scoring_batch_size=32,
                   real_data=False),
}


def _check_names(kind: str, given: Sequence[str], valid: Sequence[str]) -> tuple[str, ...]:
    unknown = [g for g in given if g not in valid]
    if unknown:
        raise ValueError(f"unknown {kind} {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
    if len(set(given)) != len(given):
        raise ValueError(f"{kind} listed twice: {', '.join(given)}")
    return tuple(given)


def resolve_suite(name: str, *, models: Sequence[str] | None = None,
                  methods: Sequence[str] | None = None, sparsities: Sequence[float] | None = None,
                  seeds: Sequence[int] | None = None, epochs: int | None = None,
                  dataset: str | None = None) -> Suite:
    """The suite ``name`` (as run on ``dataset`` when given) with the grid and epochs overridden.

    Raises
    ------
    ValueError
        Unknown suite, model or method; a sparsity outside ``[0, 1)``; a negative seed;
        ``epochs < 1``; a value listed twice. The message names the valid values.
    """
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; valid: {', '.join(SUITES)}")
    suite = SUITES[name] if dataset is None else SUITES[name].for_data(dataset)
    changes: dict[str, object] = {}
    if models is not None:
        changes["models"] = _check_names("model", models, MODELS)
    if methods is not None:
        changes["methods"] = _check_names("method", methods, METHODS)
    if sparsities is not None:
        bad = [s for s in sparsities if not 0.0 <= s < 1.0]
        if bad:
            raise ValueError(f"sparsities must lie in [0, 1); got {', '.join(map(str, bad))}")
        if len(set(sparsities)) != len(sparsities):
            raise ValueError(f"sparsity listed twice: {', '.join(map(str, sparsities))}")
        changes["sparsities"] = tuple(float(s) for s in sparsities)
    if seeds is not None:
        if any(s < 0 for s in seeds):
            raise ValueError(f"seeds must be >= 0; got {', '.join(map(str, seeds))}")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seed listed twice: {', '.join(map(str, seeds))}")
        changes["seeds"] = tuple(seeds)
    if epochs is not None:
        if epochs < 1:
            raise ValueError(f"--epochs must be >= 1; got {epochs}")
        changes["epochs"] = epochs
    return dataclasses.replace(suite, **changes)  # type: ignore[arg-type]
