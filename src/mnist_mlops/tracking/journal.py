"""A durable outbox of MLflow writes: training never waits for the tracking server.

The train stage does not call MLflow directly. It appends each write (start a run, params,
tags, one epoch's metrics, artifacts, the MLflow model, end a run) to a JSON-lines file in
its checkpoint folder; a background thread delivers them in order, and the stage flushes
what is left at its end. While the server is unreachable the writes wait on disk, so
training goes on, an outage costs no work, and a later process (the next `dvc repro`)
delivers what this one could not: the same runs, the same steps, the same timestamps.

Runs are named by keys ("parent", "fold-0", "final") that map to MLflow run ids once
created; each run is tagged with its key, so a run created just before a crash is found
again instead of being duplicated.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from mnist_mlops.core.fsio import fsync_path, write_json_atomic, write_text_atomic
from mnist_mlops.core.runtime import UserError
from mnist_mlops.tracking import logged_model, mlflow_io, refusals

log = logging.getLogger(__name__)
DELIVERY_INTERVAL_S = 2.0
MAX_BACKOFF_S = 30.0


class Journal:
    """Ordered MLflow writes of one training, kept in `folder` until delivered."""

    def __init__(self, folder: Path, uri: str, experiment: str, run_key_prefix: str) -> None:
        self.folder, self.uri, self.experiment = folder, uri, experiment
        self.prefix = run_key_prefix
        self.ops_file, self.state_file = folder / "journal.jsonl", folder / "journal.json"
        folder.mkdir(parents=True, exist_ok=True)
        self.ops: list[dict[str, Any]] = _read_ops(self.ops_file)
        if self.ops_file.exists():  # drop a line a crash cut short before appending more
            write_text_atomic(self.ops_file, "".join(json.dumps(o) + "\n" for o in self.ops))
        state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        self.delivered: int = state.get("delivered", 0)
        self.run_ids: dict[str, str] = state.get("run_ids", {})
        self.model_uri: str | None = state.get("model_uri")
        self.experiment_id: str | None = state.get("experiment_id")
        self._record_lock = threading.Lock()     # appending (the training thread)
        self._deliver_lock = threading.RLock()   # delivering (never held while recording)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: MlflowClient | None = None
        self.outage: str | None = None   # the last delivery error, while undelivered
        self.fatal: Exception | None = None   # a write the store refused (not an outage)

    # -- recording (the training thread) -------------------------------------------------
    def record(self, op: str, key: str, **fields: Any) -> None:
        """Append one write. Writes other than starting and ending a run are recorded once:
        work a kill interrupted after it was recorded (but before it was checkpointed) is
        done again on resume, and must not log twice."""
        if self.fatal is not None and refusals.refusal_status(self.fatal) is not None:
            raise self._refused(self.fatal)   # wrong credentials: stop, keep the journal
        entry = {"op": op, "key": key, **fields}
        if op not in ("start", "end") and any(_same(entry, o) for o in reversed(self.ops)):
            return
        with self._record_lock:
            new = not self.ops_file.exists()
            with open(self.ops_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
                f.flush()
                os.fsync(f.fileno())        # on the disk before training goes on
            if new:
                fsync_path(self.folder)     # ... and the file's name in its folder
            self.ops.append(entry)
        self._wake.set()

    def start_run(self, key: str, name: str, tags: dict[str, str],
                  parent: str | None = None) -> None:
        """Create run `key` (or, when it exists from an interrupted attempt, reopen it)."""
        self.record("start", key, name=name, tags=tags, parent=parent)

    def metrics(self, key: str, metrics: dict[str, float], step: int = 0) -> None:
        self.record("metrics", key, metrics={k: float(v) for k, v in metrics.items()},
                    step=step, ts=int(time.time() * 1000))

    def params(self, key: str, params: dict[str, Any]) -> None:
        self.record("params", key, params={k: str(v) for k, v in params.items()})

    def artifacts(self, key: str, path: Path, artifact_path: str) -> None:
        self.record("artifacts", key, path=str(path), artifact_path=artifact_path)

    def dataset(self, key: str, name: str, digest: str, source: str, rows: int,
                context: str = "training") -> None:
        """The training data as an MLflow dataset input (the Datasets column of the UI)."""
        self.record("dataset", key, name=name, digest=digest, source=source, rows=rows,
                    context=context)

    def model(self, key: str, h5: Path, example: Path) -> None:
        """Log the .h5 model as an MLflow model (delivered by `flush`, not the thread)."""
        self.record("model", key, h5=str(h5), example=str(example))

    def end_run(self, key: str, status: str) -> None:
        self.record("end", key, status=status)

    @property
    def pending(self) -> int:
        return len(self.ops) - self.delivered

    # -- delivery ------------------------------------------------------------------------
    def start_delivery(self) -> None:
        self._thread = threading.Thread(target=self._deliver_loop, name="mlflow-journal",
                                        daemon=True)
        self._thread.start()

    def stop_delivery(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None

    def _deliver_loop(self) -> None:
        backoff = DELIVERY_INTERVAL_S
        while not self._stop.is_set():
            self._wake.wait(backoff)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                ok = self.deliver(models=False)
            except Exception as exc:  # refused for good: the main thread reports it
                self.fatal = exc
                return
            backoff = DELIVERY_INTERVAL_S if ok else min(backoff * 2, MAX_BACKOFF_S)

    def flush(self, wait_s: float) -> bool:
        """Deliver everything, retrying an unreachable store for up to `wait_s` seconds."""
        self.stop_delivery()
        deadline = time.monotonic() + wait_s
        backoff = 1.0
        while not self.deliver(models=True):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            log.warning("tracking store unreachable (%s); %d MLflow writes waiting, retrying "
                        "for %.0f s more", self.outage, self.pending, left)
            time.sleep(min(backoff, left))
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        return True

    def abort(self, status: str) -> None:
        """On interrupt or crash: one quick try to deliver what is recorded (not the model),
        then end every run still open in MLflow as `status`. What is left waits for the
        next attempt, which reopens the runs it continues."""
        self.stop_delivery()
        try:
            self.deliver(models=False)
            client = self._client_now()
            for key in self._open_in_store():
                client.set_terminated(self.run_ids[key], status)
        except Exception as exc:
            log.warning("could not mark the MLflow runs %s (%s); the next run of this stage "
                        "will", status, short_reason(exc))

    def _open_in_store(self) -> list[str]:
        """Run keys whose start was delivered and whose end was not."""
        open_keys: dict[str, None] = {}
        for op in self.ops[:self.delivered]:
            if op["op"] == "start":
                open_keys[op["key"]] = None
            elif op["op"] == "end":
                open_keys.pop(op["key"], None)
        return list(reversed(open_keys))

    def deliver(self, models: bool) -> bool:
        """Deliver pending writes in order; False if the store is unreachable (or, with
        `models` False, when the next write is the MLflow model)."""
        if self.fatal is not None:
            raise self._refused(self.fatal)
        with self._deliver_lock:
            try:
                while self.delivered < len(self.ops):
                    op = self.ops[self.delivered]
                    if op["op"] == "model" and not models:
                        return False
                    self._apply(op)
                    self.delivered += 1
                    self._save_state()
            except Exception as exc:
                if not mlflow_io.is_outage(exc):
                    raise self._refused(exc) from exc
                if self.outage is None:
                    log.warning("tracking store %s unreachable: training goes on; MLflow "
                                "writes wait in %s (%s)", self.uri, self.ops_file,
                                short_reason(exc))
                self.outage = short_reason(exc)
                self._client = None
                return False
            if self.outage is not None:
                log.info("tracking store reachable again: queued MLflow writes delivered")
                self.outage = None
            return True

    def _refused(self, exc: Exception) -> UserError:
        if refusals.refusal_status(exc) is not None:
            return UserError(f"{refusals.refusal(exc, self.uri)}. {self.pending} MLflow writes "
                             f"wait in {self.ops_file}: rerun with the right credentials "
                             "delivers them without retraining what is done")
        op = self.ops[self.delivered] if self.delivered < len(self.ops) else {}
        return UserError(f"the tracking store {self.uri} refused a {op.get('op', '?')} write "
                         f"for run {op.get('key', '?')}: {short_reason(exc)}")

    def _save_state(self) -> None:
        write_json_atomic(self.state_file, {
            "delivered": self.delivered, "run_ids": self.run_ids,
            "model_uri": self.model_uri, "experiment_id": self.experiment_id})

    def _client_now(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.uri)
        if self.experiment_id is None:
            self.experiment_id = mlflow_io.ensure_experiment(self._client, self.experiment,
                                                            self.uri)
        return self._client

    def _apply(self, op: dict[str, Any]) -> None:
        client = self._client_now()
        key = op["key"]
        if op["op"] == "start":
            self._start(client, op)
            return
        run_id = self.run_ids[key]
        kind = op["op"]
        if kind == "metrics":
            client.log_batch(run_id, metrics=[Metric(k, v, op["ts"], op["step"])
                                              for k, v in op["metrics"].items()])
        elif kind == "params":
            client.log_batch(run_id, params=[Param(k, v) for k, v in op["params"].items()])
        elif kind == "artifacts":
            path = Path(op["path"])
            if path.is_dir():
                client.log_artifacts(run_id, str(path), op["artifact_path"])
            else:
                client.log_artifact(run_id, str(path), op["artifact_path"])
        elif kind == "dataset":
            ds = Dataset(name=op["name"], digest=op["digest"], source_type="local",
                         source=json.dumps({"uri": op["source"]}),
                         profile=json.dumps({"num_rows": op["rows"]}))
            client.log_inputs(run_id, datasets=[DatasetInput(
                ds, tags=[InputTag("mlflow.data.context", op["context"])])])
        elif kind == "model":
            self.model_uri = logged_model.log_keras_model(run_id, Path(op["h5"]),
                                                          Path(op["example"]))
        elif kind == "end":
            client.set_terminated(run_id, op["status"])
        else:
            raise ValueError(f"unknown journal entry {kind!r}")  # programming error

    def _start(self, client: MlflowClient, op: dict[str, Any]) -> None:
        key, run_key = op["key"], f"{self.prefix}/{op['key']}"
        run_id = self.run_ids.get(key)
        if run_id is None:
            found = client.search_runs([self.experiment_id],
                                       f"tags.`{mlflow_io.RUN_KEY_TAG}` = '{run_key}'")
            run_id = found[0].info.run_id if found else None
        tags = {**op["tags"], **mlflow_io.owner_tags(), mlflow_io.RUN_KEY_TAG: run_key}
        if run_id is None:
            if op["parent"]:
                tags["mlflow.parentRunId"] = self.run_ids[op["parent"]]
            run_id = client.create_run(self.experiment_id, run_name=op["name"],
                                       tags=tags).info.run_id
        else:  # an interrupted attempt created it: continue that run
            client.update_run(run_id, status="RUNNING")
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.run_ids[key] = run_id


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same write: metrics of one run and step (the values of a retrained epoch match,
    its timing does not), or any other write with the same content."""
    if a["op"] != b["op"] or a["key"] != b["key"]:
        return False
    if a["op"] == "metrics":
        return a["step"] == b["step"] and set(a["metrics"]) == set(b["metrics"])
    return {k: v for k, v in a.items() if k != "ts"} == {k: v for k, v in b.items() if k != "ts"}


def _read_ops(path: Path) -> list[dict[str, Any]]:
    """The recorded writes; a last line cut short by a crash is dropped."""
    if not path.exists():
        return []
    ops = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            ops.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return ops


def short_reason(exc: BaseException) -> str:
    """A short reason: MLflow wraps a refused connection in a 400-character message."""
    text = str(exc).strip()
    for needle in ("Connection refused", "timed out", "Connection reset", "database is locked",
                   "Name or service not known"):
        if needle in text:
            return needle.lower()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
