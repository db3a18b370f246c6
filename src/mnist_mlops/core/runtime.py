"""Process-level wiring for stage entry points: logging, signals, parent watch, exit codes.

Every stage runs its main() through `run_main`, which
- logs one clear line and exits 2 for errors the user can fix (no traceback), the same
  status as every `mnist-mlops` command (EXIT_* below),
- turns SIGTERM (what `kill` and CI cancellation send) into the same unwinding as Ctrl-C,
  so MLflow runs end KILLED and no half-written output is left (exit 130),
- ends the stage when the `dvc repro` that started it dies: DVC does not pass signals on
  to its stages, and a stage that outlives DVC would write outputs after DVC released its
  lock, leaving `dvc.lock` out of step with the workspace,
- leaves without the interpreter's teardown (`exit_without_teardown`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

log = logging.getLogger(__name__)
SHELLS = {"sh", "dash", "bash", "zsh", "ksh"}
WATCH_INTERVAL_S = 1.0


VERBOSE_ENV = "MNIST_MLOPS_VERBOSE"   # 1: keep every library's log lines (debugging)
# Lines TensorFlow/XLA's C++ code writes straight to file descriptor 2, whatever
# TF_CPP_MIN_LOG_LEVEL says (absl logging before its initialisation, CUDA probing, oneDNN
# notices, graph warnings): `I0000 00:00:1795363330.405893    2389 file.cc:31] ...`.
NATIVE_NOISE = re.compile(
    rb"^(?:[IWEF]\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\]|WARNING: All log messages before "
    rb"absl::InitializeLog|To enable the following instructions:)")
# MLflow's advice to add type hints to the logged model's predict(), which takes tensors;
# tf2onnx's notice about NumPy's np.object, which it only tests for
QUIET_WARNINGS = re.compile(r"type hints to the `predict` method|`np\.object` will be defined")
NOISY_LOGGERS = ("absl", "tensorflow", "h5py", "urllib3.connectionpool", "mlflow.models",
                 "mlflow.tensorflow", "mlflow.utils.environment", "mlflow.pyfunc", "tf2onnx")


# Exit status of every stage and every `mnist-mlops` command (docs/everyday.md).
EXIT_OK = 0
EXIT_FAILURE = 1        # it ran and failed, or found what it checks for (monitor: drift)
EXIT_USAGE = 2          # bad input, bad params or usage: the message says what to change
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM
EXIT_BROKEN_PIPE = 141  # the reader of the output has gone, as a Unix tool SIGPIPE ends
EXIT_UNWRITTEN = 120    # the output could not be written at exit (Python's own status)


# TensorFlow's own settings for its two thread pools; unset, each pool takes every core.
TF_THREAD_VARS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
SHARED_CORES_VAR = "MNIST_MLOPS_SHARED_CORES"   # set beside a share: sized for this host


def cores() -> int:
    """The CPUs this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not Linux
        return os.cpu_count() or 1


def thread_share(processes: int, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """TensorFlow's thread pools for one of `processes` processes that run side by side:
    an even share of the cores each, instead of every process reaching for every core.
    Empty for one process, and where `env` (the environment) already sets either: a
    user's choice stands, and nothing is shared. SHARED_CORES_VAR marks a share, which
    suits this host's cores only (a Ray worker elsewhere drops it: training/ray_fits.py).
    TensorFlow's kernels may split their work, and so round, differently with another
    number of threads: a run is repeatable for the same share."""
    env = os.environ if env is None else env
    if processes <= 1 or any(var in env for var in TF_THREAD_VARS):
        return {}
    share = str(max(1, cores() // processes))
    return {**dict.fromkeys(TF_THREAD_VARS, share), SHARED_CORES_VAR: share}


class UserError(Exception):
    """A problem the user can fix (bad input, bad params, missing file, unreachable store):
    the one error base the entry points print as one line, without a traceback, and exit
    with `exit_code`."""

    exit_code = EXIT_USAGE


class OperationFailed(UserError):
    """The input was right but the work could not be done (no mirror answered, the tracking
    store is down): one line saying what to do, exit 1."""

    exit_code = EXIT_FAILURE


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def configure_logging(level: int = logging.INFO, libraries: bool = False) -> None:
    """Log lines with time, level and logger. The libraries' chatter is left out unless
    `libraries` (`mnist-mlops -v`) or MNIST_MLOPS_VERBOSE asks for it."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if libraries or verbose():
        return
    # Library chatter (Keras's "HDF5 is legacy" notes, retracing hints, one line per HTTP
    # retry of an unreachable tracking server) hides the pipeline's own lines.
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # MLflow's artifact progress bars: raw ANSI codes in a log
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.showwarning = _show_useful_warnings
    quiet_native_stderr()


_show_warning = warnings.showwarning


def _show_useful_warnings(message: Warning | str, category: type[Warning], filename: str,
                          lineno: int, file: Any = None, line: str | None = None) -> None:
    """Every warning but QUIET_WARNINGS. (MLflow turns its warnings on with "always"
    filters of its own, so a filter here would not hold.)"""
    if not QUIET_WARNINGS.search(str(message)):
        _show_warning(message, category, filename, lineno, file, line)


_pump: threading.Thread | None = None


def quiet_native_stderr() -> None:
    """Drop the C++ log lines (NATIVE_NOISE) from this process's stderr; all else passes.

    They bypass Python (written to fd 2 by native code), so fd 2 becomes a pipe that a
    thread filters into the real stderr; at exit fd 2 is restored and the pipe drained."""
    global _pump
    if _pump is not None or not sys.platform.startswith("linux"):
        return
    sys.stderr.flush()
    real = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump() -> None:
        with os.fdopen(read_fd, "rb") as src, os.fdopen(real, "wb", buffering=0) as dst:
            for line in src:
                if not NATIVE_NOISE.match(line):
                    dst.write(line)

    def restore() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
            os.dup2(real, 2)          # the pipe's last writer is gone: the pump drains
        if _pump is not None:
            _pump.join(timeout=5)

    _pump = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    _pump.start()
    atexit.register(restore)


_stop_signal: int | None = None     # the SIGTERM/SIGINT received, once one has been


def _raise_interrupt(signum: int, _frame: Any) -> None:
    global _stop_signal
    _stop_signal = signum
    raise KeyboardInterrupt(f"received signal {signal.Signals(signum).name}")


def sigterm_as_interrupt() -> None:
    """Make SIGTERM unwind like Ctrl-C (KeyboardInterrupt in the main thread), and remember
    either signal for `raise_if_stopped`."""
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, _raise_interrupt)


def raise_if_stopped() -> None:
    """KeyboardInterrupt again if a stop signal came earlier. Python cannot raise in every
    place: an interrupt that lands in a finaliser (`__del__`, a weakref callback) is only
    printed, and training would go on; a loop calls this at each step to stop after all."""
    if _stop_signal is not None:
        raise KeyboardInterrupt(f"received signal {signal.Signals(_stop_signal).name}")


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while the block runs, then act on them: for committing a set of
    outputs that must appear together (a model file and its run record) or not at all."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    old = {s: signal.signal(s, lambda n, _f: received.append(n))
           for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if received:
        raise KeyboardInterrupt(f"received signal {signal.Signals(received[0]).name}")


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(command name, parent pid) of a live process, from /proc; None if it is gone (or a
    zombie: a killed `dvc` stays one until its own parent reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
    return None if state in ("Z", "X") else (comm, int(ppid))


def launchers(pid: int | None = None) -> list[int]:
    """The processes whose death should end this one: the parent, and if the parent is a
    shell (DVC runs each stage through `sh -c`), the shell's parent too, up to the first
    process that is not a shell. Never PID 1."""
    chain: list[int] = []
    ppid = os.getppid() if pid is None else pid
    while ppid > 1:
        info = _proc_stat(ppid)
        if info is None:
            break
        chain.append(ppid)
        comm, parent = info
        if comm not in SHELLS:
            break
        ppid = parent
    return chain


def watch_launchers(interval_s: float = WATCH_INTERVAL_S) -> threading.Thread | None:
    """End this process (as SIGTERM would) as soon as a launcher is gone (see `launchers`)."""
    watched = launchers()
    if not watched or not sys.platform.startswith("linux"):
        return None

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(interval_s):
            gone = [p for p in watched if _proc_stat(p) is None]
            if gone:
                log.error("the process that started this stage (pid %d) is gone: stopping",
                          gone[0])
                os.kill(os.getpid(), signal.SIGTERM)
                return

    t = threading.Thread(target=watch, name="launcher-watch", daemon=True)
    t.start()
    return t


# What only the training install has (pyproject.toml `train`), and the MLflow client (`serve`)
TRAINING_STACK = {"tensorflow", "keras", "dvc", "sklearn", "matplotlib", "optuna",
                  "evidently", "pandas", "onnx", "tf2onnx", "tqdm", "jax", "torch"}


def missing_install(exc: ModuleNotFoundError) -> UserError | None:
    """A package of a larger install than this one: which install has it, one line."""
    root = (exc.name or "").split(".")[0]
    if root in TRAINING_STACK:
        return UserError(f"this needs {root}, which only the training install has (this is a "
                         "serving install: predict and serve answer with ONNX Runtime): "
                         "pip install '.[train]', or `make setup` in a clone")
    if root == "mlflow":
        return UserError("reading an MLflow store needs the MLflow client: pip install "
                         "'.[serve]' (or pass --model with an ONNX file or model folder)")
    return None


def run_main(main: Callable[[], None]) -> NoReturn:
    """Run a stage's main(): one-line errors and exit 2 for user errors, 130 when stopped."""
    configure_logging()
    sigterm_as_interrupt()
    watch_launchers()
    code = EXIT_OK
    try:
        main()
    except UserError as exc:          # config.ConfigError included
        log.error("%s", exc)
        code = exc.exit_code
    except KeyboardInterrupt as exc:
        log.error("interrupted%s", f" ({exc})" if str(exc) else "")
        code = EXIT_INTERRUPTED
    exit_without_teardown(code)


def exit_without_teardown(code: int) -> NoReturn:
    """Exit as Python does, less its last step: freeing every module and object.

    After TensorFlow that step took 2.4 s of each stage process (1 s after MLflow and
    ONNX Runtime alone). What comes before it is Python's own, in its order: the threading
    module's shutdown (it tells idle thread pools, such as MLflow's artifact workers, to
    end, then waits for every thread that is not a daemon), the exit handlers (the stderr
    filter's drain, TensorFlow's temporary files, MLflow's, logging's flush), then the
    streams' flush. What does not run is what only the teardown would do: the finalisers
    of objects still alive (`__del__` of a file never closed) and C-level exit hooks. So
    close files and connections explicitly, or register what must happen at exit with
    `atexit`.

    The status is `code`, unless the output could not be written at the end: a reader that
    has gone gives EXIT_BROKEN_PIPE, another write error EXIT_UNWRITTEN (Python's own
    status for it), so that a full disk is not reported as success."""
    try:
        try:
            threading._shutdown()   # type: ignore[attr-defined]   # what Py_FinalizeEx calls
        except KeyboardInterrupt:   # stopped while waiting for threads: stop waiting
            code = code or EXIT_INTERRUPTED
        atexit._run_exitfuncs()     # prints its handlers' errors, as at exit, and goes on
        code = _flush_output(code)
    finally:
        os._exit(code)


def _flush_output(code: int) -> int:
    """Flush stdout and stderr; the status to exit with (see exit_without_teardown)."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None or stream.closed:      # as Python's exit: nothing to flush
            continue
        try:
            stream.flush()
        except BrokenPipeError:
            code = code or EXIT_BROKEN_PIPE
        except OSError as exc:
            if stream is sys.stdout:
                with contextlib.suppress(OSError, ValueError):
                    sys.stderr.write(f"error: the output could not be written: {exc}\n")
                    sys.stderr.flush()
                code = code or EXIT_UNWRITTEN
    return code
