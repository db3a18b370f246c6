"""`mnist-mlops team user URL NAME ROLE`: a user of the team server, with a role.

What `scripts/team-server.sh user` runs, as the server's admin (MLflow's basic-auth app
reads the admin's MLFLOW_TRACKING_USERNAME/_PASSWORD); tracking/users.py says what each
role may do. Needs no params.yaml: it talks to the server only.
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings

from mnist_mlops.commands.base import Commands
from mnist_mlops.core.runtime import UserError

# Cold start: MLflow's auth client (2.4 s) is imported inside the command, so that
# `--help` and a usage error answer in 0.35 s.

log = logging.getLogger(__name__)


def cmd_user(args: argparse.Namespace) -> int:
    warnings.filterwarnings("ignore", message=".*starlette")   # imported by MLflow's client
    from mnist_mlops.tracking.refusals import refusals_as_user_error
    from mnist_mlops.tracking.users import ROLES, grant

    if args.role not in ROLES:
        raise UserError(f"no role {args.role!r}; the roles are {', '.join(sorted(ROLES))}")
    password = os.environ.get("USER_PASSWORD", "")
    if not password:
        raise UserError("set USER_PASSWORD to the new user's password")
    with refusals_as_user_error(args.uri):
        grant(args.uri, args.name, args.role, password, args.experiment, args.model)
    print(f"{args.name}: {args.role} on experiment {args.experiment} and registered model "
          f"{args.model}")
    return 0


def add(commands: Commands) -> None:
    p = commands.add("team", "administer the team tracking server", lambda _: 2)
    users = Commands(p.add_subparsers(dest="team_command", required=True))
    p = users.add("user", "create a user of the team server, or re-grant one, with a role "
                  "(password from USER_PASSWORD; run as the server's admin)", cmd_user)
    p.add_argument("uri", help="the server, e.g. http://127.0.0.1:5000")
    p.add_argument("name", help="the user's name")
    p.add_argument("role", help="writer: log runs and register; "
                   "promoter: move @champion; reader: read runs and load models")
    p.add_argument("--experiment", default="mnist-mlops",
                   help="the experiment the role applies to (default: mnist-mlops)")
    p.add_argument("--model", default="mnist-digits",
                   help="the registered model the role applies to (default: mnist-digits)")
