"""What a recipe means for one training: how many epochs it runs, in which precision, and
which model ships.

They decide what `train@<model>` makes, so they live with the training code that dvc.yaml
makes the stage depend on, not with the schema that only validates the values.
"""

from __future__ import annotations

from mnist_mlops.core.config import FinalModel, ModelParams, TrainParams


def effective_epochs(p: ModelParams, train: TrainParams) -> int:
    """The recipe's epochs, capped by `train.max_epochs` (the quick profile's cap)."""
    return min(p.epochs, train.max_epochs) if train.max_epochs else p.epochs


def final_kind(p: ModelParams, train: TrainParams) -> FinalModel:
    """What ships: the recipe's own choice if it makes one, else `train.final`."""
    return p.final or train.final


def effective_train(p: ModelParams, train: TrainParams) -> TrainParams:
    """`train` as model `p` trains: the recipe's own `mixed_precision` where it sets one
    (measured per recipe: docs/backends.md "Mixed precision on the CPU")."""
    if p.mixed_precision is None:
        return train
    return train.model_copy(update={"mixed_precision": p.mixed_precision})
