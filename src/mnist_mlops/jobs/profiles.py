"""Named profiles: params overrides that run the whole pipeline for a purpose.

`quick` (a stratified 3,000-image subset, 2 folds, at most 2 epochs per model, 100 pictures
of each real-world kind) checks the plumbing in minutes: `make quick` passes it to `dvc exp
run` (it asks `mnist-mlops params --overrides quick`), and `mnist-mlops retrain --profile
quick` writes it into params.yaml. This is the one place its values are written.
"""

from __future__ import annotations

from typing import Any

from mnist_mlops.core.runtime import UserError

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"preprocess.subset": 3000, "preprocess.folds": 2, "train.max_epochs": 2,
              "realworld.count": 100},
}


def profile(name: str) -> dict[str, Any]:
    """The overrides of profile `name` (dotted param key -> value)."""
    if name not in PROFILES:
        raise UserError(f"no profile {name!r}; the profiles are {', '.join(PROFILES)}")
    return PROFILES[name]


