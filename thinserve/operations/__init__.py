"""Operator commands that work on this machine, not through the admin API:
``thinserve doctor`` (is this machine ready to serve?), ``thinserve backup
FILE`` and ``thinserve restore FILE`` (the database).  They take the same
--config/--defaults/--state-dir options as ``serve``, so they look at the
same files the server uses.  See docs/install.md."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


def add_commands(sub: Subcommands) -> None:
    """Add doctor, backup and restore to the ``thinserve`` parser's subcommands."""
    from ..cli import add_config_options

    doctor_p = _add(sub, "doctor", "check that this machine can run thinserve, and say how to fix")
    add_config_options(doctor_p)
    doctor_p.add_argument("--json", action="store_true", help="print the checks as JSON")
    doctor_p.add_argument(
        "--no-guest",
        action="store_true",
        help="skip booting the tiny KVM test guest (the check of /dev/kvm's access stays)",
    )
    doctor_p.set_defaults(operation=_later("doctor", "run"))
    backup_p = _add(sub, "backup", "copy the database to FILE, safely while the server runs")
    add_config_options(backup_p)
    backup_p.add_argument("file", metavar="FILE", help="where to write the copy (must not exist)")
    backup_p.set_defaults(operation=_later("backup", "run_backup"))
    restore_p = _add(
        sub, "restore", "replace the database with the backup FILE (the server must be stopped)"
    )
    add_config_options(restore_p)
    restore_p.add_argument("file", metavar="FILE", help="a file made by thinserve backup")
    restore_p.set_defaults(operation=_later("backup", "run_restore"))


def _later(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """The operation ``name`` of ``module``, imported only when it runs: the other
    commands start without loading the server's configuration code."""

    def operation(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(f"{__name__}.{module}"), name)(args))

    return operation


def _add(sub: Subcommands, name: str, what: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=what, description=what)


def run(args: argparse.Namespace) -> int:
    """Run the operation the parsed ``args`` name; 2 when they name none."""
    operation = getattr(args, "operation", None)
    return 2 if operation is None else int(operation(args))
