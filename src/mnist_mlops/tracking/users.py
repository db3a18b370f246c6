"""Users of the team server and their roles: the admin's side of the basic-auth app.

`mnist-mlops team user URL NAME ROLE` (what `scripts/team-server.sh user` runs, as the
server's admin) creates a user, or re-grants an existing one, with a role:
  writer    EDIT on the experiment and the registered model: create runs, log, register
            versions (the pipeline, CI). MLflow needs EDIT on a registered model to create
            a version, and the same EDIT lets it set aliases, so a writer can move
            @champion too (as the pipeline's register stage does behind its gate).
  promoter  READ on the experiment, EDIT on the registered model: move @champion
            (promote/rollback), register nothing from runs it cannot edit.
  reader    READ on both: read runs, load @champion (predict, serve, compare).
"""

from __future__ import annotations

import logging

from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient
from mlflow.tracking import MlflowClient

from mnist_mlops.tracking import mlflow_io

log = logging.getLogger(__name__)
# role -> (permission on the experiment, permission on the registered model)
ROLES = {"writer": ("EDIT", "EDIT"), "promoter": ("READ", "EDIT"), "reader": ("READ", "READ")}


def grant(uri: str, name: str, role: str, password: str, experiment: str,
          model: str) -> None:
    """Create user `name` (or keep it, with a new password) and grant it `role` on the
    experiment and the registered model, creating both if needed. Runs as the admin."""
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
