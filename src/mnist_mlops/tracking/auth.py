"""Authentication against a tracking server that runs MLflow's basic-auth app.

Clients send `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD` (MLflow reads them itself).
A refusal (HTTP 401: no or wrong credentials; 403: the user lacks the permission) is a
configuration error, not an outage: `refusal` turns it into one line naming the user, the
action refused and what to set.

`python -m mnist_mlops.tracking.auth URL NAME ROLE` (what `scripts/team-server.sh user`
runs, as the server's admin) creates a user, or re-grants an existing one, with a role:
  writer    EDIT on the experiment and the registered model: create runs, log, register
            versions (the pipeline, CI). MLflow needs EDIT on a registered model to create
            a version, and the same EDIT lets it set aliases, so a writer can move
            @champion too (as the pipeline's register stage does behind its gate).
  promoter  READ on the experiment, EDIT on the registered model: move @champion
            (promote/rollback), register nothing from runs it cannot edit.
  reader    READ on both: read runs, load @champion (predict, serve, compare).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator

import requests
from mlflow.exceptions import MlflowException

from mnist_mlops.core.runtime import UserError

log = logging.getLogger(__name__)
ROLES = {"writer": ("EDIT", "EDIT"), "promoter": ("READ", "EDIT"), "reader": ("READ", "READ")}
# Which MLflow REST endpoints do what (the part of the path after /mlflow/), and the role
# that may: for the refusal's message.
ACTIONS = [("registered-models/alias", "move a registered model alias", "promoter"),
           ("model-versions/create", "register a model version", "writer"),
           ("registered-models/create", "create a registered model", "writer"),
           ("runs/create", "create a run", "writer"),
           ("experiments/create", "create an experiment", "writer"),
           ("runs/", "write to a run", "writer"),
           ("logged-models", "log a model", "writer"),
           ("mlflow-artifacts", "read or write artifacts", "reader"),
           ("get", "read", "reader"), ("search", "read", "reader")]
ENDPOINT = re.compile(r"endpoint (\S+?)(?:[ ?]|$)")
CODES = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}


def refusal_status(exc: BaseException) -> int | None:
    """401 or 403 when `exc` is the server refusing these credentials, else None."""
    if isinstance(exc, MlflowException):
        return CODES.get(exc.error_code)
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        return code if code in (401, 403) else None
    return None


def _action(exc: BaseException) -> tuple[str, str]:
    """What was refused and the role that may do it, from the endpoint in the error."""
    text = str(exc)
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        text = f"endpoint {exc.response.request.path_url} " + text
    m = ENDPOINT.search(text)
    path = m.group(1) if m else ""
    for needle, action, role in ACTIONS:
        if needle in path:
            return action, role
    return (f"call {path}" if path else "make this call"), "writer"


def refusal(exc: BaseException, uri: str | None = None) -> UserError:
    """The one-line error for a refused call: who, what, and what to set."""
    if uri is None:
        import mlflow

        uri = mlflow.get_tracking_uri()
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    who = f"user {user!r}" if user else "an anonymous client (MLFLOW_TRACKING_USERNAME unset)"
    action, role = _action(exc)
    if refusal_status(exc) == 401:
        return UserError(
            f"the tracking server {uri} refused {who} to {action} (HTTP 401: unknown user or "
            "wrong password); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to "
            "an account on that server (docs/security.md)")
    return UserError(
        f"the tracking server {uri} refused {who} permission to {action} (HTTP 403); set "
        f"MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD to an account with the {role} "
        f"role, or have the server's admin grant it: scripts/team-server.sh user "
        f"{user or 'NAME'} {role}")


@contextlib.contextmanager
def refusals_as_user_error(uri: str) -> Iterator[None]:
    """A refused call inside the block stops with `refusal`'s one line (no traceback)."""
    try:
        yield
    except (MlflowException, requests.HTTPError) as exc:
        if refusal_status(exc) is None:
            raise
        raise refusal(exc, uri) from None


def grant(uri: str, name: str, role: str, password: str, experiment: str,
          model: str) -> None:
    """Create user `name` (or keep it, with a new password) and grant it `role` on the
    experiment and the registered model, creating both if needed. Runs as the admin."""
    from mlflow.server.auth.client import AuthServiceClient
    from mlflow.tracking import MlflowClient

    from mnist_mlops.tracking import mlflow_io

    auth, client = AuthServiceClient(uri), MlflowClient(uri)
    exp_id = mlflow_io.ensure_experiment(client, experiment, uri)
    if not client.search_registered_models(f"name = '{model}'"):
        client.create_registered_model(model)
    try:
        auth.get_user(name)
        auth.update_user_password(name, password)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        auth.create_user(name, password)
    on_exp, on_model = ROLES[role]
    auth.grant_user_permission(name, "experiment", exp_id, on_exp)
    auth.grant_user_permission(name, "registered_model", model, on_model)
    log.info("user %s: %s on experiment %s, %s on registered model %s", name, on_exp,
             experiment, on_model, model)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mnist_mlops.tracking.auth",
                                 description="create a user of the team server with a role "
                                             "(password from USER_PASSWORD; runs as admin)")
    ap.add_argument("uri")
    ap.add_argument("name")
    ap.add_argument("role", choices=sorted(ROLES))
    ap.add_argument("--experiment", default="mnist-mlops")
    ap.add_argument("--model", default="mnist-digits")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.filterwarnings("ignore", message=".*starlette")   # imported by MLflow's client
    password = os.environ.get("USER_PASSWORD", "")
    try:
        if not password:
            raise UserError("set USER_PASSWORD to the new user's password")
        with refusals_as_user_error(args.uri):
            grant(args.uri, args.name, args.role, password, args.experiment, args.model)
    except (UserError, MlflowException) as exc:
        print(f"team-server user: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"{args.name}: {args.role} on experiment {args.experiment} and registered model "
          f"{args.model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
