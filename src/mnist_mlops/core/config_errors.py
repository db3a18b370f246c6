"""pydantic's validation errors as one line a person can act on: the key path as written
in params.yaml (`models.mlp_512x2.dropout`), the problem, and what is allowed."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from mnist_mlops.core.config import ModelParams, Params

PROBLEMS = {
    "int_type": "must be an integer", "int_from_float": "must be an integer",
    "float_type": "must be a number", "bool_type": "must be true or false",
    "string_type": "must be a string", "dict_type": "must be a mapping",
    "tuple_type": "must be a list", "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}
BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
          "less_than": "<"}


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys a section at `loc` (a pydantic error location) accepts."""
    model: Any = Params
    for part in loc:
        field = model.model_fields.get(str(part)) if isinstance(model, type) else None
        if field is None:
            if model is dict[str, ModelParams] or str(loc[0]) == "models":
                model = ModelParams
            continue
        model = field.annotation
        if isinstance(model, str):
            model = {"dict[str, ModelParams]": dict[str, ModelParams]}.get(model, model)
    names = list(model.model_fields) if isinstance(model, type) and issubclass(
        model, BaseModel) else []
    return [n for n in names if n != "name"]


def describe(err: dict[str, Any]) -> str:
    """One pydantic error as `params: <key path> <problem>`."""
    loc = tuple(p for p in err["loc"] if p not in ("function-after", "function-before"))
    key = ".".join(str(p) for p in loc)
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "extra_forbidden":
        if len(loc) == 1:
            return (f"params: unknown top-level key {key!r}; allowed: "
                    f"{', '.join(Params.model_fields)}")
        return (f"params: unknown key {key}; allowed keys under {'.'.join(map(str, loc[:-1]))}: "
                f"{', '.join(_allowed_keys(loc[:-1]))}")
    if kind == "missing":
        return f"params: missing required key {key}"
    if kind == "literal_error":
        return f"params: {key} is {value!r}; expected one of {ctx.get('expected')}"
    if kind in BOUNDS:
        bound = next(iter(ctx.values()))
        return f"params: {key} must be {BOUNDS[kind]} {bound}, got {value!r}"
    if kind == "multiple_of":
        return f"params: {key} must be a multiple of {ctx['multiple_of']}, got {value!r}"
    if kind == "too_short":
        return f"params: {key} must not be empty"
    if kind in PROBLEMS:
        return f"params: {key} {PROBLEMS[kind]}, got {value!r}"
    message = str(err["msg"]).removeprefix("Value error, ")
    if message.startswith("@"):                  # a section's check names its own field
        field, _, message = message[1:].partition(" ")
        key = f"{key}.{field}" if key else field
    return f"params: {key} {message}"
