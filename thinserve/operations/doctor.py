"""``thinserve doctor``: can this machine run the configuration it is given?

Every check prints OK, WARN or FAIL, what it found, and for a problem the
command that fixes it (thinserve.operations.checks).  The exit status is 0
when nothing FAILs, 1 otherwise (2 for a configuration that cannot be read),
so a script or CI can run it after installing the package.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..config import Config, ConfigError
from . import checks, sitechecks
from .report import FAIL, Check, fail


def run(args: argparse.Namespace) -> int:
    from ..cli import config_from

    try:
        config = config_from(args)
    except ConfigError as exc:
        found = [fail("config", str(exc), "fix the file (docs/configuration.md)")]
        _print(found, args.json)
        return 2
    found = examine(config, boot_guest=not args.no_guest)
    _print(found, args.json)
    return 1 if any(c.status == FAIL for c in found) else 0


def examine(config: Config, boot_guest: bool = True) -> list[Check]:
    """Every check, in the order a person fixes things: programs, devices, then files."""
    return [
        *checks.programs(config),
        checks.kvm(config, boot_guest),
        *checks.libvirt(config),
        checks.multicast(config),
        *checks.listening_ports(config),
        *checks.directories(config),
        *checks.certificate(config),
        checks.disk_space(config),
        *checks.accounts(config),
        *sitechecks.site(config),
    ]


def _print(found: list[Check], as_json: bool) -> None:
    if as_json:
        failed = any(c.status == FAIL for c in found)
        document = {"ok": not failed, "checks": [c.as_dict() for c in found]}
        json.dump(document, sys.stdout, indent=2)
        print()
        return
    for check in found:
        print("\n".join(check.lines()))
