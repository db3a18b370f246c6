"""The promotion gate and the compare table as pure functions."""

from __future__ import annotations

import pytest

from mnist_mlops.compare import Row, render_markdown, render_text, table
from mnist_mlops.registry import Candidate, decide


def cand(version: str, acc: float) -> Candidate:
    return Candidate(version, f"m{version}", acc)


@pytest.mark.parametrize(("new", "champ", "promote", "needle"), [
    (0.95, None, True, "no champion yet"),
    (0.85, None, False, "below the floor 0.9000"),
    (0.9805, 0.98, False, "does not beat champion v1 (0.9800) by the margin 0.0010"),
    (0.9810, 0.98, True, "beats champion v1"),
    (0.99, 0.995, False, "does not beat"),
])
def test_gate(new: float, champ: float | None, promote: bool, needle: str) -> None:
    d = decide(cand("2", new), cand("1", champ) if champ is not None else None,
               margin=0.001, floor=0.9)
    assert d.promote is promote and needle in d.reason


def test_gate_never_promotes_the_champion_over_itself() -> None:
    d = decide(cand("3", 0.99), cand("3", 0.99), margin=0.0, floor=0.0)
    assert not d.promote and "already the champion" in d.reason


def row(model: str, acc: float, **params: str) -> Row:
    return Row(model, f"{model}0000run", "exp", {f"model.{k}": v for k, v in params.items()},
               {"test_accuracy": acc, "cv_val_accuracy_mean": acc - 0.01,
                "cv_val_accuracy_std": 0.002, "train_time_s": 12.0, "n_params": 1000.0}, 0)


def test_table_shows_only_params_that_differ() -> None:
    rows = [row("base", 0.98, batch_size="128", dropout="0.2"),
            row("b32", 0.97, batch_size="32", dropout="0.2"),
            row("nodrop", 0.96, batch_size="128", dropout="0.0")]
    header, body = table(rows)
    assert [b[1] for b in body] == ["-", "batch_size=32", "dropout=0.0"]
    assert body[0][2] == "0.9700 ± 0.0020" and body[0][3] == "0.9800"
    text = render_text(header, body)
    assert text.splitlines()[0].startswith("model") and "batch_size=32" in text
    md = render_markdown(header, body)
    assert md.splitlines()[1].count("---") == len(header)
