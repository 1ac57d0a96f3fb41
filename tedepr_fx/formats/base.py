"""Low-rank formats as plug-ins: the :class:`Format` base class and the registry.

A format (tensor-train, Tucker, tensor-ring, ...) owns everything that differs between
formats: the numeric resolution of a rank spec (int / list / float share / ``"full"`` /
``"auto"``), its factor shapes and their counts, scratch init and decomposition (through
:mod:`tedepr_fx.decompose`), and the layers whose forward contracts its factors. A layer
kind of :mod:`tedepr_fx.handlers` asks the format for its layer (:meth:`Format.build`);
the passes look formats up by name (:func:`get_format`) and never branch on one.

The registry line of a format lives in the torch-free :data:`tedepr_fx.names.FORMATS`
(name -> ``"module:attr"``), so that the rule schema reads the names without torch. A new
format is one module defining a :class:`Format` instance plus that one line.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar, cast

from torch import nn

from tedepr_fx.names import FORMATS
from tedepr_fx.ranks import RankSpec, check_rank_spec

if TYPE_CHECKING:  # layers import the formats: no runtime import back
    from tedepr_fx.layers.masked import Accounting

InitName = Literal["scratch", "decompose"]
# from_linear / from_conv / from_lstm: (module, rank, modes=..., init=...) -> layer
Builder = Callable[..., nn.Module]
ShapeT = TypeVar("ShapeT")


def check_init(init: object) -> InitName:
    """The one validator of ``init`` (layer constructors and formats share it)."""
    if init not in ("scratch", "decompose"):
        raise ValueError(f"init must be 'scratch' or 'decompose'; got {init!r}")
    return init


def check_build_rank(rank: object) -> RankSpec:
    """A rank spec a layer can be built with: valid syntax, and not ``"auto"``.

    ``"auto"`` depends on the layer's budget, so the factorize pass resolves it
    (:meth:`Format.auto_rank`) before any layer is built.
    """
    spec = check_rank_spec(rank)
    if spec == "auto":
        raise ValueError("rank 'auto' must be resolved from the budget before a layer is built")
    return spec


def largest_fitting(candidates: Callable[[int], list[int]], top: int, params: Callable[[list[int]], int],
                    budget: float) -> list[int]:
    """``candidates(r)`` for the largest ``r`` in ``1..top`` whose ``params`` fit ``budget``.

    The float share of a rank spec: the stored count grows with ``r``, so the first
    ``r`` that does not fit ends the search; ``candidates(1)`` is returned even if it
    does not fit (a layer has at least rank 1), as tensorly's ``validate_tt_rank`` /
    ``validate_tucker_rank`` do.
    """
    best = candidates(1)
    for r in range(1, top + 1):
        ranks = candidates(r)
        if params(ranks) > budget:
            break
        best = ranks
    return best


def check_rank_list(spec: Sequence[int], bounds: Sequence[int], bond: Callable[[int], str]) -> None:
    """Each listed rank at most its bond's exact rank; ``bond(i)`` names bond ``i`` in the error."""
    for i, (r, bound) in enumerate(zip(spec, bounds)):
        if r > bound:
            raise ValueError(f"rank {r} exceeds the largest useful rank {bound} of {bond(i)}")


def check_uniform_rank(spec: int, largest: int, what: str) -> None:
    """An int rank no larger than the largest exact rank of any bond of ``what``."""
    if spec > largest:
        raise ValueError(f"rank {spec} exceeds the largest useful rank {largest} of {what}")


def modes_or_auto(modes: object, fmt: str) -> None:
    """Refuse explicit modes for a format that has none (its layers take the dense shape)."""
    if modes not in (None, "auto"):
        raise ValueError(f"format {fmt!r} has no modes; got modes={modes!r}")


class Format(ABC, Generic[ShapeT]):
    """One low-rank format: rank resolution, accounting, and the layers that hold it.

    ``ShapeT`` is what the format's ranks are resolved against: TT-matrix modes for
    tensor-train and tensor-ring, the dense weight's shape for Tucker.

    Subclasses set :attr:`name` (its key in :data:`tedepr_fx.names.FORMATS`) and
    :attr:`has_modes`, and implement :meth:`builders`, :meth:`max_ranks`,
    :meth:`stored_params` and :meth:`resolve_ranks`.
    """

    name: ClassVar[str]
    has_modes: ClassVar[bool]
    #: the smallest rank ``rank: auto`` gives: a rank that keeps information flowing through
    #: the layer (a Tucker rank of 1 makes every output channel a multiple of one map)
    auto_rank_floor: ClassVar[int] = 1

    @abstractmethod
    def builders(self) -> dict[str, Builder]:
        """Layer kind name (``"linear"``, ``"hf_conv1d"``, ``"conv2d"``, ``"lstm"``) -> constructor.

        A constructor is called ``ctor(module, rank, modes=modes, init=init)`` when the
        format has modes and ``ctor(module, rank, init=init)`` otherwise; it resolves the
        rank with :meth:`resolve_ranks` and builds its own factors.
        """

    @abstractmethod
    def max_ranks(self, shape: ShapeT) -> list[int]:
        """The exact (largest useful) ranks: ``resolve_ranks("full", shape)``."""

    @abstractmethod
    def stored_params(self, shape: ShapeT, ranks: Sequence[int]) -> int:
        """Entries of the factors of a weight of this shape at these ranks (no bias)."""

    @abstractmethod
    def resolve_ranks(self, spec: RankSpec, shape: ShapeT) -> list[int]:
        """Concrete ranks for a rank spec (not ``"auto"``); ``ValueError`` for a bad one."""

    # --- shared behaviour ------------------------------------------------------------------------

    def kinds(self) -> tuple[str, ...]:
        """The layer kinds this format can replace."""
        return tuple(self.builders())

    def supports(self, kind: str) -> bool:
        return kind in self.builders()

    def build(self, kind: str, module: nn.Module, rank: RankSpec, modes: object = "auto",
              init: str = "scratch") -> nn.Module:
        """The layer of this format replacing ``module`` (a layer of kind ``kind``)."""
        builders = self.builders()
        if kind not in builders:
            raise ValueError(f"format {self.name!r} does not support {kind} layers "
                             f"(supported: {', '.join(builders) or 'none'})")
        if self.has_modes:
            return builders[kind](module, rank, modes=modes if modes is not None else "auto", init=init)
        modes_or_auto(modes, self.name)
        return builders[kind](module, rank, init=init)

    def auto_rank(self, kind: str, module: nn.Module, modes: object, target_params: float,
                  floor: int | None = None, flops_bound: tuple[float, tuple[int, ...]] | None = None) -> int:
        """``rank: auto``: the largest uniform int rank whose stored factors are ``<= target_params``
        (and, with ``flops_bound = (most FLOPs, input shape)``, whose FLOPs are within it).

        At least ``floor`` (default :attr:`auto_rank_floor`), capped at the largest full rank.
        Probed on a meta copy of ``module`` (no allocation); the stored count grows with the
        rank, so a binary search over ``1..max(full ranks)`` finds it.
        """
        from tedepr_fx.utils import meta_copy  # torch-heavy helpers stay out of import time

        probe = meta_copy(module)

        def stored(rank: RankSpec) -> int | None:
            try:
                built = cast("Accounting", self.build(kind, probe, rank, modes, "scratch"))
            except ValueError:
                return None
            if flops_bound is not None and built.flops(flops_bound[1]) > flops_bound[0]:
                return None  # too expensive: counts as not fitting
            return built.stored_params()

        full = self.build(kind, probe, "full", modes, "scratch")
        high = max(getattr(full, "tedepr_info", {}).get("ranks", [1]))
        low = 1
        while low < high:
            mid = (low + high + 1) // 2
            count = stored(mid)
            if count is not None and count <= target_params:
                low = mid
            else:
                high = mid - 1
        top = int(max(getattr(full, "tedepr_info", {}).get("ranks", [1])))
        return min(top, max(low, self.auto_rank_floor if floor is None else floor))


_LOADED: dict[str, Format[Any]] = {}


def get_format(name: str) -> Format[Any]:
    """The registered format ``name`` (imported on first use)."""
    if name not in _LOADED:
        if name not in FORMATS:
            raise ValueError(f"unknown format {name!r}; one of {', '.join(map(repr, FORMATS))}")
        module_name, attr = FORMATS[name].impl.split(":")
        fmt = getattr(importlib.import_module(module_name), attr)
        if not isinstance(fmt, Format) or fmt.name != name:
            raise TypeError(f"tedepr_fx.names.FORMATS[{name!r}] = {FORMATS[name].impl!r} is not "
                            f"a Format named {name!r}")
        _LOADED[name] = fmt
    return _LOADED[name]


def formats_for(kind: str) -> tuple[str, ...]:
    """Names of the registered formats that can replace a layer of kind ``kind``."""
    return tuple(name for name in FORMATS if get_format(name).supports(kind))
