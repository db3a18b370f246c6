"""The compare table as pure functions."""

from __future__ import annotations

from mnist_mlops.evaluation.compare import Row, render_markdown, render_text, table


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
