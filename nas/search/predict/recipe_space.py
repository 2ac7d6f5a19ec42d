"""The ``recipe_space:`` section of a space YAML: ranges of training-recipe fields searched with the architecture.

Each key is a field of ``nas.train.recipe.Recipe`` and its value is one of:

- a scalar: the field is fixed to that value (``optimizer: adamw``);
- a list: the choices (``batch_size: [32, 64, 128]``); numeric choices are ordinal, others categorical;
- a mapping ``{low, high, log}``: a range (integers for integer fields such as ``epochs``).

Example::

    recipe_space:
      lr: {low: 0.001, high: 0.05, log: true}
      epochs: {low: 4, high: 12}
      weight_decay: {low: 1.0e-5, high: 1.0e-2, log: true}
      label_smoothing: {low: 0.0, high: 0.2}
      dropout: {low: 0.0, high: 0.3}
      ema: [0.0, 0.99]
      mixup: [0.0, 0.2]
      batch_size: [32, 64, 128]
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from nas.errors import SpaceError
from nas.search.blackbox.decisions import Decision
from nas.train.recipe import Recipe

SEARCHABLE_FIELDS = [name for name in Recipe.model_fields if name != "seed"]
_INT_FIELDS = {name for name, f in Recipe.model_fields.items() if f.annotation is int}


class RangeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    low: float
    high: float
    log: bool = False


def _check_value(field: str, value: Any, where: str) -> Any:
    """Validate one value of a recipe field with the Recipe model itself (same bounds as a recipe file)."""
    try:
        return getattr(Recipe.model_validate({field: value}), field)
    except ValidationError as e:
        raise SpaceError(f"{where}: {value!r} is not a valid {field} ({e.errors()[0]['msg']})") from None


def parse_recipe_space(raw: dict | None, where: str = "recipe_space") -> tuple[list[Decision], dict[str, Any]]:
    """Turn a ``recipe_space`` mapping into recipe decisions and fixed recipe values.

    Errors are ``SpaceError`` naming ``recipe_space.<key>``.
    """
    if raw is None:
        return [], {}
    if not isinstance(raw, dict):
        raise SpaceError(f"{where}: must be a mapping of recipe fields to ranges")
    decisions: list[Decision] = []
    fixed: dict[str, Any] = {}
    for field, spec in raw.items():
        key = f"{where}.{field}"
        if field not in SEARCHABLE_FIELDS:
            raise SpaceError(f"{key}: unknown recipe field (searchable: {', '.join(SEARCHABLE_FIELDS)})")
        if isinstance(spec, list):
            if not spec:
                raise SpaceError(f"{key}: the list of choices is empty")
            choices = [_check_value(field, v, key) for v in spec]
            if len(set(map(str, choices))) != len(choices):
                raise SpaceError(f"{key}: repeated choices {spec}")
            if len(choices) == 1:
                fixed[field] = choices[0]
                continue
            numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices)
            if numeric:
                choices = sorted(choices)
            decisions.append(Decision(field, "ord" if numeric else "cat", tuple(choices)))
        elif isinstance(spec, dict):
            try:
                rng = RangeSpec.model_validate(spec)
            except ValidationError as e:
                err = e.errors()[0]
                sub = ".".join(str(x) for x in err["loc"])
                raise SpaceError(f"{key}{'.' + sub if sub else ''}: {err['msg']}") from None
            low, high = _check_value(field, rng.low, key), _check_value(field, rng.high, key)
            if not isinstance(low, (int, float)):
                raise SpaceError(f"{key}: {field} is not numeric; give a list of choices")
            if low >= high:
                raise SpaceError(f"{key}: low ({rng.low}) must be below high ({rng.high})")
            if rng.log and low <= 0:
                raise SpaceError(f"{key}: a log range needs low > 0 (got {rng.low})")
            if field in _INT_FIELDS:
                if rng.low != int(rng.low) or rng.high != int(rng.high):
                    raise SpaceError(f"{key}: {field} takes integers (got {rng.low}..{rng.high})")
                decisions.append(Decision(field, "int", low=int(low), high=int(high)))
            else:
                decisions.append(Decision(field, "float", low=float(low), high=float(high), log=rng.log))
        else:
            fixed[field] = _check_value(field, spec, key)
    return decisions, fixed
