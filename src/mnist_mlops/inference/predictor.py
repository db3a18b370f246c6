"""Loading a model and asking it for probabilities: the one place for both.

evaluate, register's gate, predict, serve and monitor all call `Predictor.predict_proba`
(or `answer`, which adds the embedding the prediction log keeps). A model is an ONNX file,
a saved .h5, an MLflow model folder or an MLflow model URI; pixels go in as uint8 0-255,
shaped like MNIST (core/mnist.py), ten probabilities come out.

Two runtimes answer: ONNX Runtime (`onnx`, the default: the model's ONNX file, exported
and checked against Keras by the pipeline) and Keras (`keras`: the .h5 the training
stage saved). A model without an ONNX file (registered before the pipeline exported one,
or with `register.onnx: false`) answers with Keras, and says so once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mnist_mlops.core import calibration
from mnist_mlops.core.calibration import Calibration
from mnist_mlops.core.mnist import INPUT_SHAPE, NUM_CLASSES
from mnist_mlops.core.model_files import H5_ARTIFACT, KERAS_H5, ONNX_FILE, RUNTIMES
from mnist_mlops.core.runtime import UserError
from mnist_mlops.inference.keras_model import (
    call_two_outputs,
    compiled_call,
    load_keras_model,
    two_outputs,
)
from mnist_mlops.inference.onnx_model import OnnxModel

log = logging.getLogger(__name__)
# Cold start: mlflow (2 s to import; 1 s as mlflow-skinny) is imported where an MLflow URI
# is resolved, Keras inside inference/keras_model.py: an ONNX file or an MLflow model
# folder answers with neither.

KERAS_ADVICE = "pass --runtime keras to answer with the model's Keras .h5 instead"


class ModelLoadError(UserError):
    """A model that cannot be loaded; `cause` is why, without the advice around it."""

    def __init__(self, source: str, cause: str) -> None:
        super().__init__(f"cannot load model {source!r}: {cause}. Pass --model with an ONNX "
                         "or .h5 file, an MLflow model folder or URI (models:/NAME@champion),"
                         " and set MLFLOW_TRACKING_URI to the store that holds it")
        self.cause = cause


def mlmodel(folder: Path) -> dict[str, Any]:
    """The MLmodel file of an MLflow model folder, as a mapping."""
    try:
        data = yaml.safe_load((folder / "MLmodel").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{folder}: not an MLflow model folder with a readable MLmodel "
                        f"file ({exc})") from None
    return data if isinstance(data, dict) else {}


def inside(folder: Path, relative: str) -> Path:
    """`folder / relative`, refused when it points outside the folder."""
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise UserError(f"{folder}: its MLmodel points outside the model ({relative}); "
                        "refused")
    return path


def h5_in(folder: Path, model: dict[str, Any]) -> Path | None:
    """The .h5 inside an MLflow model this pipeline logged (tracking/logged_model.py): named
    by the metadata once register has added the ONNX flavour, else by the python-function
    model's artifacts; None for any other model."""
    flavors = model.get("flavors") or {}
    path = (model.get("metadata") or {}).get(KERAS_H5, "")
    if not path:
        entry = ((flavors.get("python_function") or {}).get("artifacts") or {}).get(
            H5_ARTIFACT) or {}
        path = entry.get("path", "")
    if not str(path).endswith(".h5") or "tensorflow" in flavors:
        return None
    return inside(folder, path)


def _carried(source: str, read: Any) -> Calibration | None:
    """The calibration a model file carries (`read()`), None with one warning where it has
    none (a model trained before calibration existed) or an unreadable one."""
    try:
        found = read()
    except ValueError as exc:
        log.warning("%s: its calibration cannot be read (%s): answering with the model's own "
                    "probabilities, never unsure", source, exc)
        return None
    if found is None:
        log.warning("%s carries no calibration (not saved by the train stage, or trained "
                    "before it calibrated models): answering with its own probabilities, "
                    "never unsure; retrain it to have one", source)
    return found


class Predictor:
    """One interface over ONNX Runtime, a Keras model and an MLflow pyfunc model."""

    def __init__(self, source: str, trusted: bool = False, runtime: str = "onnx",
                 threads: int | None = None) -> None:
        """`threads`: ONNX Runtime's intra-op threads (None: one per core)."""
        if runtime not in RUNTIMES:
            raise UserError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
        self.source, self.runtime, self.threads = source, runtime, threads
        # which model answers: registry version and architecture where known
        self.about: dict[str, str | None] = {"source": source, "version": None,
                                              "architecture": None, "runtime": None}
        self._keras: Any = None
        self._onnx: OnnxModel | None = None
        self._pyfunc: Any = None
        self._both: Any = None          # the Keras model with its embedding output
        self.calibration: Calibration | None = None    # what the model file carries
        path = Path(source)
        if path.suffix == ".onnx":
            self._load_onnx(path, "export it again (`dvc repro evaluate@<model>`), or pass "
                            "--model with the model's .h5")
        elif path.suffix in (".h5", ".keras") or path.is_file():
            self._load_keras(path)
        elif path.is_dir():
            if not self._load_folder(path, mlmodel(path)):
                self._load_mlflow(source, trusted)
        else:
            self._load_mlflow(source, trusted)
        self._describe()

    @classmethod
    def of_keras(cls, model: Any, source: str) -> Predictor:
        """A Predictor over a Keras model already in memory (an ensemble's fold model)."""
        self = cls.__new__(cls)
        self.source, self.runtime, self.threads = source, "keras", None
        self._keras, self._onnx, self._pyfunc, self._both = model, None, None, None
        self.calibration = None
        self.about = {"source": source, "version": None, "architecture": None,
                      "runtime": None}
        self._describe()
        return self

    def _describe(self) -> None:
        if self._onnx is not None:
            self.about.update(runtime="onnx",
                              architecture=self._onnx.metadata.get("architecture"))
        elif self._keras is not None:
            self.about.update(runtime="keras", architecture=self._keras.name)
        else:
            self.about["runtime"] = "mlflow"

    def _load_onnx(self, path: Path, advice: str) -> None:
        if self.runtime == "keras":
            raise UserError(f"{path} is an ONNX file: --runtime keras needs the model's .h5 "
                            "or an MLflow model")
        self._onnx = OnnxModel(path, advice, self.threads)
        self.calibration = _carried(str(path), lambda: (
            calibration.Calibration.from_json(self._onnx.metadata[calibration.KEY])
            if calibration.KEY in self._onnx.metadata else None))

    def _load_keras(self, path: Path) -> None:
        self._keras = load_keras_model(path)
        self.calibration = _carried(str(path), lambda: calibration.read_h5(path)
                                    if path.suffix == ".h5" else None)

    def _load_folder(self, folder: Path, model: dict[str, Any]) -> bool:
        """An MLflow model folder this pipeline logged: its ONNX file (the default) or its
        .h5. False for any other MLflow model (MLflow itself loads that)."""
        flavors = model.get("flavors") or {}
        if self.runtime == "onnx" and "onnx" in flavors:
            self._load_onnx(inside(folder, flavors["onnx"].get("data", ONNX_FILE)),
                            KERAS_ADVICE)
            return True
        h5 = h5_in(folder, model)
        if h5 is None:
            return False
        if self.runtime == "onnx":
            log.warning("%s has no ONNX file (registered before the pipeline exported one, "
                        "or with register.onnx: false): answering with its Keras .h5",
                        self.source)
        self._load_keras(h5)
        return True

    def _load_mlflow(self, source: str, trusted: bool) -> None:
        """A model URI: its folder downloaded, then read as a folder; MLflow's own loaders
        only for models this pipeline did not log (MLflow's model-info API would need
        pandas, which the serving install leaves out)."""
        import mlflow

        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source))
            model = mlmodel(local)
            if self._load_folder(local, model):
                return
            flavors = model.get("flavors") or {}
            if "tensorflow" in flavors:   # models logged by earlier versions
                _carried(source, lambda: None)      # says once: no calibration
                self._keras = mlflow.tensorflow.load_model(str(local))
            elif not trusted:
                raise UserError(
                    f"{source} is an MLflow model of flavour(s) {', '.join(flavors)}, not "
                    "one this pipeline logged: loading it runs its own Python code. Pass "
                    "--trust-model if you trust where it came from")
            else:
                _carried(source, lambda: None)      # says once: no calibration
                self._pyfunc = mlflow.pyfunc.load_model(str(local))
        except UserError:
            raise
        except Exception as exc:  # MlflowException, OSError, ... : all mean "can't load"
            raise ModelLoadError(source, str(exc).strip()) from None

    @property
    def keras_model(self) -> Any:
        """The Keras model that answers; None on ONNX Runtime or a python-function model."""
        return self._keras

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities for uint8 images shaped (n, 28, 28[, 1])."""
        x = np.asarray(images, dtype=np.uint8).reshape(-1, *INPUT_SHAPE)
        if self._onnx is not None:
            return self._onnx.run(x)[0]
        if self._keras is not None:
            out = compiled_call(self._keras, x.astype("float32"))
        else:
            out = self._pyfunc.predict(x)
        return np.asarray(out, dtype=np.float64).reshape(len(x), NUM_CLASSES)

    def calibrated(self, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities as the model's calibration makes them, unsure per answer); a model
        without a calibration answers with its own probabilities and is never unsure."""
        if self.calibration is None:
            return proba, np.zeros(len(proba), dtype=bool)
        after = self.calibration.apply(proba)
        return after, self.calibration.unsure(after)

    def unsure_flags(self, proba: np.ndarray) -> np.ndarray | None:
        """Per answer, whether it is unsure; None for a model without a calibration (it
        cannot tell: the prediction log then says null, not false)."""
        return None if self.calibration is None else self.calibrated(proba)[1]

    def answer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, embedding) from one model call: the embedding is the penultimate
        layer's output (monitoring/); None for a model that has none to give."""
        if self._onnx is not None:
            return self._onnx.run(images, embedding=True)
        if self._keras is not None and self._both is None:
            try:
                self._both = two_outputs(self._keras)
            except Exception as exc:  # a graph without a last layer to read: answers only
                log.warning("no embedding for the prediction log: %s", exc)
                self._both = False
        if self._both:
            return call_two_outputs(self._both, images)
        return self.predict_proba(images), None
