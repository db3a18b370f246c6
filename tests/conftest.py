"""Shared fixtures: the local MNIST mirror, tiny synthetic IDX data, temp DVC projects."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import yaml

from mnist_mlops.core.runtime import _flush_output
from mnist_mlops.data.idx import write_idx

from . import needs

if TYPE_CHECKING:
    from xdist.remote import Producer
    from xdist.scheduler.protocol import Scheduling

ROOT = Path(__file__).resolve().parents[1]
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def find_mirror() -> Path | None:
    """$MNIST_MIRROR if it holds the four files (`make` sets it when ../shared has them)."""
    env = os.environ.get("MNIST_MIRROR", "")
    if env and all((Path(env) / f).is_file() for f in MNIST_FILES):
        return Path(env)
    return None


@pytest.fixture(scope="session")
def mnist_mirror() -> Path:
    mirror = find_mirror()
    if mirror is None:
        pytest.skip("no local MNIST mirror: set MNIST_MIRROR (make does when "
                    "../shared/data/mnist exists)")
    return mirror


def synthetic_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Easy, learnable fake digits: class c lights a distinct 7x7 block (plus noise)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n, dtype=np.uint8) % 10
    rng.shuffle(y)
    x = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 4)
        x[i, 7 * r:7 * r + 7, 7 * col:7 * col + 7] = 255
    return x, y


@pytest.fixture
def synthetic_mirror(tmp_path: Path) -> Path:
    """A folder holding the four MNIST files, but tiny and synthetic (IDX, gzip)."""
    d = tmp_path / "mirror"
    xtr, ytr = synthetic_digits(200, seed=1)
    xte, yte = synthetic_digits(50, seed=2)
    for name, arr in zip(MNIST_FILES, (xtr, ytr, xte, yte), strict=True):
        write_idx(d / name, arr)
    return d


def tool_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: this venv first on PATH, quiet TensorFlow."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # `mlflow server` starts four job-runner processes (GenAI jobs) unless told not to:
    # this project runs no MLflow jobs, and each costs an MLflow import
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None,
        check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env or tool_env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-6000:]}")
    return proc


def plots_template() -> str:
    """The repo's `plots.html_template` (.dvc/config): the page with Vega inline."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    return config["plots"]["html_template"]


def make_project(dest: Path, params_override: dict | None = None) -> Path:
    """A fresh git + DVC project holding this repo's pipeline (dvc.yaml, params, src)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__",
                                                                              "*.egg-info"))
    shutil.copytree(ROOT / "data" / "user-digits", dest / "data" / "user-digits")
    if params_override:
        params = yaml.safe_load((dest / "params.yaml").read_text())
        for dotted, value in params_override.items():
            node = params
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node[key]
            node[leaf] = value
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = tool_env()
    run(["git", "init", "-q"], dest, env)
    run(["git", "config", "user.email", "ci@example.invalid"], dest, env)
    run(["git", "config", "user.name", "ci"], dest, env)
    run(["dvc", "init", "-q"], dest, env)
    run(["dvc", "config", "core.analytics", "false"], dest, env)
    shutil.copytree(ROOT / ".dvc" / "plots", dest / ".dvc" / "plots")   # plot templates
    with (dest / ".dvc" / "config").open("a") as config:     # the offline page, as the repo
        config.write(f"[plots]\n    html_template = {plots_template()}\n")
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-qm", "init"], dest, env)
    return dest


# Real MNIST, small: 1,000 training images, 2 folds, 1 epoch, 100 real-world photos (a tenth
# of the default: the stage, the metric and the gate are the same at any count)
QUICK = {"preprocess.subset": 1000, "preprocess.folds": 2, "train.max_epochs": 1,
         "realworld.count": 100}


@pytest.fixture(scope="session")
def mnist(mnist_mirror: Path) -> dict[str, np.ndarray]:
    from mnist_mlops.data.parse import parse_dataset

    return parse_dataset(mnist_mirror)


@pytest.fixture(scope="session")
def model_file(mnist: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cnn_32_64_64 trained briefly on real MNIST (about 98% test accuracy), as .h5.
    Trained once per test run (`made_once`)."""
    def train(h5: Path) -> None:
        import keras

        from mnist_mlops.core.config import load_params
        from mnist_mlops.training.models import build_model, compile_model

        keras.utils.set_random_seed(0)
        p = load_params(ROOT / "params.yaml").models["cnn_32_64_64"]
        model = compile_model(build_model(p), p)
        x = mnist["x_train"][:20000, ..., None].astype("float32")
        y = keras.utils.to_categorical(mnist["y_train"][:20000], 10)
        model.fit(x, y, batch_size=64, epochs=2, verbose=0)
        model.save(h5)

    return made_once(shared_dir(tmp_path_factory) / "cnn.h5", train)


@pytest.fixture(scope="session")
def calibrated_h5(mnist: dict[str, np.ndarray], model_file: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`model_file` with a calibration fitted as the train stage fits one, on images it never
    trained on (training images 50,000-54,999; it trained on the first 20,000)."""
    def calibrated(h5: Path) -> None:
        from mnist_mlops.core.calibration import calibrate, write_h5
        from mnist_mlops.inference.predictor import Predictor

        held_out = slice(50_000, 55_000)
        proba = Predictor(str(model_file)).predict_proba(mnist["x_train"][held_out])
        cal, _ = calibrate(proba, mnist["y_train"][held_out], give_up=0.05)
        shutil.copyfile(model_file, h5)
        write_h5(h5, cal)

    return made_once(shared_dir(tmp_path_factory) / "cnn-calibrated.h5", calibrated)


@pytest.fixture(scope="session")
def empty_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables made and nothing in it, made once per test
    run (`made_once`): making the tables takes 1.7 s, copying the file 0.03 s."""
    def empty_store(db: Path) -> None:
        from mlflow.tracking import MlflowClient

        MlflowClient(f"sqlite:///{db}").search_experiments()    # makes the tables

    return made_once(shared_dir(tmp_path_factory) / "empty-mlflow.db", empty_store)


def made_once(path: Path, make: Callable[[Path], None]) -> Path:
    """`path`, made once per test run: the first worker (pytest -n) to ask runs `make` on a
    temporary file that then takes its place whole (core.fsio.atomic_path); the others wait
    on a file lock and find it made."""
    from filelock import FileLock

    from mnist_mlops.core.fsio import atomic_path

    with FileLock(f"{path}.lock"):
        if not path.exists():
            with atomic_path(path, durable=False) as tmp:
                make(tmp)
    return path


MLFLOW_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def mlflow_uris_kept() -> Iterator[None]:
    """MLflow's tracking and registry URIs, in this process and in its environment, as they
    were before the block. `mlflow.set_tracking_uri` sets a process-wide URI (and
    MLFLOW_TRACKING_URI) that outlives the test that set it and wins over the variable a
    later test sets: a later test on the same pytest worker then talks to a server that is
    long gone, and MLflow's client retries it for minutes before it fails."""
    before = {name: os.environ.get(name) for name in MLFLOW_URI_VARS}
    try:
        yield
    finally:
        if "mlflow" in sys.modules:     # a test that never imported MLflow set nothing
            import mlflow

            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(autouse=True)
def _mlflow_uris_kept() -> Iterator[None]:
    """Every test ends with MLflow's URIs as they were (`mlflow_uris_kept`)."""
    with mlflow_uris_kept():
        yield


@pytest.fixture
def mlflow_db(tmp_path: Path, empty_store_template: Path) -> str:
    """The URI of a new, empty MLflow store at tmp_path/mlflow.db: a copy of
    `empty_store_template` whose Default experiment keeps its artifacts in
    tmp_path/mlruns/0 (MLflow would put them under the current folder, which a test need
    not have changed to tmp_path: never the checkout)."""
    import sqlite3

    db = tmp_path / "mlflow.db"
    shutil.copyfile(empty_store_template, db)
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                    (str(tmp_path / "mlruns" / "0"),))
    return f"sqlite:///{db}"


def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every worker of this test run sees (the parent of a pytest -n worker's
    base temp; the base temp itself in a run without workers)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / "shared"
    folder.mkdir(exist_ok=True)
    return folder


# Modules that take minutes, longest first (their seconds under `make test` on the 2-core
# machine, 2026-12-07, `benchmarks/suite_profile.py`): started first, so that under
# `pytest -n 2 --dist loadfile` the short ones fill in around them instead of one long
# module running last.
LONGEST_FIRST = ("test_pipeline",        # 265 s
                 "test_ray_fits",        # 192
                 "test_experiments",     # 116
                 "test_train",           # 113
                 "test_store",           # 110
                 "test_sweep",           # 94
                 "test_auth_server",     # 87
                 "test_registry_cli",    # 75
                 "test_journal",         # 72
                 "test_backend",         # 67
                 "test_retrain",         # 59
                 "test_runtime",         # 54
                 "test_checkpoint",      # 54
                 "test_repro",           # 53
                 "test_predict",         # 50
                 "test_logs",            # 46
                 "test_makefile",        # 43
                 "test_monitor_served",  # 41
                 "test_serving_install",  # 41
                 "test_team_server")     # 33


# `make test-fast` deals its tests out one by one, except these, each group kept on one
# worker: TensorFlow (about 4 s to import) and Evidently (about 2.5 s) are then imported by
# one worker only, the one whose tests need them. Every worker collects every file, so test
# files import them inside the tests, never at the top (a file, or a file::test that goes
# elsewhere than its file; tests/test_fixtures.py checks both).
ONE_WORKER = {
    "tests/test_checkpoint.py": "keras", "tests/test_fit.py": "keras",
    "tests/test_keras_model.py": "keras", "tests/test_models.py": "keras",
    "tests/test_onnx.py": "keras",
    "tests/test_onnx_draft.py": "keras",
    "tests/test_bench_tools.py::test_the_speed_benchmarks_peak_is_a_matmul_in_the_loops_type":
        "keras",
    "tests/test_monitoring.py::test_one_call_gives_the_answer_and_the_penultimate_layer":
        "keras",
    "tests/test_monitoring.py::test_predict_logs_its_answers_only_when_params_ask": "keras",
    "tests/test_monitoring.py::test_mnist_test_digits_do_not_drift": "evidently",
    "tests/test_monitoring.py::test_inverted_or_rotated_digits_drift": "evidently",
    "tests/test_monitoring.py::test_falling_confidence_is_drift_a_new_class_mix_is_only_reported":
        "evidently",
}


def worker_group(nodeid: str) -> str | None:
    """The ONE_WORKER group of a test: its own entry's, else its file's; None for none."""
    test = nodeid.split("[", 1)[0]
    return ONE_WORKER.get(test, ONE_WORKER.get(nodeid.split("::", 1)[0]))


@pytest.hookimpl(optionalhook=True)      # a hook of pytest-xdist: `-p no:xdist` still runs
def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> Scheduling | None:
    """`--dist loadgroup` (make test-fast) as ONE_WORKER says: xdist's own loadgroup reads
    `xdist_group` marks through a test id that pytest 9.2 no longer lets it change, so it
    deals every test out alone. Other modes: xdist's own scheduler."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    # the method xdist's own loadgroup and loadfile override: fail, not silently ungroup
    assert "_split_scope" in vars(LoadScopeScheduling), "pytest-xdist changed its scheduler"

    class Grouped(LoadScopeScheduling):
        """xdist's scheduler by scope, a scope being a ONE_WORKER group or one test."""

        def _split_scope(self, nodeid: str) -> str:
            return worker_group(nodeid) or nodeid

    return Grouped(config, log)


def pytest_configure(config: pytest.Config) -> None:
    """Load tests/needs.py as a plugin: its `requires` mark skips a test, or fails it when CI
    is set, when a Debian program it drives is missing. A pytest-xdist worker (it has
    `workerinput`; a pytest that a test starts does not) ends without the interpreter's
    teardown (`leave_without_teardown`)."""
    if not config.pluginmanager.is_registered(needs):
        config.pluginmanager.register(needs, "needs")
    if hasattr(config, "workerinput"):
        atexit.register(leave_without_teardown)


def leave_without_teardown() -> None:
    """A worker's last exit handler: end the process without freeing every module, which
    takes 2-3 s once TensorFlow is loaded, and which the run waits for; exit 0, since xdist
    reads a worker's results from what it sent, not from its status. By now the worker has
    sent its results, Python has waited for its threads that are not daemons, and the exit
    handlers registered after this one have run (in reverse order). The two registered
    before it (before this file's imports ran) do not run, except logging's, called here:
    execnet's has no gateway to end in a worker. So this file imports nothing at its top
    that registers an exit handler (multiprocessing, coverage)."""
    logging.shutdown()
    _flush_output(0)
    os._exit(0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))   # stable: order kept


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for a test server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


class Spawned:
    """A real child process whose combined output is collected line by line as it runs."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, needle: str, timeout: float = 180) -> None:
        wait_for(lambda: any(needle in line for line in self.lines)
                 or self.proc.poll() is not None, timeout, repr(needle))
        if not any(needle in line for line in self.lines):
            raise AssertionError(f"{needle!r} never appeared; exit {self.proc.returncode}\n"
                                 f"{self.output[-4000:]}")

    def wait(self, timeout: float = 600) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 (SQLite backend) that a test can kill and restart
    on the same port, with the same store."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def healthy(self) -> bool:
        try:
            return urllib.request.urlopen(f"{self.uri}/health", timeout=2).status == 200
        except OSError:
            return False

    def start(self) -> MlflowServer:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
             str(self.port), "--backend-store-uri", f"sqlite:///{self.root}/server.db",
             "--default-artifact-root", str(self.root / "artifacts"), "--workers", "1"],
            cwd=self.root, env=tool_env(), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(self.healthy, 120, "mlflow server")
        return self

    def kill(self) -> None:
        """SIGKILL the server and its workers (a crash, not a clean shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        wait_for(lambda: not self.healthy(), 30, "mlflow server to go away")


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server")
    try:
        yield server.start()
    finally:
        server.kill()


def synthetic_project(dest: Path, models: tuple[str, ...] = ("mlp_512x2",),
                      **overrides: object) -> tuple[Path, dict[str, str]]:
    """A git + DVC project of this pipeline whose download stage fetches tiny synthetic
    MNIST files from a local mirror (their digests in params): the real DVC stages in
    seconds. Returns the project and an environment pointing at the mirror."""
    import gzip
    import hashlib

    mirror = dest.parent / f"{dest.name}-mirror"
    xtr, ytr = synthetic_digits(240, seed=1)
    xte, yte = synthetic_digits(60, seed=2)
    for name, arr in zip(MNIST_FILES, (xtr, ytr, xte, yte), strict=True):
        write_idx(mirror / name, arr)
    files = {n: hashlib.sha256(gzip.decompress((mirror / n).read_bytes())).hexdigest()
             for n in MNIST_FILES}
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    settings: dict[str, object] = {
        "download.files": files, "download.mirrors": [], "preprocess.folds": 2,
        "train.max_epochs": 2, "train.verbose": 2, "register.floor": 0.0,
        "realworld.count": 30,
        "models": {m: raw["models"][m] for m in models},
        "sweep": {m: s for m, s in (raw.get("sweep") or {}).items() if m in models},
        **overrides}
    root = make_project(dest, settings)
    return root, tool_env(MNIST_MIRROR=str(mirror))
