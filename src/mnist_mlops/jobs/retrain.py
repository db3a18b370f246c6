"""`mnist-mlops retrain`: the whole retrain loop, the same on a laptop and in CI.

    1. pull what the DVC remote has (data, outputs of stages that did not change, and the
       run cache), so nothing is retrained without reason
    2. reproduce the pipeline (`full` recipes, or the `quick` profile to try the loop),
       stages that do not need each other side by side (`mnist-mlops repro`)
    3. push the outputs (and the run cache) to the DVC remote
    4. commit `dvc.lock`, params and the small metrics/report files to a branch
    5. push that branch to `origin`
    6. write a Markdown report: metrics diff against the base branch, the gate's decision,
       the comparison table and where the pictures are

A reviewer who merges the branch makes its state the baseline of the next retrain: its
`dvc.lock` tells every clone (and the next retrain) what was produced and where in the
remote it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dvc.utils.hydra import apply_overrides as dvc_set_params
from mlflow.tracking import MlflowClient

from mnist_mlops.core.config import Params
from mnist_mlops.core.fsio import write_text_atomic
from mnist_mlops.core.overrides import assignments
from mnist_mlops.core.runtime import UserError
from mnist_mlops.evaluation.compare import compare
from mnist_mlops.jobs import repro
from mnist_mlops.jobs.profiles import profile
from mnist_mlops.jobs.shell import sh
from mnist_mlops.registry import records
from mnist_mlops.tracking import mlflow_io

log = logging.getLogger(__name__)
REMOTE_NAME = "retrain"


@dataclass(frozen=True)
class Options:
    profile: str = "full"              # full | quick
    remote: str | None = None          # DVC remote URL to add (else the configured one)
    branch: str | None = None          # default retrain/<profile>-<UTC timestamp>
    base: str = "main"                 # what the metrics are compared against
    push: bool = False                 # push the branch to origin
    report: Path = Path("retrain-report.md")
    jobs: int = 2                      # stages at a time (jobs/repro.py)


def dvc_remote() -> str | None:
    """The default DVC remote's name, or None when none is configured."""
    proc = sh("dvc", "remote", "default", check=False)
    name = proc.stdout.strip()
    return name if proc.returncode == 0 and name else None


def apply_overrides(path: Path, overrides: dict[str, Any]) -> None:
    """Set dotted keys in a YAML file with DVC's own editor, as `dvc exp run -S` does: the
    file keeps its comments and layout (params.yaml is laid out for it)."""
    dvc_set_params(path, assignments(overrides))


def require_clean_tree() -> None:
    dirty = sh("git", "status", "--porcelain", "--untracked-files=normal").stdout.strip()
    if dirty:
        raise UserError("the git working tree has uncommitted changes; commit or stash them "
                        f"first (the retrain commits what the pipeline changes):\n{dirty}")


def pull(remote: str | None) -> None:
    """Fetch what the remote has. A remote that is set but unreadable fails here, loudly;
    files it does not have yet (a stage never pushed) are simply reproduced."""
    if remote is None:
        log.warning("no DVC remote configured: everything is reproduced here and nothing "
                    "is pushed (add one with --remote URL or `dvc remote add -d`)")
        return
    sh("dvc", "pull", "--allow-missing", "--run-cache")


def commit(branch: str, message: str) -> str | None:
    """Commit every change the pipeline made on `branch`; the new commit, or None."""
    sh("git", "checkout", "-B", branch)
    sh("git", "add", "-A")
    if not sh("git", "status", "--porcelain").stdout.strip():
        log.info("nothing changed: no commit")
        return None
    sh("git", "commit", "-q", "-m", message)
    return sh("git", "rev-parse", "HEAD").stdout.strip()


def report(params: Params, opts: Options, branch: str, commit_sha: str | None,
           stages_run: list[str]) -> str:
    """The Markdown a reviewer reads in the pull request."""
    lines = [f"# Retrain `{branch}`", "",
             f"Profile **{opts.profile}**; commit `{commit_sha or 'none (nothing changed)'}`; "
             f"stages run: {', '.join(stages_run) or 'none (all up to date)'}.", ""]
    diff = sh("dvc", "metrics", "diff", opts.base, "--md", check=False)
    lines += [f"## Metrics against `{opts.base}`", "",
              diff.stdout.strip() or "(no difference)", ""]
    if diff.returncode != 0 or "failed to load" in diff.stderr:
        lines += [f"(`{opts.base}` has no committed metrics yet: every value is new)", ""]
    lines += ["## Promotion gate", ""]
    rec = records.read_record(params.paths.registry)
    lines += records.as_markdown(rec) if rec else ["(no decision record)", ""]
    lines += ["## Comparison", "", _comparison(params), "",
              "## Pictures", "",
              "Learning curves (`reports/train/<model>/curves.png`) and confusion matrices "
              "(`reports/evaluate/<model>/confusion.png`) are in the DVC remote "
              "(`dvc pull` on this branch) and attached to the workflow run.", ""]
    return "\n".join(lines)


def _comparison(params: Params) -> str:
    try:
        mlflow_io.setup(params.mlflow)
        return compare(MlflowClient(), params.mlflow.experiment, markdown=True).strip()
    except Exception as exc:  # the report is still useful without it
        return f"(tracking store not readable: {str(exc).splitlines()[0][:200]})"


def retrain(params: Params, opts: Options, params_file: Path = Path("params.yaml")) -> str:
    """Run the loop; return the report's text (also written to `opts.report`)."""
    require_clean_tree()
    if opts.remote:
        sh("dvc", "remote", "add", "--local", "-d", "-f", REMOTE_NAME, opts.remote)
    remote = dvc_remote()
    pull(remote)
    if opts.profile == "quick":
        apply_overrides(params_file, profile("quick"))
    log.info("$ mnist-mlops repro --jobs %d", opts.jobs)
    stages_run = repro.reproduce(Path.cwd(), opts.jobs)
    if remote is not None:
        sh("dvc", "push", "--run-cache")
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%MZ")
    branch = opts.branch or f"retrain/{opts.profile}-{stamp}"
    sha = commit(branch, f"Retrain {stamp} ({opts.profile}): "
                         f"{', '.join(stages_run) or 'nothing'} reproduced")
    if opts.push:
        sh("git", "push", "-u", "origin", branch)
    text = report(params, opts, branch, sha, stages_run)
    write_text_atomic(opts.report, text + "\n")
    log.info("report written to %s", opts.report)
    return text
