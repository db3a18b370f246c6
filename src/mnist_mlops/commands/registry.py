"""Commands on the Model Registry: `champion`, `promote`, `rollback`."""

from __future__ import annotations

import argparse

from mnist_mlops.commands.base import POSITIVE_INT, Commands, params

# Cold start: MLflow and the registry code (2.4 s) are imported inside the commands,
# so that `--help` and a usage error answer in 0.35 s.


def cmd_champion(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from mnist_mlops.registry import aliases
    from mnist_mlops.tracking import mlflow_io

    p = params(args)
    mlflow_io.setup(p.mlflow)
    client, name = MlflowClient(), p.mlflow.registered_model
    for alias in (aliases.CHAMPION, aliases.CHALLENGER):
        v = aliases.alias_version(client, name, alias)
        if v is None:
            print(f"{name}@{alias}: none")
        else:
            c = aliases.candidate(client, name, v)
            print(f"{name}@{alias}: v{v} ({c.model}, test accuracy {c.test_accuracy:.4f})")
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from mnist_mlops.registry import aliases
    from mnist_mlops.tracking import mlflow_io

    p = params(args)
    mlflow_io.setup(p.mlflow)
    name = p.mlflow.registered_model
    rows = aliases.versions(MlflowClient(), name)
    if not rows:
        print(f"{name}: no versions yet (`dvc repro` registers them)")
    for r in rows:
        tags = " ".join(f"@{a}" for a in r["aliases"])
        print(f"v{r['version']:<4} {r['model'] or '?':<18} test {r['test_accuracy']:.4f}  "
              f"{r['registered']}  {tags}".rstrip())
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from mnist_mlops.registry.register import promote

    rec = promote(params(args), str(args.version), force=args.force)
    print(f"{rec['registered_model']}@champion: v{rec['previous_champion'] or '-'} -> "
          f"v{rec['champion']}{' (forced)' if rec['forced'] else ''}: {rec['reason']}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from mnist_mlops.registry.register import rollback

    rec = rollback(params(args))
    print(f"{rec['registered_model']}@champion: v{rec['previous_champion']} -> "
          f"v{rec['champion']}")
    return 0


def add(commands: Commands) -> None:
    commands.add("champion", "show the champion and challenger versions", cmd_champion)
    commands.add("versions", "list the registered versions, newest first: number, model, "
                 "test accuracy, when, aliases", cmd_versions)

    p = commands.add("promote", "make a registry version the champion, if the promotion "
                     "gate agrees (floor, margin, McNemar test, real-world set)", cmd_promote)
    p.add_argument("--version", required=True, type=POSITIVE_INT,
                   help="the registry version to promote (`mnist-mlops versions` lists "
                   "them)")
    p.add_argument("--force", action="store_true",
                   help="promote even if the gate refuses (recorded on the version)")

    commands.add("rollback", "make the previous champion the champion again", cmd_rollback)
