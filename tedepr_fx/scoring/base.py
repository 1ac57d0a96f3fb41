"""The scorer interface shared by every pruning-at-initialization criterion.

A :class:`Scorer` receives the model (dense masked layers, or the TT / Tucker
layers the factorize pass produced), the list of prunable tensors to score
(:class:`Target`) and a few materialised batches, and returns one score tensor
per target with the tensor's shape: *higher means keep*.

Scorers never change the model: parameters, masks, buffers (BatchNorm running
statistics), ``.grad`` fields, the train/eval mode and the global RNG state are
all as they were when ``score`` returns. Tensors are substituted with
:func:`torch.func.functional_call`, so a mask ``<name>_mask`` can be replaced by
a differentiable float tensor of ones: since every masked layer computes
``param * mask``, ``dL/dm`` at ``m = 1`` is ``w * dL/dw_eff`` for whatever
tensor carries the mask (a dense weight or a TT core).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from tqdm.auto import tqdm

from tedepr_fx.errors import DataError
from tedepr_fx.layers.masked import iter_masked
from tedepr_fx.rules.scoring import ScorerOptions
from tedepr_fx.seeding import seeded

Batch = tuple[Any, Any]
LossFn = Callable[[Tensor, Any], Tensor]
OutputFn = Callable[[Any], Tensor]


@dataclass(frozen=True)
class Target:
    """One prunable tensor: ``module.<tensor_name>`` with mask ``module.<tensor_name>_mask``.

    ``key`` is ``"<module_qualname>.<tensor_name>"`` (just ``tensor_name`` when the
    masked module is the root model itself).
    """

    key: str
    module: nn.Module
    tensor_name: str

    @property
    def layer(self) -> str:
        """Qualified name of the module holding the tensor."""
        return self.key[: -len(self.tensor_name) - 1] if self.key != self.tensor_name else ""

    def tensor(self) -> Tensor:
        tensor: Tensor = getattr(self.module, self.tensor_name)
        return tensor

    def mask(self) -> Tensor:
        mask: Tensor = self.module.get_mask(self.tensor_name)  # type: ignore[operator]
        return mask


def target_key(module_qualname: str, tensor_name: str) -> str:
    """The key of a prunable tensor, ``"<module_qualname>.<tensor_name>"``."""
    return f"{module_qualname}.{tensor_name}" if module_qualname else tensor_name


def collect_targets(model: nn.Module, layers: Collection[str] | None = None) -> list[Target]:
    """Every prunable tensor of ``model`` (from ``iter_masked``), in module order.

    Parameters
    ----------
    model : nn.Module
        A model containing :class:`~tedepr_fx.layers.masked.MaskedMixin` layers.
    layers : collection of str, optional
        Only the masked modules with these qualified names. A name that is not a
        masked module of ``model`` raises ``ValueError`` naming it.
    """
    found = [(q, m, n) for q, m, n in iter_masked(model)]
    if layers is not None:
        wanted = set(layers)
        missing = sorted(wanted - {q for q, _, _ in found})
        if missing:
            raise ValueError(
                f"layers {missing} are not masked modules of the model "
                f"(masked modules: {sorted({q for q, _, _ in found})})"
            )
        found = [(q, m, n) for q, m, n in found if q in wanted]
    return [Target(target_key(q, n), m, n) for q, m, n in found]


def default_output_fn(outputs: Any) -> Tensor:
    """Turn a model's output into the tensor the loss reads.

    A tensor is used as is; an object or dict with ``logits`` (Hugging Face
    ``ModelOutput``) gives its logits; a tuple or list gives its first element, another
    mapping (a Hugging Face ``BaseModelOutput``) its first tensor (``last_hidden_state``).
    """
    if isinstance(outputs, Tensor):
        return outputs
    logits = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], Tensor):
        return outputs[0]
    first = next((v for v in outputs.values() if isinstance(v, Tensor)), None) if isinstance(
        outputs, Mapping) else None
    if first is not None:
        return first
    raise DataError(
        f"cannot read a tensor from model outputs of type {type(outputs).__name__}; "
        "pass output_fn=callable(outputs) -> Tensor"
    )


class Scorer:
    """Base class of the scorers: one criterion, ``score(...) -> {key: scores}``.

    Parameters
    ----------
    options : ScorerOptions, optional
        The scorer's own options, an instance of its :attr:`options_model` (the model
        of its section under the rules' ``scoring:``, e.g. ``scoring.trainability``);
        its defaults when omitted. :func:`tedepr_fx.scoring.get_scorer` builds it from
        keyword arguments.
    density : float, optional
        Final density (kept / stored) for the iterative scorers (synflow, force).
    seed : int
        Seeds every random choice (random scorer, dropout during scoring).
    verbose : bool
        Show a tqdm bar for scoring longer than a second (only on a terminal).
    """

    name: ClassVar[str] = "base"
    needs_data: ClassVar[bool] = True
    options_model: ClassVar[type[ScorerOptions]] = ScorerOptions  # a scorer with options overrides it

    def __init__(self, options: ScorerOptions | None = None, *, density: float | None = None,
                 seed: int = 0, verbose: bool = True) -> None:
        options = self.options_model() if options is None else options
        if type(options) is not self.options_model:
            raise TypeError(f"scorer {self.name!r} takes {self.options_model.__name__}; "
                            f"got {type(options).__name__}")
        self.options = options
        self.density = None if density is None else check_density(density, f"scorer {self.name!r}")
        self.seed = int(seed)
        self.verbose = bool(verbose)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items())
        return f"{type(self).__name__}({options})"

    # -- public entry point -------------------------------------------------------
    def score(self, model: nn.Module, targets: Sequence[Target], batches: Sequence[Batch] | None,
              loss_fn: LossFn | None = None, *, example_inputs: Any = None,
              output_fn: OutputFn | None = None, context: str | None = None,
              density: float | None = None) -> dict[str, Tensor]:
        """Score every target; higher means keep.

        Parameters
        ----------
        model : nn.Module
            The model whose masked layers hold the targets.
        targets : sequence of Target
            The tensors to score (from :func:`collect_targets`).
        batches : sequence of (inputs, targets)
            Materialised batches; inputs may be a tensor, a tuple (positional
            arguments) or a dict (keyword arguments). May be empty for data-free scorers.
        loss_fn : callable, optional
            ``loss_fn(outputs, targets) -> scalar``; cross-entropy by default.
        example_inputs : optional
            Inputs of the data-free scorers (synflow); defaults to the first batch's inputs.
        output_fn : callable, optional
            Maps the model's raw output to the tensor ``loss_fn`` reads
            (default :func:`default_output_fn`).
        context : str, optional
            Who asked (e.g. ``"rule 'attention'"``), prefixed to error messages.
        density : float, optional
            Final density for iterative scorers; overrides the ``density`` option.

        Returns
        -------
        dict of str to Tensor
            One float tensor per target key, with the target tensor's shape.

        Raises
        ------
        DataError
            When the scorer needs data and ``batches`` is empty, or when a score is
            NaN or infinite (the message names the layer and tensor).
        """
        where = f"{context}: " if context else ""
        batches = list(batches) if batches is not None else []
        if self.needs_data and not batches:
            raise DataError(
                f"{where}scorer {self.name!r} needs data batches and got none; pass data=... "
                "or choose a data-free scorer (synflow, magnitude, random)"
            )
        if not targets:
            return {}
        keys = [t.key for t in targets]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{where}duplicate targets in {keys}")
        if density is not None:
            density = check_density(density, f"{where}scorer {self.name!r}")
        density = density if density is not None else self.density
        run = _Run(model, list(targets), batches, loss_fn or F.cross_entropy,
                   output_fn or default_output_fn, example_inputs, density, where)
        # fork the RNG so that dropout during scoring is seeded and the caller's stream is untouched
        cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
        with seeded(self.seed, cuda), _preserved(model), \
                math_attention(self.differentiates_twice):
            scores = self._score(run)
        if self.needs_data:
            check_not_all_zero(scores, f"{where}scorer {self.name!r} gave every entry a score of zero")
        out = {}
        for target in targets:
            s = scores[target.key].detach()
            if not torch.isfinite(s).all():
                raise DataError(
                    f"{where}scorer {self.name!r} produced non-finite scores (NaN or inf) for "
                    f"layer {target.layer!r} tensor {target.tensor_name!r} (key {target.key!r}); "
                    "check the data, the loss and the initialisation"
                )
            out[target.key] = s.to(torch.float32).reshape(target.tensor().shape).clone()
        return out

    @property
    def differentiates_twice(self) -> bool:
        """Whether scoring differentiates a gradient (GraSP, exact trainability): the fused
        attention kernels have no double backward, so scoring then runs PyTorch's math one."""
        return False

    def _score(self, run: _Run) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _progress(self, total: int, desc: str) -> tqdm[Any]:
        """A bar that appears only after 1 s, only on a terminal, only when verbose."""
        return tqdm(total=total, desc=f"scoring ({desc})", delay=1.0, leave=False,
                    disable=not (self.verbose and sys.stdout.isatty()))


def check_not_all_zero(scores: dict[str, Tensor], what: str) -> None:
    """A :class:`DataError` saying ``what`` when every score is zero: masks chosen from such
    scores would be arbitrary (the loss does not see the weights)."""
    if scores and not any(bool(s.ne(0).any()) for s in scores.values()):
        raise DataError(f"{what}: the loss does not depend on the weights (a constant loss, or an "
                        "output with no gradient path to them); masks chosen from such scores would be "
                        "arbitrary. Check loss_fn and output_fn")


def check_density(density: float, who: str) -> float:
    """Validate a density (kept / total) in (0, 1]."""
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not (
        0.0 < float(density) <= 1.0
    ) or math.isnan(float(density)):
        raise ValueError(f"{who}: density must be in (0, 1]; got {density!r}")
    return float(density)


class _Run:
    """One scoring call: the model, its targets and data, and the functional forward."""

    def __init__(self, model: nn.Module, targets: list[Target], batches: list[Batch],
                 loss_fn: LossFn, output_fn: OutputFn, example_inputs: Any,
                 density: float | None, where: str) -> None:
        self.model, self.targets, self.batches = model, targets, batches
        self.loss_fn, self.output_fn, self.example_inputs = loss_fn, output_fn, example_inputs
        self.density, self.where = density, where
        qualnames = {id(m): q for q, m in model.named_modules()}
        self.param_path: dict[str, str] = {}
        self.mask_path: dict[str, str] = {}
        for t in targets:
            if id(t.module) not in qualnames:
                raise ValueError(f"{where}target {t.key!r} is not a module of the model")
            q = qualnames[id(t.module)]
            self.param_path[t.key] = target_key(q, t.tensor_name)
            self.mask_path[t.key] = target_key(q, f"{t.tensor_name}_mask")

    def tensors(self) -> dict[str, Tensor]:
        """Detached copies of the targets' tensors, by key."""
        return {t.key: t.tensor().detach() for t in self.targets}

    def ones(self, requires_grad: bool = True) -> dict[str, Tensor]:
        """Float masks of ones, by key (differentiable when asked)."""
        return {t.key: torch.ones_like(t.tensor().detach()).requires_grad_(requires_grad)
                for t in self.targets}

    def forward(self, inputs: Any, masks: dict[str, Tensor],
                params: dict[str, Tensor] | None = None) -> Any:
        """Run the model with float ``masks`` (by key) and optional ``params`` (by parameter path)."""
        overrides = dict(params or {})
        for key, m in masks.items():
            overrides[self.mask_path[key]] = m
        if isinstance(inputs, dict):
            return functional_call(self.model, overrides, args=(), kwargs=inputs, strict=False)
        args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        return functional_call(self.model, overrides, args=args, strict=False)

    def loss(self, batch: Batch, masks: dict[str, Tensor], params: dict[str, Tensor] | None = None,
             scale: float = 1.0) -> Tensor:
        """``loss_fn(output_fn(model(inputs)) / scale, targets)`` with substituted tensors."""
        inputs, labels = batch
        out = self.output_fn(self.forward(inputs, masks, params))
        if not isinstance(out, Tensor):
            raise DataError(f"{self.where}output_fn returned {type(out).__name__}, not a tensor to take "
                            "the loss of; pass output_fn=callable(outputs) -> Tensor")
        try:
            loss = self.loss_fn(out / scale if scale != 1.0 else out, labels)
        except (RuntimeError, ValueError, IndexError, TypeError) as error:
            raise DataError(self._loss_failure(batch, out, labels, error)) from error
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise DataError(f"{self.where}loss_fn must return a scalar tensor; got {loss!r}")
        return loss.reshape(())


    def _loss_failure(self, batch: Batch, out: Tensor, labels: Any, error: BaseException) -> str:
        """Why the loss failed on ``batch``, in words: which batch, what the default loss
        expects, and how to pass another."""
        index = next((i for i, b in enumerate(self.batches) if b is batch), None)
        which = f"data batch {index}" if index is not None else "a batch"
        got = (f"targets of shape {tuple(labels.shape)} and dtype {labels.dtype}" if isinstance(labels, Tensor)
               else f"targets {type(labels).__name__}")
        what = f"{self.where}the loss failed on {which} (outputs of shape {tuple(out.shape)}, {got}): " \
               f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if out.dim() == 3:
            return (f"{what}; a sequence model? say which loss in the rules (scoring.loss: causal_lm, "
                    "masked_lm or classification) or pass loss_fn=")
        if self.loss_fn is F.cross_entropy:
            classes = out.shape[1] if out.dim() > 1 else "C"
            return (f"{what}; the default loss is cross-entropy, which expects integer (long) class "
                    f"indices of shape ({out.shape[0]},) in [0, {classes}), one per output row (or float "
                    "class probabilities of the outputs' shape); fix the targets, or pass "
                    "loss_fn=callable(outputs, targets) -> scalar (or 'classification', 'causal_lm', "
                    "'masked_lm')")
        return f"{what}; check the targets against loss_fn, or pass another loss_fn"


@contextmanager
def math_attention(enabled: bool = True) -> Iterator[None]:
    """Run ``scaled_dot_product_attention`` with PyTorch's math kernel inside the block.

    The fused CPU kernel (flash attention) has no derivative of its backward, so a double
    backward through ``nn.MultiheadAttention`` fails with "derivative for
    aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented". The
    math kernel computes the same attention with ordinary, twice-differentiable ops.
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: no kernel choice
        enabled = False
    if not enabled:
        yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield


@contextmanager
def _preserved(model: nn.Module) -> Iterator[None]:
    """Restore parameters, buffers (masks, BN statistics), grads and modes on exit."""
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    try:
        yield
    finally:
        with torch.no_grad():
            live = model.state_dict(keep_vars=True)
            for k, v in state.items():
                live[k].copy_(v)
        for n, p in model.named_parameters():
            p.grad = grads[n]
        for n, m in model.named_modules():
            m.training = modes[n]
