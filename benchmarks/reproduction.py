"""The reproduction table: this project's results next to what each tutorial reports.

Reads the latest finished run of each model from MLflow (run `dvc repro` first) and prints
Markdown. A row is "full" only when it ran the tutorial's recipe unshortened (all 60,000
training images, the recipe's epochs, 4 folds); anything else is marked "shortened".

    python benchmarks/reproduction.py [--markdown FILE]
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from common import machine

# From ../shared/spec/architectures.md: (recipe epochs, batch, what the tutorial reports)
SPEC = {
    "fc_1024_512": (20, 64, "train acc 0.9815 (last epoch; no test figure)"),
    "lenet_28_50": (10, 32, "train acc 0.9881 (last epoch; no test figure)"),
    "mlp_512x2": (10, 128, "test 98.02%"),
    "cnn_32_64_64": (7, 32, "test ~99%"),
    "cnn_28_dense128": (10, 32, "test 98.5%"),
    "cnn_deep_dropout": (60, 512, '"very high" (no figure)'),
    # the project's own model: not a tutorial; what published small CNNs reach instead
    "cnn_bn_aug": (15, 64, "anchors: 99.65% one net (Deotte, 45 epochs, mean of 100); "
                           "99.74% 15-net ensemble; 99.87% 3-model vote (An et al. 2020)"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    from mlflow.tracking import MlflowClient

    from mnist_mlops.core.config import load_params
    from mnist_mlops.evaluation.compare import fetch_rows
    from mnist_mlops.tracking import mlflow_io

    params = load_params()
    mlflow_io.setup(params.mlflow)
    client = MlflowClient()
    rows = {r.model: r for r in fetch_rows(client, params.mlflow.experiment)}
    lines = [
        "| model | schedule | epochs | batch | folds | CV acc (mean ± std) | test acc "
        "| one net of the ensemble | real-world acc | tutorial reports | train wall time "
        "| device |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---|---:|---|",
    ]
    for name, (epochs, batch, reported) in SPEC.items():
        r = rows.get(name)
        if r is None:
            lines.append(f"| {name} | not run | {epochs} | {batch} | - | - | - | - | - "
                         f"| {reported} | - | - |")
            continue
        p, m = r.params, r.metrics
        ran_epochs = int(p["model.effective_epochs"])
        full = (ran_epochs == epochs and int(p["model.batch_size"]) == batch
                and int(p["data.n_train_images"]) == 60000 and int(p["data.folds"]) == 4)
        device = client.get_run(r.run_id).data.tags.get("device", "?")
        members = (f"{m['test_accuracy_member_mean']:.4f} ({m['test_accuracy_member_min']:.4f}"
                   f"-{m['test_accuracy_member_max']:.4f})"
                   if "test_accuracy_member_mean" in m else "-")
        lines.append(
            f"| {name} | {'full' if full else 'shortened'} | {ran_epochs} "
            f"| {p['model.batch_size']} | {p['data.folds']} "
            f"| {m['cv_val_accuracy_mean']:.4f} ± {m['cv_val_accuracy_std']:.4f} "
            f"| {m.get('test_accuracy', float('nan')):.4f} | {members} "
            f"| {m.get('realworld_accuracy', float('nan')):.4f} | {reported} "
            f"| {m['train_time_s'] / 60:.1f} min | {device} |")
    text = (f"Measured {datetime.date.today()} on {machine()}; train wall time is the "
            "K-fold CV plus the final refit (no refit for an ensemble).\n\n"
            + "\n".join(lines) + "\n")
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
