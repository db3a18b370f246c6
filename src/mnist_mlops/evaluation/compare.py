"""Side-by-side table of training runs from MLflow (terminal text or Markdown).

One row per model (its latest finished pipeline run) by default, or every run with
`all_runs`. The "differing params" column shows, per row, only the hyperparameters whose
value differs from the most common one across the rows: in an ablation grid, exactly the
one change each variant makes. "epochs" is what each run trained (`train.max_epochs` caps
the recipe's), "params" the architecture's size: a fold ensemble ships K copies of it.

A second table has each row's real-world accuracy, over all pictures and per kind of
picture, after the preprocessing and (in brackets) after a plain resize: an average over
kinds hides the kind a model got worse on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import get_args

from mlflow.tracking import MlflowClient

from mnist_mlops.core.config import RealworldKind
from mnist_mlops.core.runtime import UserError
from mnist_mlops.data import realworld_set

Table = tuple[list[str], list[list[str]]]

# shown in their own columns: the epochs trained, the architecture's size
HIDDEN_PARAMS = {"model.name", "model.architecture", "model.epochs", "model.effective_epochs"}


@dataclass(frozen=True)
class Row:
    model: str
    run_id: str
    exp: str
    params: dict[str, str]
    metrics: dict[str, float]
    started: int


def fetch_rows(client: MlflowClient, experiment: str, *, all_runs: bool = False,
               model: str | None = None, limit: int = 500) -> list[Row]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"no MLflow experiment {experiment!r} in {client.tracking_uri}; "
                        "run the pipeline first, or set MLFLOW_TRACKING_URI")
    query = "tags.role = 'parent' and attributes.status = 'FINISHED'"
    if model:
        query += f" and tags.model_name = '{model}'"
    runs = client.search_runs([exp.experiment_id], query,
                              order_by=["attributes.start_time DESC"], max_results=limit)
    rows, seen = [], set()
    for r in runs:
        name = r.data.tags.get("model_name", r.info.run_name)
        if not all_runs and name in seen:
            continue
        seen.add(name)
        rows.append(Row(name, r.info.run_id, r.data.tags.get("dvc_exp", "-"),
                        dict(r.data.params), dict(r.data.metrics), r.info.start_time))
    return sorted(rows, key=lambda row: (-row.metrics.get("test_accuracy", -1), row.model))


def common_values(rows: list[Row]) -> dict[str, str | None]:
    """For each model param that varies across rows, its most common value (first on ties)."""
    keys = sorted({k for r in rows for k in r.params if k.startswith("model.")} - HIDDEN_PARAMS)
    return {k: Counter(r.params.get(k) for r in rows).most_common(1)[0][0] for k in keys
            if len({r.params.get(k) for r in rows}) > 1}


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def epochs(row: Row) -> str:
    """The epochs the run trained (runs before `model.effective_epochs` was logged: the
    recipe's, capped by train.max_epochs), and the recipe's where the cap cut them."""
    recipe, cap = _int(row.params.get("model.epochs")), _int(row.params.get("train.max_epochs"))
    trained = _int(row.params.get("model.effective_epochs"))
    if trained is None and recipe is not None:
        trained = min(recipe, cap) if cap else recipe
    if trained is None:
        return "-"
    return f"{trained} (recipe {recipe})" if recipe not in (None, trained) else str(trained)


def size(row: Row) -> str:
    """The architecture's parameter count; a fold ensemble's model holds K copies of it
    (the averaging adds none)."""
    n = row.metrics.get("n_params")
    if n is None:
        return "-"
    final = row.params.get("model.final")
    if final in (None, "None"):
        final = row.params.get("train.final")
    k = _int(row.params.get("data.folds"))
    if final != "ensemble":
        return f"{n:,.0f}"
    return f"{n / k:,.0f} (ensemble of {k})" if k else f"{n:,.0f} (ensemble)"


def table(rows: list[Row]) -> Table:
    common = common_values(rows)
    header = ["model", "differing params", "CV acc (mean ± std)", "test acc", "epochs",
              "train s", "params", "run", "dvc exp"]
    body = []
    for r in rows:
        m = r.metrics
        cv = (f"{m['cv_val_accuracy_mean']:.4f} ± {m['cv_val_accuracy_std']:.4f}"
              if "cv_val_accuracy_mean" in m else "-")
        params = " ".join(f"{k.removeprefix('model.')}={r.params.get(k, '-')}"
                          for k, usual in common.items() if r.params.get(k) != usual)
        body.append([r.model, params or "-", cv, _fmt(m.get("test_accuracy"), ".4f"),
                     epochs(r), _fmt(m.get("train_time_s"), ".0f"), size(r), r.run_id[:8],
                     r.exp])
    return header, body


def kinds_table(rows: list[Row]) -> Table | None:
    """Real-world accuracy per kind of picture, `ours (plain resize)`; None when no row
    has it (runs evaluated before the set had kinds)."""
    tables = [realworld_set.kind_table(r.metrics) for r in rows]
    known = get_args(RealworldKind)
    kinds = sorted({k for t in tables for k in t},
                   key=lambda k: (known.index(k) if k in known else len(known), k))
    if not kinds:
        return None

    def cell(found: tuple[float, float | None] | None) -> str:
        if found is None:
            return "-"
        ours, plain = found
        return f"{ours:.3f}" + ("" if plain is None else f" ({plain:.3f})")

    header = ["model", "real-world", *(f"{k} (plain)" for k in kinds)]
    body = [[r.model, _fmt(r.metrics.get(realworld_set.ACCURACY), ".4f"),
             *(cell(t.get(k)) for k in kinds)] for r, t in zip(rows, tables, strict=True)]
    return header, body


def render_text(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
    return "\n".join(lines) + "\n"


def render_markdown(header: list[str], body: list[list[str]]) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def fetch_tables(client: MlflowClient, experiment: str, *, all_runs: bool = False,
                 model: str | None = None) -> list[Table]:
    """The comparison table, and the per-kind real-world table where the runs have it (one
    query to the store), to render as text or Markdown."""
    rows = fetch_rows(client, experiment, all_runs=all_runs, model=model)
    if not rows:
        raise UserError(f"experiment {experiment!r} has no finished training runs yet")
    by_kind = kinds_table(rows)
    return [table(rows), *([by_kind] if by_kind else [])]


def render(tables: list[Table], markdown: bool = False) -> str:
    """The tables one after another, a blank line between them."""
    return "\n".join((render_markdown if markdown else render_text)(*t) for t in tables)


def compare(client: MlflowClient, experiment: str, *, markdown: bool = False,
            all_runs: bool = False, model: str | None = None) -> str:
    return render(fetch_tables(client, experiment, all_runs=all_runs, model=model), markdown)
