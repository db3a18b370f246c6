"""The team server authenticates (scripts/team-server.sh on Debian's PostgreSQL with MLflow's
basic-auth app): anonymous and foreign-host requests are refused, the writer runs the
pipeline, a reader reads and loads @champion but changes nothing, the promoter moves
@champion, and every refusal is one line that names the user, the action and what to set."""

from __future__ import annotations

import base64
import json
import shutil
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from .conftest import ROOT, free_port, run, synthetic_digits, synthetic_project, tool_env
from .needs import requires
from .postgres import pg_folder

SCRIPT = ROOT / "scripts" / "team-server.sh"
CLI = str(Path(sys.executable).parent / "mnist-mlops")
MODEL, REGISTERED = "mlp_512x2", "mnist-digits"
ADMIN_PW = "admin-pw-for-tests"
PASSWORDS = {"writer": "writer-pw-123", "promoter": "promoter-pw-1", "reader": "reader-pw-123"}

pytestmark = [pytest.mark.slow, requires("postgresql")]


def as_user(name: str | None, password: str | None = None, **extra: str) -> dict[str, str]:
    env = tool_env(**extra)
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(k, None)
    if name is not None:
        env.update(MLFLOW_TRACKING_USERNAME=name,
                   MLFLOW_TRACKING_PASSWORD=password or PASSWORDS[name])
    return env


def script(cmd: list[str], cwd: Path, env: dict[str, str],
           check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["bash", str(SCRIPT), *cmd], cwd, env, check=check, timeout=400)


class Server:
    def __init__(self, tmp: Path, pgdata: Path) -> None:
        self.tmp, self.pgdata = tmp, pgdata
        self.port = free_port()
        self.env = tool_env(DATA=str(tmp / "team"), PORT=str(self.port),
                            PGPORT=str(free_port()), PGDATA_DIR=str(self.pgdata / "cluster"),
                            DB_PASSWORD="s3cret", WORKERS="1", PYTHON=sys.executable,
                            MLFLOW=str(Path(sys.executable).parent / "mlflow"))
        self.uri = f"http://127.0.0.1:{self.port}"

    def status(self, user: str | None, password: str | None = None,
               host: str | None = None) -> int:
        """The HTTP status of an experiments search by `user` (None: anonymous)."""
        headers = {"Host": host} if host else {}
        if user:
            pw = password or (ADMIN_PW if user == "admin" else PASSWORDS[user])
            headers["Authorization"] = "Basic " + base64.b64encode(
                f"{user}:{pw}".encode()).decode()
        req = urllib.request.Request(
            f"{self.uri}/api/2.0/mlflow/experiments/search?max_results=1", headers=headers)
        try:
            return urllib.request.urlopen(req, timeout=60).status
        except urllib.error.HTTPError as exc:
            return exc.code


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with pg_folder() as pgdata:
        srv = Server(tmp_path_factory.mktemp("auth-server"), pgdata)
        try:
            script(["start"], srv.tmp, {**srv.env, "MLFLOW_ADMIN_PASSWORD": ADMIN_PW})
            for name in PASSWORDS:   # the role of the same name
                script(["user", name, name], srv.tmp, {
                    **srv.env, "MLFLOW_ADMIN_PASSWORD": ADMIN_PW, "USER_PASSWORD": PASSWORDS[name]})
            yield srv
        finally:
            subprocess.run(["bash", str(SCRIPT), "stop"], cwd=srv.tmp, env=srv.env,
                           timeout=120, capture_output=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root, env = synthetic_project(tmp_path_factory.mktemp("auth-project") / "project",
                                  **{"mlflow.outage_wait_s": 3})
    return root, env


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr


def test_server_refuses_missing_default_and_shareable_admin_passwords(
        tmp_path: Path, server: Server) -> None:
    env = {**server.env, "DATA": str(tmp_path / "other"), "PORT": str(free_port())}
    for pw, says in [("", "no admin password"), ("password1234", "old default admin password"),
                     ("short", "at least 12 characters")]:
        err = script(["start"], tmp_path, {**env, "MLFLOW_ADMIN_PASSWORD": pw}, check=False)
        assert err.returncode == 1 and says in err.stderr, err.stderr
    pw_file = tmp_path / "admin-password"
    pw_file.write_text(ADMIN_PW + "\n")
    pw_file.chmod(0o644)
    err = script(["start"], tmp_path, {**env, "MLFLOW_ADMIN_PASSWORD_FILE": str(pw_file)},
                 check=False)
    assert err.returncode == 1 and "chmod 600" in err.stderr, err.stderr
    auth_ini = Path(server.env["DATA"]) / "auth.ini"
    assert stat.S_IMODE(auth_ini.stat().st_mode) == 0o600
    assert "default_permission = NO_PERMISSIONS" in auth_ini.read_text()
    assert "auth_cache_ttl_seconds = 60" in auth_ini.read_text()    # checked credentials kept
    err = script(["start"], tmp_path, {**env, "MLFLOW_ADMIN_PASSWORD": ADMIN_PW,
                                       "AUTH_CACHE_TTL_S": "1m"}, check=False)
    assert err.returncode == 1 and "AUTH_CACHE_TTL_S must be a whole number" in err.stderr
    assert "postgresql+psycopg2://" in auth_ini.read_text()   # users in the same PostgreSQL


def test_anonymous_wrong_password_and_foreign_host_are_refused(
        tmp_path: Path, server: Server) -> None:
    assert server.status(None) == 401
    assert server.status("reader", "not-the-password") == 401
    assert server.status("reader") == 200
    assert server.status("reader", host="evil.example:80") == 403   # DNS rebinding
    root, env = synthetic_project(tmp_path / "p")
    proc = run([CLI, "compare"], root, as_user(None, MLFLOW_TRACKING_URI=server.uri),
               check=False)
    err = one_line_error(proc)
    assert "anonymous client" in err and "HTTP 401" in err and "MLFLOW_TRACKING_USERNAME" in err
    proc = run([CLI, "champion"], root,
               as_user("reader", "wrong-password", MLFLOW_TRACKING_URI=server.uri), check=False)
    err = one_line_error(proc)
    assert "user 'reader'" in err and "HTTP 401" in err and "MLFLOW_TRACKING_PASSWORD" in err


def test_wrong_password_stops_train_keeps_journal_then_writer_delivers_and_registers(
        server: Server, project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    unreachable = f"http://127.0.0.1:{free_port()}"
    first = run(["dvc", "repro", f"train@{MODEL}"], root,
                {**as_user("writer", **env), "MLFLOW_TRACKING_URI": unreachable}, check=False)
    assert first.returncode != 0 and "was unreachable" in first.stdout + first.stderr
    (ckpt,) = (root / ".checkpoints" / MODEL).iterdir()
    journal = (ckpt / "journal.jsonl").read_text()

    wrong = run(["dvc", "repro", f"train@{MODEL}"], root,
                {**as_user("writer", "wrong-password", **env),
                 "MLFLOW_TRACKING_URI": server.uri}, check=False)
    out = wrong.stdout + wrong.stderr
    assert wrong.returncode != 0 and "Traceback" not in out, out[-3000:]
    assert "user 'writer'" in out and "HTTP 401" in out and "MLFLOW_TRACKING_PASSWORD" in out
    assert " epoch " not in out and "unreachable" not in out      # stopped at once
    assert (ckpt / "journal.jsonl").read_text() == journal        # kept

    good = run(["dvc", "repro"], root,
               {**as_user("writer", **env), "MLFLOW_TRACKING_URI": server.uri})
    log = good.stdout + good.stderr
    assert " epoch " not in log, log[-3000:]                       # nothing retrained
    assert json.loads((root / "reports" / "train" / MODEL / "run.json").read_text())[
        "model_uri"].startswith("models:/")
    reader = as_user("reader", MLFLOW_TRACKING_URI=server.uri)
    champ = run([sys.executable, "-c", "from mlflow import MlflowClient; print(MlflowClient()"
                 f".get_model_version_by_alias('{REGISTERED}', 'champion').version)"],
                root, reader)
    assert champ.stdout.strip() == "1"


def _client_call(env: dict[str, str], root: Path, code: str) -> str:
    """Run MLflow client code as the user of `env`; its error code, or 'ok'."""
    prog = ("from mlflow import MlflowClient\nfrom mlflow.exceptions import MlflowException\n"
            "c = MlflowClient()\ntry:\n    " + code + "\n    print('ok')\n"
            "except MlflowException as e:\n    print(e.error_code)\n")
    return run([sys.executable, "-c", prog], root, env).stdout.strip().splitlines()[-1]


def test_reader_reads_and_predicts_but_cannot_write_promoter_moves_champion(
        tmp_path: Path, server: Server, project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    run(["dvc", "repro"], root, {**as_user("writer", **env), "MLFLOW_TRACKING_URI": server.uri})
    reader = as_user("reader", MLFLOW_TRACKING_URI=server.uri)
    exp = "c.get_experiment_by_name('mnist-mlops').experiment_id"
    assert _client_call(reader, root, f"assert c.search_runs([{exp}])") == "ok"
    assert _client_call(reader, root, f"c.create_run({exp})") == "PERMISSION_DENIED"
    copy_v1 = (f"v = c.get_model_version('{REGISTERED}', '1'); c.create_model_version("
               f"'{REGISTERED}', 'models:/{REGISTERED}/1', v.run_id, model_id=v.model_id)")
    assert _client_call(reader, root, copy_v1) == "PERMISSION_DENIED"
    assert _client_call(reader, root, f"c.set_registered_model_alias('{REGISTERED}', "
                                      "'champion', '1')") == "PERMISSION_DENIED"

    x, _ = synthetic_digits(4, seed=5)
    picture = tmp_path / "digit.png"
    Image.fromarray(x[0]).resize((84, 84)).save(picture)
    shutil.rmtree(root / "models", ignore_errors=True)   # only the server has the model now
    proc = run([CLI, "predict", str(picture), "--json"], root, reader)
    (answer,) = json.loads(proc.stdout)
    assert answer["error"] is None and "champion recorded in" not in proc.stderr

    writer = as_user("writer", MLFLOW_TRACKING_URI=server.uri)
    assert _client_call(writer, root, copy_v1) == "ok"                            # v2
    promote_v2 = [CLI, "promote", "--version", "2", "--force"]
    err = one_line_error(run(promote_v2, root, reader, check=False))
    (line,) = [x for x in err.splitlines() if "error:" in x]   # one line says it all
    assert "user 'reader'" in line and "move a registered model alias" in line, err
    assert "promoter role" in line, err

    promoter = as_user("promoter", MLFLOW_TRACKING_URI=server.uri)
    assert _client_call(promoter, root, f"c.create_run({exp})") == "PERMISSION_DENIED"
    out = run(promote_v2, root, promoter).stdout
    assert "@champion: v1 -> v2" in out, out
    assert _client_call(reader, root, f"assert c.get_model_version_by_alias('{REGISTERED}', "
                                      "'champion').version == '2'") == "ok"


def test_a_refused_journal_write_is_one_line_and_keeps_the_journal(
        tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader's credentials in CI: the journal stops at the first write, says who was
    refused what, and keeps every write for a rerun with the writer's credentials."""
    from mnist_mlops.core.runtime import UserError
    from mnist_mlops.tracking.journal import Journal

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORDS["reader"])
    j = Journal(tmp_path, server.uri, "mnist-mlops", "auth-test")
    j.start_run("parent", "refused", {})
    j.metrics("parent", {"loss": 0.5}, step=0)
    with pytest.raises(UserError) as info:
        j.deliver(models=True)
    msg = str(info.value)
    assert "user 'reader'" in msg and "create a run" in msg and "writer role" in msg, msg
    assert "2 MLflow writes wait in" in msg and "\n" not in msg
    assert len(Journal(tmp_path, server.uri, "mnist-mlops", "auth-test").ops) == 2
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "writer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORDS["writer"])
    again = Journal(tmp_path, server.uri, "mnist-mlops", "auth-test")
    assert again.deliver(models=True) and again.pending == 0
    with pytest.raises(MlflowException):   # the reader still cannot write to that run
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORDS["reader"])
        from mlflow import MlflowClient

        MlflowClient(server.uri).set_tag(again.run_ids["parent"], "x", "y")
