"""A tracking server that refuses these credentials: one line that says who, what, and what
to set, never a traceback.

The server runs MLflow's basic-auth app (scripts/team-server.sh); clients send
`MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD` (MLflow reads them itself). A refusal
(HTTP 401: no or wrong credentials; 403: the user lacks the permission) is a configuration
error, not an outage. Creating users and granting roles is the admin's side:
tracking/users.py.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

import mlflow
import requests
from mlflow.exceptions import MlflowException

from mnist_mlops.core.runtime import UserError

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
