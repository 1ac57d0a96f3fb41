"""The ``scoring:`` section: how scorers see data, and each scorer's own options.

Each scorer that has options declares them here as one model, written under the
scorer's name (``scoring: {trainability: {steps: 3}}``); the scorer classes of
:mod:`tedepr_fx.scoring` take exactly these options and
:func:`tedepr_fx.scoring.scorer_from_rules` passes them on. This module imports
neither torch nor anything that does.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tedepr_fx.names import SCORER_NAMES, ScorerName
from tedepr_fx.rules.strict import StrictModel


class ScorerOptions(StrictModel):
    """Options of one scorer; this base has none (snip, magnitude and random need none)."""


class TrainabilityOptions(ScorerOptions):
    """Options of the ``trainability`` scorer: the K SGD steps its meta-gradient looks through."""

    steps: int = Field(3, ge=1, description="K, the SGD steps the meta-gradient looks through.")
    inner_lr: float = Field(0.1, gt=0, description="Learning rate of those K inner steps.")
    first_order: bool = Field(False, description="Drop second-order terms of the meta-gradient (cheaper).")
    checkpoint: bool = Field(
        True, description="Recompute the K steps instead of keeping their graphs: exact, memory of about "
        "two training steps, about K more forward+backward passes.")
    iterations: int = Field(
        10, ge=1, description="Pruning rounds (exponential schedule, as SynFlow's): each round rescores "
        "the surviving network and prunes towards the final density; 1 scores once (ProsPr's one shot).")
    flow: bool = Field(
        True, description="Multiply each score by the entry's synaptic flow (SynFlow's path score, "
        "Tanaka et al. 2020), so that an entry on no input-output path scores zero.")


class GraspOptions(ScorerOptions):
    """Options of the ``grasp`` scorer (Wang et al., ICLR 2020)."""

    temperature: float = Field(
        200.0, gt=0, description="The logits are divided by this temperature before the loss.")


class SynflowOptions(ScorerOptions):
    """Options of the ``synflow`` scorer (Tanaka et al., NeurIPS 2020)."""

    iterations: int = Field(100, ge=1, description="Pruning rounds of the exponential schedule.")


class ForceOptions(ScorerOptions):
    """Options of the ``force`` scorer (de Jorge et al., ICLR 2021)."""

    iterations: int = Field(10, ge=1, description="Pruning rounds of the exponential schedule.")


class Scoring(StrictModel):
    """How the scorers see data, and each scorer's options under its name."""

    batches: int = Field(10, ge=1, description="Number of data batches the scorer uses.")
    batch_size: int | None = Field(
        None, ge=1, description="Cut each batch to this many samples (None: as given).")
    trainability: TrainabilityOptions = Field(
        TrainabilityOptions(), description="Options of the trainability scorer.")
    grasp: GraspOptions = Field(GraspOptions(), description="Options of the grasp scorer.")
    synflow: SynflowOptions = Field(SynflowOptions(), description="Options of the synflow scorer.")
    force: ForceOptions = Field(ForceOptions(), description="Options of the force scorer.")
    loss: Literal["classification", "causal_lm", "masked_lm"] | None = Field(
        None, description="The loss scorers differentiate: classification (cross-entropy, the default), "
        "causal_lm (next-token) or masked_lm; transform's loss_fn overrides it. Batches that are dicts "
        "with labels use the model's own .loss when neither is given.")
    rescale: Literal["none", "dense"] = Field(
        "none", description="After masking: none leaves the kept entries at their initial values; dense "
        "scales each masked layer so that its output varies with the input as much as the dense layer's did "
        "at initialisation (root mean square about the batch mean, on the first scoring batch or the example "
        "inputs), layer after layer (LSUV-style, Mishkin "
        "and Matas, ICLR 2016). It keeps the signal of a very sparse network from vanishing.")
    without_data: str = Field(
        "error", json_schema_extra={"enum": ["error", "synflow", "magnitude", "random"]},
        description="What scores a rule whose scorer needs data when transform is given none: a "
                    "data-free scorer (synflow, magnitude, random), or error (raise a DataError).")

    # the scorers that need no data (their class's needs_data is False; tests check the registry)
    DATA_FREE: ClassVar[tuple[ScorerName, ...]] = ("synflow", "magnitude", "random")

    @field_validator("without_data")
    @classmethod
    def _data_free(cls, value: str) -> str:
        if value == "error" or value in cls.DATA_FREE:
            return value
        choices = ", ".join(cls.DATA_FREE)
        if value in SCORER_NAMES:
            raise PydanticCustomError(
                "without_data", "scorer {got} needs data itself; choose a data-free scorer ({choices}) or error",
                {"got": repr(value), "choices": choices})
        raise PydanticCustomError("without_data", "must be a data-free scorer ({choices}) or error; got {got}",
                                  {"got": repr(value), "choices": choices})

    @model_validator(mode="before")
    @classmethod
    def _scorer_options_written_flat(cls, data: Any) -> Any:
        # rule files before scorers owned their options wrote `scoring: {steps: 3}`
        if not isinstance(data, dict):
            return data
        misplaced = {key: text for key in data if key not in cls.model_fields and (text := _misplaced(key))}
        if misplaced:
            texts = list(misplaced.values())
            raise PydanticCustomError("scorer_option", "{texts}", {
                "texts": "; ".join(texts), "at": [(key,) for key in misplaced], "each": texts})
        return data

    @classmethod
    def options_model(cls, scorer: str) -> type[ScorerOptions]:
        """The model of ``scorer``'s options: its section's, or :class:`ScorerOptions` if it has none."""
        field = cls.model_fields.get(scorer) if scorer in SCORER_NAMES else None
        model = field.annotation if field is not None else None
        return model if isinstance(model, type) and issubclass(model, ScorerOptions) else ScorerOptions

    def options(self, scorer: str) -> ScorerOptions:
        """The options of ``scorer`` given by this section (defaults where it says nothing)."""
        section = getattr(self, scorer) if self.options_model(scorer) is not ScorerOptions else None
        return section if isinstance(section, ScorerOptions) else ScorerOptions()


def scorers_reading(option: str) -> list[str]:
    """Names of the scorers that have ``option``, in :data:`~tedepr_fx.names.SCORER_NAMES` order."""
    return [name for name in SCORER_NAMES if option in Scoring.options_model(name).model_fields]


def _misplaced(key: str) -> str | None:
    """Why ``key`` is not a key of ``scoring:`` when it names a scorer option or a scorer."""
    owners = scorers_reading(key)
    if owners:
        return (f"{key!r} moved to " + " or ".join(f"scoring.{s}.{key}" for s in owners)
                + " (each scorer has its own options)")
    if key in SCORER_NAMES:
        return f"the {key} scorer has no options"
    return None
