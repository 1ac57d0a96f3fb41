"""The rule language, version 1, as pydantic models.

One model per concept (:class:`Budget`, :class:`~tedepr_fx.rules.scoring.Scoring`, :class:`Defaults`,
:class:`Match`, one ``<Format>Factorization`` per registered format (:data:`FACTORIZATIONS`),
:class:`Rule`, :class:`RuleSet`). Every model forbids unknown keys and validates
strictly: a YAML ``1`` is an int, ``1.0`` a float, and ``true`` is never a number.
The JSON Schema that editors use comes from :meth:`RuleSet.model_json_schema`.

Errors raised by validators that must point at a specific key carry that key in
their context (``ctx["at"]``: a list of location suffixes) so that the loader can
report ``file:line:column`` for it rather than for the enclosing mapping.

This module imports neither torch nor anything that does.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, TypeAlias, Union, cast

from pydantic import (
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tedepr_fx.errors import LocatedError, Location, RuleError
from tedepr_fx.names import FORMATS, FormatEntry, ScorerName
from tedepr_fx.ranks import RANK_HELP, RankSpec, check_rank_spec
from tedepr_fx.rules.regex import NameMatcher, compile_rule_regex
from tedepr_fx.rules.scoring import Scoring
from tedepr_fx.rules.strict import StrictModel as _Model

InitName = Literal["scratch", "decompose"]


def _rank(value: object) -> Any:
    # the one rank validator (tedepr_fx.ranks) so that a rank means the same in rules and layers
    try:
        return check_rank_spec(value)
    except ValueError as error:
        raise PydanticCustomError("rank", str(error)) from None


RankField = Annotated[
    int | list[int] | float | Literal["full", "auto"],
    PlainValidator(_rank),
    WithJsonSchema({
        "description": "Rank: " + RANK_HELP.removeprefix("must be ") + ".",
        "anyOf": [
            {"type": "integer", "minimum": 1},
            {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
            {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            {"enum": ["full", "auto"]},
        ],
    }),
]


def _version(value: object) -> int:
    # Literal[1] would accept True and 1.0; the version is the int 1 and nothing else
    if type(value) is not int or value != 1:
        raise PydanticCustomError("version", "must be 1 (the only version of the rule language); got {got}",
                                  {"got": repr(value)})
    return value


VersionField = Annotated[
    Literal[1],
    PlainValidator(_version),
    WithJsonSchema({"const": 1, "description": "Version of the rule language; only 1 exists."}),
]


class Budget(_Model):
    """How much of a layer survives fine-grained pruning at initialization.

    The share is counted against the layer's original dense weight count by default
    (``of: dense``), as the sparsity claims of TEDEPR are stated (Liu et al., IEEE
    TPAMI 46(12), 2024).
    """

    sparsity: float | None = Field(
        None, ge=0.0, lt=1.0, description="Share of the weights removed, in [0, 1). Exactly one of sparsity/density.")
    density: float | None = Field(
        None, gt=0.0, le=1.0, description="Share of the weights kept, in (0, 1]. Exactly one of sparsity/density.")
    of: Literal["dense", "factors"] = Field(
        "dense", description="What the share is counted against: the original dense weight or the factors.")
    allocation: Literal["global", "uniform", "erk"] = Field(
        "global", description="How the budget is spread over the layers that share it.")
    min_density: float = Field(
        0.0005, ge=0.0, le=1.0, description="Floor of the kept share per layer, in [0, 1], so that no layer is emptied.")
    min_kept: int = Field(
        0, ge=0, description="At least this many entries kept in each layer of the rule, whatever the ranking "
        "(capped at what the layer stores); they count towards the shared budget.")
    flops: float | None = Field(
        None, gt=0.0, le=1.0, description="Most FLOPs a factorized layer may cost, as a share of its dense "
        "layer's FLOPs at the example input, in (0, 1]; rank: auto picks the largest rank within it, and a "
        "given rank above it is an error. Pruned layers keep their dense FLOPs and are not bounded by it.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Budget:
        if (self.sparsity is None) == (self.density is None):
            both = self.sparsity is not None
            raise PydanticCustomError(
                "budget_share",
                "give exactly one of 'sparsity' and 'density'" + ("; got both" if both else "; got neither"),
                {"at": [("density",)] if both else [()]},
            )
        return self

    @property
    def target_density(self) -> float:
        """Share of the counted weights that is kept: ``1 - sparsity``, or ``density``."""
        # _exactly_one guarantees sparsity is set whenever density is not
        return self.density if self.density is not None else 1.0 - cast(float, self.sparsity)


class Floor(_Model):
    """Floors of one rule's layers inside the budget they share with other rules.

    A rule's own ``budget`` makes a pool of its own whose share ``with_budget`` leaves as
    written; ``floor`` keeps the layers in the shared pool (the default budget follows the
    sparsity asked for) and only raises what each of them keeps at least.
    """

    min_kept: int = Field(
        0, ge=0, description="At least this many entries kept in each layer of the rule (its best-scored "
        "ones, capped at what it stores), taken from the budget the rule shares.")
    min_density: float | None = Field(
        None, ge=0.0, le=1.0, description="Replaces the budget's min_density for this rule's layers: at least "
        "this share of every prunable tensor, in [0, 1].")


class Defaults(_Model):
    """What a rule uses when it does not say otherwise."""

    init: InitName = Field(
        "scratch", description="scratch: fresh factors; decompose: factors from the layer's weights.")
    scorer: ScorerName = Field("trainability", description="Which score decides what is pruned.")
    budget: Budget | None = Field(None, description="Fine-grained pruning budget; absent: no pruning.")


class Match(_Model):
    """Which layers a rule applies to: every selector given must hold."""

    type: str | list[str] | None = Field(
        None, description="Class name(s) or dotted path(s) the layer answers to, e.g. Linear.")
    name: str | None = Field(
        None, description="fnmatch-style glob on the qualified module name (case-sensitive).")
    regex: str | None = Field(
        None, description="Regular expression that must match the whole qualified name (instead of name).")
    min_params: int | None = Field(None, ge=0, description="Least dense weight count.")
    max_params: int | None = Field(None, ge=0, description="Largest dense weight count.")

    _pattern: NameMatcher | None = PrivateAttr(None)  # RE2: linear time in the name's length

    @field_validator("type")
    @classmethod
    def _check_type(cls, value: str | list[str] | None) -> str | list[str] | None:
        names = [value] if isinstance(value, str) else value or []
        if isinstance(value, list) and not value:
            raise PydanticCustomError("type_list", "must name at least one layer type")
        for n in names:
            if not n.strip():
                raise PydanticCustomError("type_name", "a layer type name cannot be empty")
        return value

    @field_validator("regex")
    @classmethod
    def _check_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                compile_rule_regex(value)
            except ValueError as error:
                raise PydanticCustomError("regex", "{reason}; got {got}",
                                          {"reason": str(error), "got": repr(value)}) from None
        return value

    @model_validator(mode="after")
    def _check_selectors(self) -> Match:
        if self.name is not None and self.regex is not None:
            raise PydanticCustomError("selector", "give either 'name' or 'regex', not both",
                                      {"at": [("regex",)]})
        if all(v is None for v in (self.type, self.name, self.regex, self.min_params, self.max_params)):
            raise PydanticCustomError(
                "selector", "needs at least one selector: type, name, regex, min_params or max_params")
        if self.min_params is not None and self.max_params is not None and self.min_params > self.max_params:
            raise PydanticCustomError(
                "selector", "min_params ({lo}) is larger than max_params ({hi})",
                {"lo": self.min_params, "hi": self.max_params, "at": [("max_params",)]})
        self._pattern = compile_rule_regex(self.regex) if self.regex is not None else None
        return self

    def accepts(self, name: str, type_names: Collection[str], dense_params: int) -> bool:
        """Whether a layer with this qualified name, type names and dense weight count matches."""
        if self.type is not None:
            wanted = [self.type] if isinstance(self.type, str) else self.type
            if not any(t in type_names for t in wanted):
                return False
        if self.name is not None and not fnmatch.fnmatchcase(name, self.name):
            return False
        if self._pattern is not None and self._pattern.fullmatch(name) is None:
            return False
        if self.min_params is not None and dense_params < self.min_params:
            return False
        if self.max_params is not None and dense_params > self.max_params:
            return False
        return True


class TTModes(_Model):
    """Factorization of a layer's input and output sizes into TT-matrix modes (formats with modes)."""

    in_: list[int] = Field(alias="in", min_length=2, description="Input modes; product >= in features.")
    out: list[int] = Field(min_length=2, description="Output modes, as many as input modes.")

    @field_validator("in_", "out")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(m < 1 for m in value):
            raise PydanticCustomError("modes", "modes must be ints >= 1; got {got}", {"got": value})
        return value

    @model_validator(mode="after")
    def _same_length(self) -> TTModes:
        if len(self.in_) != len(self.out):
            raise PydanticCustomError(
                "modes", "'in' and 'out' need the same number of modes; got {a} and {b}",
                {"a": len(self.in_), "b": len(self.out), "at": [("out",)]})
        return self


class _FactorizationBase(_Model):
    """What every ``factorize:`` model checks: ``min_rank`` goes with ``rank: auto`` only."""

    @model_validator(mode="after")
    def _min_rank_with_auto(self) -> _FactorizationBase:
        rank, min_rank = getattr(self, "rank", None), getattr(self, "min_rank", None)
        if min_rank is not None and rank != "auto":
            raise PydanticCustomError(
                "min_rank", "min_rank is a floor for rank: auto; with rank {rank} the rank is already "
                "given (drop min_rank, or write rank: auto)", {"rank": rank, "at": [("min_rank",)]})
        return self


def _factorization_model(name: str, entry: FormatEntry) -> type[_Model]:
    """The ``factorize:`` model of one registered format: ``format``, ``rank`` and, where the
    format has modes, ``modes``. Built from :data:`tedepr_fx.names.FORMATS`, so a new format
    needs no edit here."""
    fields: dict[str, Any] = {
        "format": (Literal[name], Field(description=f"{name}: {entry.description}")),
        "rank": (RankField, ...),
        "min_rank": (int | None, Field(
            None, ge=1, description="With rank auto: never a smaller uniform rank than this, whatever the "
            "budget (the format's own floor applies otherwise; capped at the full rank).")),
    }
    if entry.modes:
        fields["modes"] = (Literal["auto"] | TTModes,
                           Field("auto", description="auto, or {in: [...], out: [...]} (same length >= 2)."))
    return create_model(f"{entry.title}Factorization", __base__=_FactorizationBase, __doc__=entry.description,
                        __module__=__name__, **fields)


FACTORIZATIONS: dict[str, type[_Model]] = {name: _factorization_model(name, e) for name, e in FORMATS.items()}
# the names other modules import (the loader's known keys, tedepr_fx.rules); any format works the same
TTFactorization = FACTORIZATIONS["tt"]
TuckerFactorization = FACTORIZATIONS["tucker"]



class FactorizationFields(Protocol):
    """What every ``<Format>Factorization`` model has: the static type of :data:`Factorization`
    (the models themselves are built at import time, from the registry)."""

    @property
    def format(self) -> str: ...

    @property
    def rank(self) -> RankSpec: ...


if TYPE_CHECKING:
    Factorization: TypeAlias = FactorizationFields
else:  # the union pydantic validates, tagged by ``format``
    Factorization = Annotated[Union[tuple(FACTORIZATIONS.values())], Field(discriminator="format")]  # noqa: UP007


class Rule(_Model):
    """One rule: a selector, an action, and how that action is carried out."""

    name: str = Field(description="Unique name of the rule (reports and errors refer to it).")
    match: Match
    action: Literal["factorize", "prune", "keep"] = Field(
        description="factorize: a low-rank format (then prune the factors); prune: fine-grained on the "
                    "dense weight; keep: leave the layer alone.")
    factorize: Factorization | None = Field(
        None, description="Required when action is factorize, forbidden otherwise.")
    budget: Budget | None = Field(None, description="Overrides defaults.budget for this rule.")
    floor: Floor | None = Field(
        None, description="Per-layer floors inside the budget the rule uses (no pool of its own).")
    scorer: ScorerName | None = Field(None, description="Overrides defaults.scorer for this rule.")
    init: InitName | None = Field(None, description="Overrides defaults.init for this rule.")

    @field_validator("name", mode="before")
    @classmethod
    def _not_repeated(cls, value: object) -> object:
        if isinstance(value, _RepeatedName):
            raise PydanticCustomError(
                "duplicate_rule_name", "duplicate rule name '{name}' (first used by rules[{first}])",
                {"name": value.name, "first": value.first})
        return value

    @field_validator("name")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("rule_name", "a rule name cannot be empty")
        return value

    @model_validator(mode="after")
    def _factorize_iff_action(self) -> Rule:
        if self.action == "factorize" and self.factorize is None:
            raise PydanticCustomError(
                "factorize", "action is factorize, so a 'factorize:' section (format, rank) is required")
        if self.action != "factorize" and self.factorize is not None:
            raise PydanticCustomError(
                "factorize", "a 'factorize:' section is only allowed with action: factorize "
                             "(action is {action})", {"action": self.action, "at": [("factorize",)]})
        if self.action == "keep" and self.floor is not None:
            raise PydanticCustomError(
                "floor", "a 'floor:' section needs a rule that prunes (action is keep: nothing is pruned)",
                {"at": [("floor",)]})
        return self

    def effective_budget(self, defaults: Defaults) -> Budget | None:
        """This rule's budget, else the defaults' (None: no fine-grained pruning)."""
        return self.budget if self.budget is not None else defaults.budget

    def effective_scorer(self, defaults: Defaults) -> str:
        """This rule's scorer, else the defaults'."""
        return self.scorer if self.scorer is not None else defaults.scorer

    def effective_init(self, defaults: Defaults) -> str:
        """This rule's init, else the defaults'."""
        return self.init if self.init is not None else defaults.init


@dataclass(frozen=True)
class _RepeatedName:
    """A rule name already used by ``rules[first]``; :class:`Rule` refuses it."""

    name: str
    first: int

    def __repr__(self) -> str:  # pydantic shows the input as the name that was written
        return repr(self.name)


class RuleSet(_Model):
    """A whole rule file: the first rule whose match accepts a layer decides for it.

    Build one with :func:`tedepr_fx.load_rules`, which resolves ``extends`` (the
    result holds the merged rules and ``extends`` is None) and reports errors with
    their file, line and column.
    """

    model_config = ConfigDict(
        title="tedepr_fx rule file",
        json_schema_extra={"description": "TEDEPR policy: which layers are factorized ("
                                          + " / ".join(e.title for e in FORMATS.values())
                                          + ") and pruned at initialization. See docs/rules.md."},
    )

    version: VersionField
    extends: str | None = Field(
        None, description="Base rule file, relative to this file; its rules come after this file's.")
    defaults: Defaults = Field(default_factory=Defaults)
    scoring: Scoring = Field(default_factory=Scoring)
    rules: list[Rule] = Field(min_length=1, description="Tried in order; the first match decides.")

    _source: str | None = PrivateAttr(None)
    _rule_locations: list[Location] = PrivateAttr(default_factory=list)  # where each rule is written

    @model_validator(mode="before")
    @classmethod
    def _mark_repeated_names(cls, data: Any) -> Any:
        # the one check of unique names: Rule reports each repeat at rules[i].name, next to that
        # rule's other errors, so that a file with several mistakes shows them all at once
        rules = data.get("rules") if isinstance(data, dict) else None
        if not isinstance(rules, list):
            return data
        first: dict[str, int] = {}
        marked: list[Any] = []
        for i, rule in enumerate(rules):
            fields = rule.model_dump(by_alias=True, exclude_none=True) if isinstance(rule, Rule) else rule
            name = fields.get("name") if isinstance(fields, dict) else None
            if isinstance(name, str) and name in first:
                rule = {**fields, "name": _RepeatedName(name, first[name])}
            elif isinstance(name, str):
                first[name] = i
            marked.append(rule)
        return {**data, "rules": marked}

    @model_validator(mode="after")
    def _floors_within_budgets(self) -> RuleSet:
        # A budget is shared by the rules that use it (defaults.budget by every rule without its
        # own). Where all of them count the floor and the share against the same entries (pruned
        # dense weights, or ``of: factors``), a floor above the share keeps more than the budget
        # whatever the scores. Where a factorized layer under ``of: dense`` shares it, its factors
        # are floored against a share of its dense weight: the floors win only where they exceed
        # the pooled budget, with a warning and a report note.
        groups: dict[int | None, list[Rule]] = {}  # by the index of the rule owning the budget
        for i, rule in enumerate(self.rules):
            if rule.action != "keep" and rule.effective_budget(self.defaults) is not None:
                groups.setdefault(i if rule.budget is not None else None, []).append(rule)
        for owner, rules in groups.items():
            budget = rules[0].effective_budget(self.defaults)
            if (budget is None or "min_density" not in budget.model_fields_set
                    or budget.min_density <= budget.target_density
                    or any(r.action == "factorize" and budget.of == "dense" for r in rules)):
                continue
            at = ("rules", owner, "budget", "min_density") if owner is not None else (
                "defaults", "budget", "min_density")
            raise PydanticCustomError(
                "min_density", "min_density {floor} is larger than the budget's density {density}, which "
                "rule(s) {rules} share: every layer would keep more than its budget; lower min_density "
                "or raise the density", {"floor": budget.min_density, "density": round(budget.target_density, 6),
                                         "rules": ", ".join(f"'{r.name}' ({r.action})" for r in rules),
                                         "at": [at]})
        for i, rule in enumerate(self.rules):
            if rule.floor is None or rule.action == "keep":
                continue
            budget = rule.effective_budget(self.defaults)
            if budget is None:
                raise PydanticCustomError(
                    "floor", "rule '{rule}' has a 'floor:' but no budget (neither its own nor defaults.budget): "
                    "without pruning there is nothing to floor", {"rule": rule.name, "at": [("rules", i, "floor")]})
            floor = rule.floor.min_density
            if (floor is not None and floor > budget.target_density
                    and not (rule.action == "factorize" and budget.of == "dense")):
                raise PydanticCustomError(
                    "min_density", "floor.min_density {floor} of rule '{rule}' is larger than its budget's density "
                    "{density}: every layer of the rule would keep more than its budget; lower it or raise the "
                    "density", {"floor": floor, "rule": rule.name, "density": round(budget.target_density, 6),
                                "at": [("rules", i, "floor", "min_density")]})
        return self

    def rule_where(self, index: int) -> Location:
        """Where rule ``index`` is written (the file alone when unknown)."""
        if index < len(self._rule_locations):
            return self._rule_locations[index]
        return Location(self._source or "<rules>")

    def rule_location(self, index: int) -> str:
        """``file:line:column`` where rule ``index`` is written (the file alone when unknown)."""
        return str(self.rule_where(index))

    @property
    def source(self) -> str | None:
        """The file this rule set was loaded from (None for text, dicts and copies made by hand)."""
        return self._source

    def first_match(self, name: str, type_names: Collection[str], dense_params: int) -> Rule | None:
        """The first rule, in file order, whose match accepts the layer; None if none does."""
        for rule in self.rules:
            if rule.match.accepts(name, type_names, dense_params):
                return rule
        return None

    def to_yaml(self) -> str:
        """YAML text that loads back to an equal rule set (``extends`` already merged in)."""
        import yaml

        data = self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"extends"})
        return "version: 1\n" + yaml.safe_dump(
            {k: v for k, v in data.items() if k != "version"}, sort_keys=False, default_flow_style=None)

    def with_budget(self, *, sparsity: float | None = None, density: float | None = None) -> RuleSet:
        """A copy whose ``defaults.budget`` keeps ``1 - sparsity`` (or ``density``) of the weights.

        The other budget keys (``of``, ``allocation``, ``min_density``) are kept; per-rule
        budgets are left as they are. Raises :class:`RuleError` for an invalid share.
        """
        if (sparsity is None) == (density is None):
            raise RuleError(LocatedError(Location("<with_budget>"), "defaults.budget",
                                         "give exactly one of 'sparsity' and 'density'"))
        data = self.model_dump(by_alias=True, exclude_none=True)
        budget = dict(data["defaults"].get("budget") or {})
        budget.pop("sparsity", None)
        budget.pop("density", None)
        budget["sparsity" if sparsity is not None else "density"] = sparsity if sparsity is not None else density
        data["defaults"]["budget"] = budget
        return self._revalidated(data, "<with_budget>")

    def with_scorer(self, scorer: str) -> RuleSet:
        """A copy in which every rule is scored by ``scorer`` (``defaults.scorer`` and each
        rule's own ``scorer``). Raises :class:`RuleError` for an unknown scorer."""
        data = self.model_dump(by_alias=True, exclude_none=True)
        data["defaults"]["scorer"] = scorer
        for rule in data["rules"]:
            rule.pop("scorer", None)
        return self._revalidated(data, "<with_scorer>")

    def _revalidated(self, data: dict[str, Any], where: str) -> RuleSet:
        """``data`` (an edited dump of this rule set) validated again, keeping the source."""
        try:
            copy = RuleSet.model_validate(data)
        except ValidationError as error:
            raise RuleError([LocatedError(Location(where), ".".join(map(str, e["loc"])), e["msg"])
                             for e in error.errors()]) from None
        copy._source = self._source
        copy._rule_locations = list(self._rule_locations)
        return copy
