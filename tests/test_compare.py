"""The compare table as pure functions."""

from __future__ import annotations

from mnist_mlops.evaluation.compare import (
    Row,
    kinds_table,
    render,
    render_markdown,
    render_text,
    table,
)


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


def run_row(model: str, n_params: float, **params: str) -> Row:
    """A row as the train stage logs it: model.*, train.* and data.* params."""
    return Row(model, f"{model}0000run", "exp", params,
               {"test_accuracy": 0.99, "n_params": n_params}, 0)


def test_an_ensemble_shows_its_architectures_size_and_how_many_it_averages() -> None:
    rows = [run_row("cnn_bn_aug", 653_652, **{"model.final": "ensemble",
                                             "train.final": "refit", "data.folds": "2"}),
            run_row("cnn_32_64_64", 93_322, **{"model.final": "None", "train.final": "refit",
                                               "data.folds": "2"}),
            run_row("lenet_28_50", 2 * 1_256_080, **{"model.final": "None",
                                                     "train.final": "ensemble",
                                                     "data.folds": "2"})]
    header, body = table(rows)
    sizes = {b[0]: b[header.index("params")] for b in body}
    assert sizes == {"cnn_bn_aug": "326,826 (ensemble of 2)", "cnn_32_64_64": "93,322",
                     "lenet_28_50": "1,256,080 (ensemble of 2)"}


def test_epochs_are_those_trained_not_the_recipes() -> None:
    capped = {"train.max_epochs": "2", "model.final": "None", "train.final": "refit"}
    rows = [run_row("cnn_deep_dropout", 1, **capped, **{"model.epochs": "60",
                                                        "model.effective_epochs": "2"}),
            run_row("cnn_32_64_64", 1, **capped, **{"model.epochs": "7",
                                                    "model.effective_epochs": "2"}),
            run_row("full", 1, **{"model.epochs": "10", "model.effective_epochs": "10",
                                  "train.max_epochs": "None"}),
            # a run from before model.effective_epochs was logged
            run_row("older", 1, **{"model.epochs": "20", "train.max_epochs": "3"})]
    header, body = table(rows)
    trained = {b[0]: b[header.index("epochs")] for b in body}
    assert trained == {"cnn_deep_dropout": "2 (recipe 60)", "cnn_32_64_64": "2 (recipe 7)",
                       "full": "10", "older": "3 (recipe 20)"}
    assert not any("epochs=" in b[header.index("differing params")] for b in body)


def test_the_real_world_table_shows_each_kind_ours_and_the_plain_resize() -> None:
    """A second table: real-world accuracy over all and per kind (in params.yaml's order of
    kinds), the plain resize's in brackets; a run from before kinds shows dashes, and no
    run with kinds means no table."""
    kinds = {"realworld_accuracy": 0.9, "realworld_accuracy/drawn": 0.95,
             "realworld_plain_accuracy/drawn": 0.3, "realworld_accuracy/photo": 0.92,
             "realworld_plain_accuracy/photo": 0.12, "realworld_accuracy/user": 1.0}
    new = Row("cnn", "cnn0000run", "exp", {}, {"test_accuracy": 0.99, **kinds}, 0)
    old = Row("mlp", "mlp0000run", "exp", {}, {"test_accuracy": 0.98,
                                               "realworld_accuracy": 0.8}, 0)
    found = kinds_table([new, old])
    assert found is not None
    header, body = found
    assert header == ["model", "real-world", "photo (plain)", "drawn (plain)", "user (plain)"]
    assert body == [["cnn", "0.9000", "0.920 (0.120)", "0.950 (0.300)", "1.000"],
                    ["mlp", "0.8000", "-", "-", "-"]]
    assert kinds_table([old]) is None
    text = render([table([new, old]), found])
    assert text.count("\n\n") == 1 and "drawn (plain)" in text
    md = render([table([new, old]), found], markdown=True)
    assert md.count("| model |") == 2
