"""What differs between Keras backends: determinism, precision and the device in use.

Everything else in the project is backend-neutral Keras 3; backend-specific imports are
confined to this module and happen only when a function here is called.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mnist_mlops.core.runtime import TF_THREAD_VARS, cores

log = logging.getLogger(__name__)


def configure(*, seed: int, deterministic: bool, mixed_precision: bool | str) -> None:
    """Seed every RNG and set the precision policy before any model is built."""
    import keras

    # Keras's progress bars (ANSI codes) from predict calls, e.g. MLflow checking the input
    # example, go to logging instead, which a stage keeps quiet (runtime.configure_logging).
    keras.config.disable_interactive_logging()
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if deterministic:
            tf.config.experimental.enable_op_determinism()
        else:      # process-wide: undo an earlier call (tests, notebooks); no public API
            from tensorflow.python.framework import config as tf_config

            getattr(tf_config, "disable_op_determinism", lambda: None)()
    keras.mixed_precision.set_global_policy(precision_policy(mixed_precision))


# the CPU flags (Linux's /proc/cpuinfo) of native arithmetic in each half type
HALF_ON_CPU = {"bfloat16": ("avx512_bf16", "amx_bf16"), "float16": ("avx512_fp16", "amx_fp16")}


def precision_policy(setting: bool | str) -> str:
    """`train.mixed_precision` as Keras's policy (docs/backends.md "Speed")."""
    kind = half_type(setting)
    return f"mixed_{kind}" if kind else "float32"


def half_type(setting: bool | str) -> str | None:
    """The type `train.mixed_precision` computes in besides float32, None for float32 alone.
    `auto` takes bfloat16 where it was measured faster than float32 at the same accuracy:
    TensorFlow on a CPU that multiplies bfloat16 natively (AVX512-BF16 or AMX); float32
    anywhere else. `true` takes the device's half type: float16 on a GPU (its tensor cores),
    bfloat16 on a TPU or a CPU (most CPUs have no fast float16)."""
    if setting is False:
        return None
    device = _accelerator()
    if setting == "auto":
        import keras

        return "bfloat16" if device == "cpu" and keras.backend.backend() == "tensorflow" \
            and cpu_has("bfloat16") else None
    kind = setting if isinstance(setting, str) else "float16" if device == "gpu" else "bfloat16"
    if device == "cpu" and not cpu_has(kind):
        instead = "bfloat16 or false" if kind == "float16" else "false"
        _warn_once(f"mixed_{kind} on a CPU without {kind} instructions "
                   f"({' or '.join(HALF_ON_CPU[kind])}) computes slower than float32: set "
                   f"train.mixed_precision: {instead}")
    return kind


@contextlib.contextmanager
def policy(name: str | None = None) -> Iterator[None]:
    """Keras's global precision policy set to `name` (None: left as it is) for the block, and
    as it was afterwards: a training or a float32 export leaves nothing behind in a process
    that goes on (a sweep, a test, a notebook)."""
    import keras

    before = keras.mixed_precision.global_policy()
    try:
        if name is not None:
            keras.mixed_precision.set_global_policy(name)
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def cpu_has(kind: str) -> bool:
    """Whether this CPU computes in `kind` (bfloat16, float16) natively; False where it
    cannot tell."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in HALF_ON_CPU[kind])


def _accelerator() -> str:
    """What the backend trains on: "gpu", "tpu" or "cpu"."""
    devices = _framework_gpus()
    if not devices:
        return "cpu"
    return "tpu" if getattr(devices[0], "platform", "gpu") == "tpu" else "gpu"


@functools.cache
def _warn_once(message: str) -> None:
    """Say it once per process, not once per fit."""
    log.warning("%s", message)


def jit_compile(setting: bool | str, deterministic: bool = False) -> bool:
    """`train.xla` made concrete. "auto" compiles under JAX, where an uncompiled step runs
    op by op from Python (2-5x slower on the CPU here), and not under TensorFlow or PyTorch,
    whose graph and eager modes are the tested default. TensorFlow's deterministic ops
    exclude XLA (Keras turns it off: not every op has a deterministic XLA kernel), so
    `true` there needs `train.deterministic: false`."""
    import keras

    name = keras.backend.backend()
    if setting == "auto":
        return name == "jax"
    if setting and deterministic and name == "tensorflow":
        _warn_once("train.xla: true has no effect under TensorFlow with "
                   "train.deterministic: true (deterministic ops exclude XLA); set "
                   "train.deterministic: false to compile the train step")
        return False
    return bool(setting)


def steps_per_execution(setting: int) -> int:
    """`train.steps_per_execution` where the backend allows it: Keras's PyTorch trainer
    runs one step per call only. The math is the same either way, so 1 there."""
    import keras

    if setting > 1 and keras.backend.backend() == "torch":
        _warn_once(f"train.steps_per_execution: {setting} is not supported by Keras's "
                   "PyTorch backend: one step per call")
        return 1
    return setting


def data_parallel(batch_size: int) -> int:
    """Split every batch across all devices when the JAX backend sees several (Keras
    distribution API, `DataParallel`): the global batch stays the recipe's batch. Returns
    the number of devices in use (1: no distribution). Other backends: one device."""
    import keras

    keras.distribution.set_distribution(None)     # nothing left over from an earlier call
    if keras.backend.backend() != "jax":
        if len(_framework_gpus()) > 1:
            log.warning("several GPUs, but data-parallel training needs the JAX backend "
                        "(KERAS_BACKEND=jax, `pip install -e '.[jax]'`); using one")
        return 1
    import jax

    devices = jax.devices()
    if len(devices) < 2:
        return 1
    if batch_size % len(devices):
        log.warning("batch size %d does not split over %d devices: training on one",
                    batch_size, len(devices))
        return 1
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    log.info("data parallel over %d %s devices: %d images per device per step",
             len(devices), devices[0].platform, batch_size // len(devices))
    return len(devices)


def input_device() -> str:
    """Where a fit's input pipeline keeps its tensors (training/feed.py): the CPU, as Keras
    keeps its own. Under JAX or PyTorch, TensorFlow serves only tf.data there, so it is kept
    off the GPUs, whose memory it would otherwise reserve at its start."""
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        with contextlib.suppress(RuntimeError):     # TensorFlow had started already
            tf.config.set_visible_devices([], "GPU")
    return "/CPU:0"


def replicas() -> int:
    """How many devices share each batch (see `data_parallel`)."""
    import keras

    dist = keras.distribution.distribution()
    return int(dist.device_mesh.devices.size) if dist is not None else 1


def evenly_split(n: int, batch_size: int, devices: int) -> int:
    """How many of `n` images to use so that the last, partial batch also splits evenly
    over the devices (at most devices - 1 are left out; 0 on one device)."""
    return n - (n % batch_size) % devices


def _framework_gpus() -> list[Any]:
    """The accelerators the backend trains on: its GPUs (under JAX, any non-CPU device)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.config.list_physical_devices("GPU")
    if keras.backend.backend() == "torch":
        import torch

        return list(range(torch.cuda.device_count()))
    import jax

    return [d for d in jax.devices() if d.platform != "cpu"]


def device_info() -> dict[str, Any]:
    """Backend, library versions and the accelerator (if any), for logging with each run."""
    import keras

    backend = keras.backend.backend()
    info: dict[str, Any] = {
        "backend": backend, "keras_version": keras.__version__,
        "python_version": platform.python_version(), "device": "cpu",
    }
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        build = tf.sysconfig.get_build_info()
        info.update(tensorflow_version=tf.__version__,
                    cuda_version=build.get("cuda_version", "none"),
                    cudnn_version=build.get("cudnn_version", "none"),
                    # a kernel may round differently with another count (thread_share)
                    tf_intra_op_threads=os.environ.get(TF_THREAD_VARS[0], str(cores())))
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            info["device"] = f"gpu:{details.get('device_name', gpus[0].name)}"
    elif backend == "jax":
        import jax

        dev = jax.devices()[0]
        info.update(jax_version=jax.__version__)
        if dev.platform != "cpu":
            info["device"] = f"{dev.platform}:{getattr(dev, 'device_kind', dev)}"
    elif backend == "torch":
        import torch

        info.update(torch_version=torch.__version__, cuda_version=str(torch.version.cuda))
        if torch.cuda.is_available():
            info["device"] = f"gpu:{torch.cuda.get_device_name(0)}"
    if info["device"] == "cpu":
        info["device"] = f"cpu:{platform.processor() or platform.machine()}"
    return info


def nvidia_gpus() -> list[str]:
    """The NVIDIA GPUs the driver lists (`nvidia-smi -L`), whatever the framework sees."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.split(":", 1)[1].split("(")[0].strip() for line in out.stdout.splitlines()
            if line.startswith("GPU ")]


def unused_gpu_warning(info: dict[str, Any]) -> str | None:
    """What to do when the machine has an NVIDIA GPU but training runs on the CPU."""
    gpus = nvidia_gpus()
    if not gpus or not str(info["device"]).startswith("cpu"):
        return None
    fix = {"tensorflow": "install TensorFlow's CUDA libraries: `pip install -e '.[gpu]'` "
                         "(`make setup` does this when `nvidia-smi -L` lists a GPU)",
           "jax": "install JAX for CUDA: `pip install \"jax[cuda12]\"`",
           "torch": "install a CUDA build of PyTorch (pytorch.org)"}.get(info["backend"], "")
    return (f"an NVIDIA GPU is present ({', '.join(gpus)}) but {info['backend']} does not "
            f"see it, so this trains on the CPU: {fix}; then check that the driver supports "
            "that CUDA version (`nvidia-smi` shows the highest it supports)")
