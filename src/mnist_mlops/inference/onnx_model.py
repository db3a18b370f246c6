"""An ONNX file as ONNX Runtime answers it: the default runtime of predict, serve and
monitor, with neither TensorFlow nor Keras in the process.

The files this pipeline exports (inference/onnx_export.py) take raw uint8 pixels
(n, 28, 28, 1) and give two named outputs from one graph: `probabilities` and `embedding`
(what the prediction log keeps). Any other ONNX classifier with one image input and ten
probabilities as its first output answers too, without an embedding.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mnist_mlops.core.mnist import INPUT_SHAPE, NUM_CLASSES
from mnist_mlops.core.runtime import UserError

log = logging.getLogger(__name__)
PROBABILITIES, EMBEDDING = "probabilities", "embedding"
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
INPUT_TYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}


def gpu_listed() -> bool:
    """Whether the NVIDIA driver lists a GPU (`nvidia-smi -L`), as `make setup` asks."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(line.startswith("GPU") for line in out.stdout.split("\n"))


def providers(available: list[str], gpu: bool) -> list[str]:
    """ONNX Runtime's execution providers, best first: CUDA where that provider is
    installed (onnxruntime-gpu) and a GPU is listed, the CPU always."""
    return [CUDA, CPU] if CUDA in available and gpu else [CPU]


class OnnxModel:
    """One ONNX Runtime session over an ONNX classifier file."""

    def __init__(self, path: Path, advice: str, threads: int | None = None) -> None:
        """`advice`: what to do when the file cannot be loaded (it depends on where the
        file came from: a registry version has its Keras .h5 beside it). `threads`: ONNX
        Runtime's intra-op threads (None: one per core); serve's --workers take one each."""
        self.path = path
        available = ort.get_available_providers()
        chosen = providers(available, CUDA in available and gpu_listed())
        options = ort.SessionOptions()
        options.log_severity_level = 3          # ONNX Runtime's own warnings: errors only
        # idle pool threads sleep rather than spin: a server's event loop needs the core
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=chosen)
        except Exception as exc:  # ORT's Fail, InvalidProtobuf, NoSuchFile, InvalidGraph...
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"{path} cannot be loaded by ONNX Runtime ({reason[:300]}): "
                            f"{advice}") from None
        inputs = self.session.get_inputs()
        outputs = [o.name for o in self.session.get_outputs()]
        if len(inputs) != 1 or inputs[0].type not in INPUT_TYPES:
            raise UserError(f"{path}: an ONNX model with one uint8 or float image input is "
                            f"needed, this one takes {[(i.name, i.type) for i in inputs]}: "
                            f"{advice}")
        self.input, self.dtype = inputs[0].name, INPUT_TYPES[inputs[0].type]
        self.proba = PROBABILITIES if PROBABILITIES in outputs else outputs[0]
        self.embedding = EMBEDDING if EMBEDDING in outputs else None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.provider = self.session.get_providers()[0]
        log.debug("%s on ONNX Runtime (%s)", path, self.provider)

    def run(self, images: np.ndarray, embedding: bool = False
            ) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities (n, 10) float64, embedding (n, k) float32 or None) of uint8
        images shaped (n, 28, 28[, 1]), from one run of the graph."""
        x = np.asarray(images, dtype=np.uint8).reshape(-1, *INPUT_SHAPE).astype(
            self.dtype, copy=False)
        wanted = [self.proba] + ([self.embedding] if embedding and self.embedding else [])
        out = self.session.run(wanted, {self.input: x})
        proba = np.asarray(out[0], dtype=np.float64).reshape(len(x), NUM_CLASSES)
        emb = np.asarray(out[1], dtype=np.float32).reshape(len(x), -1) if len(out) > 1 else None
        return proba, emb
