"""Training checkpoints: an interrupted `train@<model>` resumes where it stopped.

DVC 3 has no checkpoints and deletes a stage's outputs before running it, so they live
outside its outputs, in a git-ignored folder (`paths.checkpoints`), keyed by a fingerprint
of everything the training depends on (the model's recipe, the train params, the data and
the package's code). A changed configuration never resumes a checkpoint; it starts afresh
and says so. Layout, for one model:

    <paths.checkpoints>/<model>/<fingerprint>/
        lock              held by the process training this configuration
        state.json        finished fits (fold results); the attempt's id and start time
        fit-<key>.npz     the running fit after its last finished epoch: every model
                          variable (weights and RNG seed state), the optimizer's variables,
                          the best epoch's weights and the history so far
        done-<key>.npz    a finished fit's model (best epoch restored)
        journal.*         MLflow writes not yet delivered (journal.py)
        outputs/          the stage's outputs, staged before they are committed

The folder is removed once the stage has committed its outputs and delivered its MLflow
writes; a stage that stopped for any reason leaves it for the next run to continue.

An epoch's checkpoint is written behind the training: its arrays are copied at the end of
the epoch, and a writer thread puts them on the disk (atomically, fsynced) while the next
epoch trains. One write is in flight at a time and each waits for the one before, so the
file on disk is always a whole epoch's state, at most one epoch behind; a kill during a write
resumes from the epoch before, which the resumed fit replays bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import shutil
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from mnist_mlops.core.config import ModelParams, TrainParams
from mnist_mlops.core.fsio import atomic_path, in_project, write_json_atomic
from mnist_mlops.core.runtime import UserError

log = logging.getLogger(__name__)
# Train params that change only the log or what a Ray fit asks for, not the trained model
# nor what MLflow holds. The executor is kept: a checkpoint resumes under the executor that
# wrote it (a local fit logs its epochs as it goes, a Ray fit when it comes back);
# unsure_give_up too, as a stage stopped after staging its outputs would otherwise ship the
# unsure line of the old value.
COSMETIC_TRAIN_PARAMS = {"verbose", "ray"}


# The code that can change a trained model, relative to the package: the layers, the
# backend set-up, the fit loop, this module (bit-exact resume) and the dataset files. It is
# what `train@<model>` depends on in dvc.yaml and what the fingerprint hashes; code that only
# logs, tracks, reports or serves is left out, so rewording it neither reruns the stage nor
# discards a checkpoint. tests/test_stages.py keeps dvc.yaml, this list and the imports of
# these modules in step.
MODEL_CODE = (
    "core/mnist.py", "data/dataset.py", "training/backend.py", "training/checkpoint.py",
    "training/feed.py", "training/fit.py", "training/models.py", "training/recipe.py",
    "core/calibration.py", "training/calibrate.py",
)
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def code_digest(package: Path = PACKAGE_DIR) -> str:
    """SHA-256 over MODEL_CODE: a change to the model's code invalidates checkpoints."""
    h = hashlib.sha256()
    for rel in MODEL_CODE:
        h.update(rel.encode())
        h.update((package / rel).read_bytes())
    return h.hexdigest()


def fingerprint(p: ModelParams, tp: TrainParams, data_digest: str,
                code: str | None = None) -> str:
    """What a checkpoint may be resumed into: same recipe, train params, data and code."""
    train = tp.model_dump(exclude=COSMETIC_TRAIN_PARAMS)
    blob = json.dumps({"model": p.model_dump(), "train": train, "data": data_digest,
                       "code": code or code_digest()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class FitProgress:
    """A fit after `epochs_done` finished epochs (what `fit-<key>.npz` holds)."""

    epochs_done: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    best_loss: float = float("inf")
    best_epoch: int = -1                  # 0-based, -1 before any validation
    best_logs: dict[str, float] = field(default_factory=dict)
    best_weights: list[np.ndarray] | None = None
    seconds: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)


def state_variables(model: Any) -> list[Any]:
    """Everything a compiled model's training changes: its variables (weights and
    seed-generator state), then the optimizer's (step counter, moments)."""
    return [*model.variables, *model.optimizer.variables]


class Checkpoint:
    """One model's checkpoint folder for one fingerprint; use as a context manager."""

    def __init__(self, root: Path, model: str, fp: str) -> None:
        self.model, self.fp = model, fp
        self.base = root / model
        self.dir = self.base / fp
        self.outputs = self.dir / "outputs"
        self._lock_file: Any = None
        self.state: dict[str, Any] = {}
        self.resumed = False
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    # -- life cycle ----------------------------------------------------------------------
    def __enter__(self) -> Checkpoint:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.dir / "lock", "a+b")  # noqa: SIM115 (held until exit)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise UserError(
                f"{self.model}: another process is training this exact configuration "
                f"(it holds {self.dir / 'lock'}); wait for it, or stop it first") from None
        self._discard_others()
        state_file = self.dir / "state.json"
        if state_file.exists():
            self.state = json.loads(state_file.read_text())
            self.resumed = True
        else:
            self.state = {"fingerprint": self.fp, "model": self.model, "fits": {},
                          "attempt": uuid.uuid4().hex,
                          "created": datetime.now(UTC).isoformat(timespec="seconds")}
            self.save_state()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close_writer()
        finally:
            self._release()

    def close_writer(self) -> None:
        """Wait for the last write (its error, if it failed) and stop the writer thread."""
        try:
            self.wait_writes()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None

    def _release(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def _discard_others(self) -> None:
        """Remove this model's checkpoints of other configurations (unless in use)."""
        for other in sorted(p for p in self.base.iterdir() if p.is_dir() and p != self.dir):
            with contextlib.suppress(OSError), open(other / "lock", "a+b") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # another configuration training right now (a parallel exp)
                created = "?"
                with contextlib.suppress(OSError, ValueError):
                    created = json.loads((other / "state.json").read_text())["created"]
                log.warning("%s: the checkpoint from %s was made with other params, data or "
                            "code; starting afresh (removing %s)", self.model, created, other)
                shutil.rmtree(other, ignore_errors=True)

    def wait_writes(self) -> None:
        """Until the last checkpoint write is on the disk; its error, if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _write_behind(self, target: Path, arrays: dict[str, np.ndarray]) -> None:
        """Write `arrays` to `target` in the writer thread, after the write before it."""
        self.wait_writes()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix=f"checkpoint-{self.model}")
        self._pending = self._writer.submit(_write_npz, target, arrays)

    def remove(self) -> None:
        """After success: nothing left to resume."""
        self.wait_writes()
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.base.rmdir()

    def save_state(self) -> None:
        self.wait_writes()
        write_json_atomic(self.dir / "state.json", self.state)

    # -- fits ----------------------------------------------------------------------------
    def fit_done(self, key: str) -> dict[str, Any] | None:
        """The recorded result of a finished fit, or None."""
        return self.state["fits"].get(key)

    def save_progress(self, key: str, model: Any, prog: FitProgress) -> None:
        """Everything needed to continue fit `key` after its last finished epoch: copied
        now (the next epoch changes the variables in place), written behind."""
        arrays = {f"v{i}": np.asarray(v).copy() for i, v in enumerate(state_variables(model))}
        for i, w in enumerate(prog.best_weights or []):
            arrays[f"b{i}"] = w            # best_weights are copies already, never changed
        meta = {k: v for k, v in dataclasses.asdict(prog).items() if k != "best_weights"}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        self._write_behind(self.dir / f"fit-{key}.npz", arrays)

    def load_progress(self, key: str, model: Any) -> FitProgress | None:
        """Restore fit `key` into `model` (built and compiled the same way); None if absent."""
        self.wait_writes()
        path = self.dir / f"fit-{key}.npz"
        if not path.exists():
            return None
        with np.load(path) as z:
            meta = json.loads(z["meta"].tobytes())
            variables = state_variables(model)
            n = sum(1 for k in z.files if k.startswith("v"))
            if n != len(variables):
                raise UserError(f"{path} does not match {self.model}'s model ({n} vs "
                                f"{len(variables)} variables); delete it to start afresh")
            for i, v in enumerate(variables):
                v.assign(z[f"v{i}"])
            best = [z[f"b{i}"] for i in range(sum(1 for k in z.files if k.startswith("b")))]
        return FitProgress(**meta, best_weights=best or None)

    def finish_fit(self, key: str, weights: list[np.ndarray], result: dict[str, Any]) -> None:
        """Record a finished fit: its model's weights, then its result; drop its epoch
        checkpoint."""
        self.wait_writes()        # the last epoch's write must not land after the unlink
        _write_npz(self.dir / f"done-{key}.npz",
                   {f"arr_{i}": np.asarray(w) for i, w in enumerate(weights)})
        self.state["fits"][key] = result
        self.save_state()
        (self.dir / f"fit-{key}.npz").unlink(missing_ok=True)

    def load_done_weights(self, key: str, model: Any) -> Any:
        with np.load(self.dir / f"done-{key}.npz") as z:
            model.set_weights([z[f"arr_{i}"] for i in range(len(z.files))])
        return model

    # -- outputs -------------------------------------------------------------------------
    def staged(self, name: str) -> Path:
        return self.outputs / name

    def mark(self, flag: str) -> None:
        self.state[flag] = True
        self.save_state()

    def __repr__(self) -> str:
        return f"Checkpoint({self.dir})"


def _write_npz(target: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(target, suffix=".tmp.npz") as tmp:
        np.savez(tmp, **arrays)


def open_checkpoint(root: Path, model: str, fp: str) -> Checkpoint:
    """Model `model`'s checkpoint for fingerprint `fp`, under the project's `root` (also
    from a DVC temp workspace: a queued experiment resumes like any other run)."""
    return Checkpoint(in_project(root), model, fp)
