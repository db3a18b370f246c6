"""`mnist-mlops exp-run`: a DVC experiment as `dvc exp run --temp` makes one, its stages
running side by side (`jobs/repro.py`).

`dvc exp run --temp` copies the workspace into `.dvc/tmp/exps/`, sets the params there,
reproduces the pipeline one stage at a time and saves the result as an experiment; the
workspace and its params.yaml stay as they are. This does the same with DVC's public
commands, so that the copy can run several stages at once:

1. a git worktree of HEAD under `.dvc/tmp/exps/` (where the package resolves the tracking
   store and checkpoints to the project itself: `core/fsio.project_root`), holding the
   workspace's files as they are now, committed or not, and its `dvc.lock`;
2. the DVC cache shared with the workspace, so nothing is copied and every output lands
   where `dvc exp apply` finds it;
3. the params set with DVC's own editor, as `dvc exp run -S` sets them;
4. `mnist-mlops repro` there, then `dvc exp save`: the experiment appears in `dvc exp show`
   beside the ones `dvc exp run` made.

The copy is removed afterwards, failed or not.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from mnist_mlops.core.runtime import UserError
from mnist_mlops.jobs import repro
from mnist_mlops.jobs.shell import sh

log = logging.getLogger(__name__)
TEMP_DIR = Path(".dvc/tmp/exps")      # DVC's own place for temporary experiment copies


def git(root: Path, *args: str) -> str:
    return sh("git", *args, cwd=root).stdout


def dvc(root: Path, *args: str) -> str:
    return sh("dvc", *args, cwd=root).stdout


def workspace_files(root: Path) -> list[str]:
    """Every file git sees in the workspace, tracked or not, less what it ignores, and
    every file of HEAD (so that one deleted or renamed since is deleted in the copy)."""
    out = git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    out += git(root, "ls-tree", "-r", "-z", "--name-only", "HEAD")
    return sorted({f for f in out.split("\0") if f})


def carry(src: Path, dst: Path) -> None:
    """One workspace path into the copy as it is now: a file, a symbolic link (as a link),
    or gone."""
    if dst.is_symlink() or dst.is_file():
        dst.unlink()
    if src.is_symlink():
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(os.readlink(src))
    elif src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


@contextmanager
def temporary_copy(root: Path) -> Iterator[Path]:
    """A worktree of HEAD under `.dvc/tmp/exps/` holding the workspace's files as they are
    (its `dvc.lock` too, committed or not, and the outputs that records, from the shared
    DVC cache); removed afterwards."""
    if sh("git", "rev-parse", "--verify", "-q", "HEAD^{commit}", cwd=root,
          check=False).returncode != 0:
        raise UserError("the git repository has no commit yet: an experiment is saved "
                        "against one; commit the project first (git add -A && git commit)")
    copy = root / TEMP_DIR / f"exp-{uuid.uuid4().hex[:10]}"
    copy.parent.mkdir(parents=True, exist_ok=True)
    try:
        git(root, "worktree", "add", "--detach", "-q", str(copy), "HEAD")
        for name in workspace_files(root):
            carry(root / name, copy / name)
        dvc(copy, "config", "--local", "cache.dir", str(_cache_dir(root)))
        # as `dvc exp run` does: the outputs dvc.lock records, so that the stages it
        # records as they are stay as they are (those the cache lacks are reproduced)
        dvc(copy, "checkout", "--allow-missing", "--force")
        yield copy
    finally:
        sh("git", "worktree", "remove", "--force", str(copy), cwd=root, check=False)
        shutil.rmtree(copy, ignore_errors=True)
        sh("git", "worktree", "prune", cwd=root, check=False)


def _cache_dir(root: Path) -> Path:
    """The workspace's DVC cache folder, as its config sets it."""
    return Path(dvc(root, "cache", "dir").strip())


def set_params(copy: Path, assignments: Sequence[str]) -> None:
    """`key=value` (or `file:key=value`) settings written as `dvc exp run -S` writes them."""
    from dvc.utils.hydra import apply_overrides

    by_file: dict[str, list[str]] = {}
    for a in assignments:
        if "=" not in a:
            raise UserError(f"-S {a!r}: a setting is key=value (e.g. train.max_epochs=2)")
        target, _, value = a.partition("=")
        file, _, key = target.rpartition(":")
        by_file.setdefault(file or "params.yaml", []).append(f"{key}={value}")
    for file, items in by_file.items():
        try:
            apply_overrides(copy / file, items)
        except Exception as exc:  # DVC/hydra's own message says which setting and why
            raise UserError(f"cannot set {', '.join(items)} in {file}: {exc}") from None


def run_experiment(root: Path, assignments: Sequence[str], jobs: int,
                   name: str | None = None, *, share_cores: bool = False) -> str:
    """Reproduce the pipeline with `assignments` in a temporary copy, `jobs` stages at a
    time (repro.reproduce's `share_cores`), and save it as a DVC experiment of HEAD; its
    name."""
    with temporary_copy(root) as copy:
        set_params(copy, assignments)
        repro.reproduce(copy, jobs, share_cores=share_cores)
        git(copy, "add", "-A")
        out = dvc(copy, "exp", "save", *(["-n", name] if name else []))
        saved = out.strip().rsplit(":", 1)[-1].strip() or (name or "")
        log.info("saved as experiment %s (`dvc exp show` lists it; `dvc exp apply %s` "
                 "brings its params and outputs into the workspace)", saved, saved)
        return saved
