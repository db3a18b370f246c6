"""pydantic's validation errors as one line a person can act on: the key path as written
in params.yaml (`models.mlp_512x2.dropout`), the problem, and what is allowed.

Generic over the schema: each concern validates its own section (core/config.py the
pipeline's, monitoring/settings.py `monitor:`, sweep/settings.py `sweep:`) and hands its
root model here, so this module knows none of them.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

PROBLEMS = {
    "int_type": "must be an integer", "int_from_float": "must be an integer",
    "float_type": "must be a number", "bool_type": "must be true or false",
    "string_type": "must be a string", "dict_type": "must be a mapping",
    "tuple_type": "must be a list", "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}
BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
          "less_than": "<"}


def _inner(annotation: Any, key: Any) -> Any:
    """The type one step down `annotation` at `key`: a model's field, a mapping's value."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _inner(get_args(annotation)[0], key)
    if origin in (Union, types.UnionType):
        models = [a for a in get_args(annotation) if _is_model(a)]
        return _inner(models[0], key) if models else None
    if origin is dict:
        return get_args(annotation)[1]
    if _is_model(annotation):
        field = annotation.model_fields.get(str(key))
        return field.annotation if field is not None else None
    return None


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _allowed_keys(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys the section at `loc` (a pydantic error location) accepts."""
    node: Any = root
    for part in loc:
        node = _inner(node, part)
        if node is None:
            return []
    while get_origin(node) is Annotated:
        node = get_args(node)[0]
    return [n for n in node.model_fields if n != "name"] if _is_model(node) else []


def describe(err: dict[str, Any], root: type[BaseModel], prefix: str = "") -> str:
    """One pydantic error of validating `root` as `params: <key path> <problem>`;
    `prefix` is where `root` sits in params.yaml (`monitor`), empty for the whole file."""
    loc = tuple(p for p in err["loc"] if p not in ("function-after", "function-before"))
    key = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc)
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "extra_forbidden":
        if len(loc) == 1 and not prefix:
            return (f"params: unknown top-level key {key!r}; allowed: "
                    f"{', '.join(root.model_fields)}")
        where = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc[:-1])
        return (f"params: unknown key {key}; allowed keys under {where}: "
                f"{', '.join(_allowed_keys(root, loc[:-1]))}")
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


def one_line(exc: ValidationError, root: type[BaseModel], prefix: str = "") -> str:
    """The first problem of `exc`, and how many more there are."""
    errors = exc.errors(include_url=False)
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return describe(errors[0], root, prefix) + more
