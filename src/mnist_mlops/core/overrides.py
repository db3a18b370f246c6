"""Params overrides as `dvc exp run -S key=value` parses them (YAML flow values).

Written by a sweep's winner (`dvc exp run -S models.<model>.<key>=...`), the quick profile
(`make quick`) and the retrain loop (which writes them into params.yaml with DVC's own
editor): one formatting for all three, so that a float stays a float.
"""

from __future__ import annotations

import json
from typing import Any


def yaml_value(value: Any) -> str:
    """A value as `dvc exp run -S` parses it (YAML flow): [128,128], null, 0.001, true."""
    if isinstance(value, tuple | list):
        return "[" + ",".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, float):   # a float keeps its point: YAML reads 1e-05 as a string
        mantissa, e, exponent = repr(value).partition("e")
        return f"{mantissa if '.' in mantissa else mantissa + '.0'}{e}{exponent}"
    return json.dumps(value) if not isinstance(value, str) else value


def assignments(overrides: dict[str, Any]) -> list[str]:
    """`key=value` for each dotted param key, in the given order."""
    return [f"{key}={yaml_value(value)}" for key, value in overrides.items()]


def dvc_args(overrides: dict[str, Any]) -> list[str]:
    """`-S key=value` arguments of `dvc exp run`."""
    return [arg for a in assignments(overrides) for arg in ("-S", a)]
