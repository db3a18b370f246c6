"""The prediction log: one JSON line per answer the served model gives, bounded by size.

Writing never holds up an answer: `PredictionLog.append` (called once per model batch, on
the model thread) only queues the batch; a background thread describes the images
(monitoring/features.py), formats the lines and appends them. A failure to write (disk
full, permissions) is logged once as a warning and the predictions go on.

Rotation follows `logging.handlers.RotatingFileHandler`: when a write would take the file
past `max_bytes`, `predictions.jsonl` becomes `predictions.jsonl.1`, `.1` becomes `.2`, ...,
and `.<backups>` is dropped. The file is only ever appended to, so a restarted server goes
on where the last one stopped; a lock file (flock) keeps several `--workers` processes from
rotating at once. docs/monitoring.md describes the format of a line.
"""

from __future__ import annotations

import atexit
import base64
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_mlops.core.config import Params
from mnist_mlops.core.fsio import file_lock
from mnist_mlops.monitoring.features import FEATURES, describe
from mnist_mlops.monitoring.settings import monitor_params

log = logging.getLogger(__name__)
FORMAT = 1            # the "v" of every line; bumped when a field changes meaning
QUEUE_BATCHES = 1024  # batches waiting for the writer; more are dropped (and said once)


@dataclass(frozen=True)
class LogOptions:
    """Where and how much (from params.yaml `monitor:` and `paths.prediction_log`)."""

    path: Path | str
    max_bytes: int = 10_000_000
    backups: int = 5
    embedding: bool = True


def options(params: Params | None, command: str = "serve") -> dict[str, Any] | None:
    """The log's LogOptions for `serve` (or `predict`) as params set them, as a plain dict
    (serve hands it to its --workers processes as JSON); None: no log."""
    if params is None:
        return None
    mp = monitor_params(params)
    if not (mp.log if command == "serve" else mp.log_predict):
        return None
    return {"path": str(params.paths.prediction_log.absolute()), "max_bytes": mp.max_bytes,
            "backups": mp.backups, "embedding": mp.embedding}


def opened(params: Params | None, command: str = "serve") -> PredictionLog | None:
    """The prediction log `command` writes to, started; None where params switch it off."""
    opts = options(params, command)
    return PredictionLog(LogOptions(**opts)) if opts else None


def logged_call(params: Params | None, predictor: Any, command: str = "predict"
                ) -> Callable[[np.ndarray], np.ndarray] | None:
    """For `predict`: images -> probabilities, logging each answer with its embedding (one
    model call); None where params leave the command's answers unlogged."""
    plog = opened(params, command)
    if plog is None:
        return None

    def predict(images: np.ndarray) -> np.ndarray:
        proba, emb = predictor.answer(images)
        plog.append(images, proba, emb, predictor.about, predictor.unsure_flags(proba))
        return proba
    return predict


def backup_path(path: Path, i: int) -> Path:
    return path.with_name(f"{path.name}.{i}")


def lines(images: np.ndarray, proba: np.ndarray, embedding: np.ndarray | None,
          about: dict[str, Any], when: float, unsure: np.ndarray | None = None) -> bytes:
    """The log lines of one batch (UTF-8, newline-terminated). Printed from one template
    (a float costs about 0.4 us to format in Python: an embedding of 64 as JSON numbers
    would cost more than describing the image), the embedding as base64 float16.
    `confidence` is the model's own top probability (what monitor compares with the
    training images); `unsure` whether the calibrated answer fell below the model's line
    (null for a model without a calibration)."""
    feats = describe(images).tolist()
    digits, conf = proba.argmax(axis=1).tolist(), proba.max(axis=1).tolist()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z"
    model = json.dumps({"version": about.get("version"),
                        "architecture": about.get("architecture")}, separators=(",", ":"))
    template = (f'{{"v":{FORMAT},"time":"{stamp}","model":{model},"digit":%d,'
                f'"confidence":%.5f,"unsure":%s,"features":{{'
                + ",".join(f'"{k}":%.4f' for k in FEATURES) + "}")
    flags = ["null"] * len(digits) if unsure is None else \
        ["true" if u else "false" for u in np.asarray(unsure).tolist()]
    embs = (None if embedding is None else
            [base64.b64encode(e.tobytes()).decode() for e in as_logged(embedding)])
    out = []
    for i, d in enumerate(digits):
        line = template % (d, conf[i], flags[i], *feats[i])
        out.append(line + (f',"embedding":"{embs[i]}"}}' if embs is not None else "}"))
    return ("\n".join(out) + "\n").encode()


def as_logged(embedding: np.ndarray) -> np.ndarray:
    """The embedding as the log keeps it: float16 (3 significant digits), clipped to its
    range."""
    return np.clip(embedding, -65504, 65504).astype("<f2")


def embedding(record: dict[str, Any]) -> np.ndarray | None:
    """A record's embedding (float16, base64 in the line), or None."""
    raw = record.get("embedding")
    return None if raw is None else np.frombuffer(base64.b64decode(raw), "<f2")


def write(opts: LogOptions, data: bytes) -> None:
    """Append `data` (whole lines) to the log, rotating first if it would pass max_bytes."""
    path = Path(opts.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(f".{path.name}.lock")):
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(data) > opts.max_bytes:
            rotate(path, opts.backups)
        with open(path, "ab") as f:
            f.write(data)


def rotate(path: Path, backups: int) -> None:
    """RotatingFileHandler's shift: path -> .1 -> .2 ... -> .<backups> (dropped after)."""
    if backups <= 0:
        path.unlink(missing_ok=True)
        return
    for i in range(backups - 1, 0, -1):
        src = backup_path(path, i)
        if src.exists():
            os.replace(src, backup_path(path, i + 1))
    os.replace(path, backup_path(path, 1))


def log_files(path: Path) -> list[Path]:
    """The log's files, oldest first: the backups from the highest number, then the file."""
    backups = []
    for f in path.parent.glob(f"{path.name}.*"):
        suffix = f.name[len(path.name) + 1:]
        if suffix.isdigit():
            backups.append((int(suffix), f))
    return [f for _, f in sorted(backups, reverse=True)] + ([path] if path.exists() else [])


def records(path: Path) -> Iterator[dict[str, Any]]:
    """Every record of the log, oldest first; a line cut short (a crash mid-write) or not
    of this format is skipped."""
    for f in log_files(path):
        with open(f, "rb") as fh:
            for raw in fh:
                try:
                    rec = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(rec, dict) and rec.get("v") == FORMAT and "features" in rec:
                    yield rec


class PredictionLog:
    """Appends batches of answers to the log from a background thread."""

    def __init__(self, opts: LogOptions) -> None:
        self.opts = opts
        self.queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(QUEUE_BATCHES)
        self.warned: set[str] = set()
        self.written = 0          # records appended so far (tests, /metrics)
        self.thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self.thread.start()
        atexit.register(self.close)      # `predict`: what is queued is written before exit

    def append(self, images: np.ndarray, proba: np.ndarray, embedding: np.ndarray | None,
               about: dict[str, Any], unsure: np.ndarray | None = None) -> None:
        """Queue one batch; never raises, never waits."""
        try:
            self.queue.put_nowait((np.array(images, dtype=np.uint8, copy=True),
                                   np.asarray(proba),
                                   embedding if self.opts.embedding else None,
                                   dict(about), time.time(),
                                   None if unsure is None else np.array(unsure, dtype=bool)))
        except queue.Full:
            self._warn_once("full", "the prediction log is falling behind: answers are "
                            "being left out of it")
        except Exception as exc:
            self._warn_once("append", f"cannot log predictions: {exc}")

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self.thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            try:
                data = lines(*item)
                write(self.opts, data)
                self.written += len(item[1])
            except Exception as exc:  # the log must never fail a prediction
                self._warn_once("write", f"cannot write the prediction log "
                                f"{self.opts.path}: {exc}; predictions go on unlogged")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning("%s", message)
