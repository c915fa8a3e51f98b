"""The ``thinserve`` admin commands: they call the running server's admin API.

People get aligned tables and one-line confirmations; ``--json`` prints the
API's JSON instead (errors too, as ``{"error": ..., "hint": ...}``), for
scripts.  Exit codes: 0 done, 1 error, 2 usage.  See docs/admin.md.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..terminal_ids import kind_of
from . import SOCKET_ENV, client_socket_path
from .client import AdminClient, AdminError

EXIT_OK, EXIT_ERROR = 0, 1  # usage errors exit 2, from argparse
MAX_SECRET_LINE = 4096
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

Command = Callable[[AdminClient, argparse.Namespace], Any]
if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


# -- the parser -------------------------------------------------------------------------------
def add_commands(sub: Subcommands) -> None:
    """Add every admin command to the ``thinserve`` parser's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--socket",
        metavar="PATH",
        help=f"the admin socket (default: ${SOCKET_ENV}, else {client_socket_path()})",
    )
    common.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the server run with serve --state-dir DIR (its socket DIR/run/admin.sock)",
    )
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    _add(sub, common, "terminals", "list terminals and what each shows", terminals)
    _add_desktops(sub, common)
    _add(
        sub,
        common,
        "state",
        "summarise what the broker decided, and the server certificate",
        state,
        aliases=["status"],
    )
    _add_pairing(sub, common)
    _terminal_command(sub, common, "unpair", "remove a terminal's pairing", unpair)
    shadow_p = _add(sub, common, "shadow", "let a terminal watch a desktop, view-only", shadow)
    shadow_p.add_argument("terminal", metavar="TERMINAL")
    shadow_p.add_argument("desktop", metavar="DESKTOP")
    _terminal_command(sub, common, "unshadow", "stop a terminal watching a desktop", unshadow)
    _terminal_command(sub, common, "kick", "disconnect a terminal", kick)
    _add_users(sub, common)
    _add_admins(sub, common)
    _add_tokens(sub, common)
    sessions_p = _add(sub, common, "sessions", "who used which desktop, newest first", sessions)
    sessions_p.add_argument("--limit", type=int, default=50, help="at most N (default 50)")
    sessions_p.add_argument("--terminal", metavar="TERMINAL", help="only this terminal")
    audit_p = _add(sub, common, "audit", "the newest audit log entries", audit)
    audit_p.add_argument("--limit", type=int, default=50, help="at most N (default 50)")
    audit_p.add_argument("--subject", metavar="NAME", help="only entries about this")
    snap = _add(sub, common, "snapshot", "save what a terminal shows now as PNG", snapshot)
    snap.add_argument("terminal", metavar="TERMINAL")
    snap.add_argument("file", metavar="FILE.png", help="where to write ('-': standard output)")


def _add(
    sub: Subcommands,
    common: argparse.ArgumentParser,
    name: str,
    what: str,
    func: Command,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=what, description=what, parents=[common], **kwargs)
    parser.set_defaults(admin=func, parser=parser)
    return parser


def _terminal_command(
    sub: Subcommands,
    common: argparse.ArgumentParser,
    name: str,
    what: str,
    func: Command,
) -> None:
    _add(sub, common, name, what, func).add_argument("terminal", metavar="TERMINAL")


def _add_pairing(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    pair_p = _add(
        sub,
        common,
        "pair",
        "pair a terminal with a desktop, by id or by the code on its screen",
        pair,
        usage="thinserve pair [--new] [--by-address] TERMINAL DESKTOP\n"
        "       thinserve pair --code CODE [--by-address] DESKTOP",
    )
    pair_p.add_argument("--code", help="the pairing code the terminal shows, e.g. K7D-Q2M")
    pair_p.add_argument(
        "--by-address",
        action="store_true",
        help="bind a keyless viewer by its address: any device at that address gets the "
        "desktop (without it, a keyless viewer is paired for its current connection only)",
    )
    pair_p.add_argument(
        "--new", action="store_true", help="pair a terminal id that has never connected yet"
    )
    pair_p.add_argument("names", nargs="+", metavar="TERMINAL DESKTOP")


DESKTOP_ACTIONS = {
    "start": "start a desktop now (waits until it runs or fails)",
    "stop": "stop a desktop now (a terminal given it starts it again)",
    "reset": "reset a desktop to its template, or a fresh session",
    "forget": "remove a desktop no longer configured from the database, with its pairings",
}


def _add_desktops(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``thinserve desktops`` lists them; ``thinserve desktops ACTION NAME`` acts on one."""
    what = "list desktops, their state and who uses them; or act on one"
    desktops_p = _add(sub, common, "desktops", what, desktops)
    actions = desktops_p.add_subparsers(
        dest="desktops_command", metavar="{start,stop,reset,forget}"
    )
    for action, help_text in DESKTOP_ACTIONS.items():
        func = forget_desktop if action == "forget" else desktop_action
        _add(actions, common, action, help_text, func).add_argument("desktop", metavar="NAME")


def _add_users(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    users_p = sub.add_parser("users", help="hot-desking users", description="hot-desking users")
    users_sub = users_p.add_subparsers(
        dest="users_command", metavar="{add,list,delete,passwd,disable,enable}"
    )
    users_sub.required = True
    add_p = _add(users_sub, common, "add", "add a user (asks for the PIN or password)", add_user)
    add_p.add_argument("name", metavar="NAME")
    add_p.add_argument("--desktop", metavar="DESKTOP", help="the user's own desktop")
    add_p.add_argument(
        "--secret-stdin",
        action="store_true",
        help="read the PIN or password from the first line of standard input",
    )
    _add(users_sub, common, "list", "list users", list_users)
    _add(users_sub, common, "delete", "delete a user", delete_user).add_argument("name")
    passwd_p = _add(
        users_sub, common, "passwd", "give a user a new PIN or password (asks for it)", user_passwd
    )
    passwd_p.add_argument("name", metavar="NAME")
    passwd_p.add_argument(
        "--secret-stdin",
        action="store_true",
        help="read the PIN or password from the first line of standard input",
    )
    for action, what in USER_ACTIONS.items():
        _add(users_sub, common, action, what, user_action).add_argument("name", metavar="NAME")


USER_ACTIONS = {
    "disable": "refuse a user's logins (logs them out now)",
    "enable": "accept a disabled user's logins again",
}
ADMIN_ACTIONS = {
    "disable": "disable a dashboard admin: its sessions and API tokens stop at once",
    "enable": "enable a disabled dashboard admin again",
    "unlock": "lift the lockout after too many wrong passwords",
}


def _add_admins(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``thinserve admins ...``: the accounts that log in to the web dashboard."""
    what = "the web dashboard's admin accounts"
    admins_p = sub.add_parser("admins", help=what, description=what)
    admins_sub = admins_p.add_subparsers(
        dest="admins_command", metavar="{add,list,passwd,disable,enable,unlock,remove}"
    )
    admins_sub.required = True
    add_p = _add(
        admins_sub, common, "add", "add an admin account (asks for its password)", add_admin
    )
    add_p.add_argument("name", metavar="NAME")
    add_p.add_argument(
        "--role",
        choices=("admin", "helpdesk"),
        default="admin",
        help="admin: everything; helpdesk: look, shadow and kick (default admin)",
    )
    add_p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    _add(admins_sub, common, "list", "list admin accounts", list_admins)
    passwd_p = _add(admins_sub, common, "passwd", "set an admin's password (asks)", admin_passwd)
    passwd_p.add_argument("name", metavar="NAME")
    passwd_p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    for action, help_text in ADMIN_ACTIONS.items():
        _add(admins_sub, common, action, help_text, admin_action).add_argument(
            "name", metavar="NAME"
        )
    _add(
        admins_sub, common, "remove", "remove an admin account and its API tokens", remove_admin
    ).add_argument("name", metavar="NAME")


def _add_tokens(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``thinserve tokens ...``: bearer tokens for scripts and Prometheus."""
    what = "API tokens for the dashboard's API and metrics"
    tokens_p = sub.add_parser("tokens", help=what, description=what)
    tokens_sub = tokens_p.add_subparsers(dest="tokens_command", metavar="{add,list,remove}")
    tokens_sub.required = True
    add_p = _add(
        tokens_sub, common, "add", "make a token acting as ADMIN (shown only once)", add_token
    )
    add_p.add_argument("account", metavar="ADMIN")  # "admin" is the command's function
    add_p.add_argument("--label", required=True, help="what the token is for, e.g. grafana")
    list_p = _add(tokens_sub, common, "list", "list tokens (never the tokens themselves)", tokens)
    list_p.add_argument("--admin", dest="account", metavar="ADMIN", help="only this admin's tokens")
    _add(tokens_sub, common, "remove", "remove a token", remove_token).add_argument(
        "id", metavar="ID"
    )


def run(args: argparse.Namespace) -> int:
    """Run the admin command ``args`` names; return the exit code."""
    client = AdminClient(args.socket or client_socket_path(state_dir=args.state_dir))
    try:
        args.admin(client, args)
    except AdminError as exc:
        _print_error(exc, args.json)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _print_error(exc: AdminError, as_json: bool) -> None:
    if as_json:
        payload = dict(exc.payload)
        payload.setdefault("error", exc.message)
        payload.setdefault("hint", exc.hint)
        _print_json(payload)
        return
    print(f"thinserve: {clean(exc.message)}", file=sys.stderr)
    if exc.hint:
        print(f"  {clean(exc.hint)}", file=sys.stderr)


# -- reading ----------------------------------------------------------------------------------
IDENTITY_WORDS = {
    "key": "key",
    "address": "address-bound",
    "connection": "this connection",
    "claimed": "unproven (old)",
}


def terminals(client: AdminClient, args: argparse.Namespace) -> None:
    rows = client.terminals()
    if _json_out(args, rows):
        return
    if not rows:
        print("no terminals known yet: they appear here when they first connect")
        return
    headers = ("TERMINAL", "IDENTITY", "CONNECTED", "ADDRESS", "MODEL", "SCREEN", "SHOWS", "CODE")
    print(
        table(
            (*headers, "PAIRED", "USER", "LAST SEEN"),
            (
                (
                    t["id"],
                    IDENTITY_WORDS.get(t["identity"], t["identity"]),
                    t["connected"],
                    t["address"],
                    t["model"],
                    size_text(t["screen"]),
                    shows_text(t["shows"]),
                    t["pairing_code"],
                    t["paired_desktop"],
                    t["user"],
                    "now" if t["connected"] else when(t["last_seen"]),
                )
                for t in rows
            ),
        )
    )


def desktops(client: AdminClient, args: argparse.Namespace) -> None:
    rows = client.desktops()
    if _json_out(args, rows):
        return
    if not rows:
        print("no desktops registered")
        return
    headers = ("DESKTOP", "BACKEND", "LINK", "STATE", "SIZE", "CONTROLLED BY", "USER")
    print(
        table(
            (*headers, "WATCHERS", "PAIRED WITH", "OWNER", "POOL", "WHY"),
            (
                (
                    d["name"],
                    d["backend"],
                    d["mirror"] or "not configured",
                    d["state"] or "not configured",
                    size_text(d["size"]),
                    d["controlled_by"],
                    d["controlling_user"],
                    ", ".join(d["watchers"]) or None,
                    d["paired_terminal"],
                    d["owner"],
                    d["pool"],
                    d["detail"] or None,
                )
                for d in rows
            ),
        )
    )


def desktop_action(client: AdminClient, args: argparse.Namespace) -> None:
    action = args.desktops_command
    result = client.desktop_action(args.desktop, action)
    if _json_out(args, result):
        return
    row = result.get("desktop") or {}
    done = {"start": "started", "stop": "stopped", "reset": "reset"}[action]
    now = row.get("state") or "unknown"
    why = f" ({clean(str(row['detail']))})" if row.get("detail") else ""
    print(f"desktop {clean(args.desktop)} {done}; now {now}{why}")


def forget_desktop(client: AdminClient, args: argparse.Namespace) -> None:
    result = client.forget_desktop(args.desktop)
    if _json_out(args, result):
        return
    print(f"desktop {clean(args.desktop)} forgotten, with its pairings")


def state(client: AdminClient, args: argparse.Namespace) -> None:
    data = client.state()
    if _json_out(args, data):
        return
    server = data.get("server") or {}
    lines = [
        ("server", f"{server.get('name', '?')} on {', '.join(server.get('listening', []))}"),
        ("certificate", f"{server.get('certificate', '-')}, key {server.get('fingerprint', '-')}"),
        ("connected", f"{len(data['connected'])}: {', '.join(data['connected']) or '-'}"),
        ("desktops", ", ".join(f"{k} {v}" for k, v in sorted(data["desktops"].items())) or "-"),
        ("logins", ", ".join(f"{u} at {t}" for t, u in sorted(data["logins"].items())) or "-"),
        ("watching", ", ".join(f"{t} -> {d}" for t, d in sorted(data["watchers"].items())) or "-"),
        ("pool leases", ", ".join(f"{d} -> {h}" for d, h in sorted(data["leases"].items())) or "-"),
        ("pairings", str(len(data["pairings"]))),
    ]
    print(table(("WHAT", "NOW"), lines, header=False))


def list_users(client: AdminClient, args: argparse.Namespace) -> None:
    rows = client.users()
    if _json_out(args, rows):
        return
    if not rows:
        print("no users yet: add one with `thinserve users add NAME`")
        return
    print(
        table(
            ("USER", "DESKTOP", "LOGGED IN AT", "CREATED"),
            ((u["name"], u["desktop"], u["logged_in_at"], when(u["created"])) for u in rows),
        )
    )


def sessions(client: AdminClient, args: argparse.Namespace) -> None:
    _positive(args, args.limit)
    rows = client.sessions(args.limit, args.terminal)
    if _json_out(args, rows):
        return
    if not rows:
        print("no sessions recorded yet")
        return
    print(
        table(
            ("ID", "TERMINAL", "DESKTOP", "USER", "STARTED", "ENDED", "DURATION"),
            (
                (
                    s["id"],
                    s["terminal"],
                    s["desktop"],
                    s["user"],
                    when(s["started"]),
                    when(s["ended"]) if s["ended"] else "running",
                    duration(s["started"], s["ended"]),
                )
                for s in rows
            ),
        )
    )


def audit(client: AdminClient, args: argparse.Namespace) -> None:
    _positive(args, args.limit)
    rows = client.audit(args.limit, args.subject)
    if _json_out(args, rows):
        return
    if not rows:
        print("the audit log is empty")
        return
    print(
        table(
            ("TIME", "ACTOR", "ACTION", "SUBJECT", "DETAIL"),
            ((when(e["time"]), e["actor"], e["action"], e["subject"], e["detail"]) for e in rows),
        )
    )


def snapshot(client: AdminClient, args: argparse.Namespace) -> None:
    png = client.snapshot(args.terminal)
    width, height = png_size(png)
    if args.file == "-":
        sys.stdout.buffer.write(png)
        sys.stdout.buffer.flush()
        return
    try:
        Path(args.file).write_bytes(png)
    except OSError as exc:
        raise AdminError(
            f"cannot write {args.file}: {exc.strerror}", "choose another file"
        ) from None
    result = {"terminal": args.terminal, "file": args.file, "bytes": len(png)}
    if not _json_out(args, {**result, "width": width, "height": height}):
        print(f"wrote {args.file}: what {clean(args.terminal)} shows, {width}x{height}")


# -- acting -----------------------------------------------------------------------------------
def pair(client: AdminClient, args: argparse.Namespace) -> None:
    if args.code is not None:
        if len(args.names) != 1 or args.new:
            args.parser.error("with --code give only the DESKTOP (and no --new)")
        result = client.pair_code(args.code, args.names[0], args.by_address)
    else:
        if len(args.names) != 2:
            args.parser.error("give TERMINAL and DESKTOP, or --code CODE and DESKTOP")
        result = client.pair(args.names[0], args.names[1], args.new, args.by_address)
    desktop = args.names[-1]
    _confirm(
        args, result, lambda t: f"paired {t} with {desktop}{_lasting(t)}; {_now_shows(result)}"
    )


def _lasting(terminal_id: str) -> str:
    kind = kind_of(terminal_id)
    if kind == "connection":
        return " for this connection only (it has no key; --by-address binds its address)"
    if kind == "address":
        return " by address"
    return ""


def unpair(client: AdminClient, args: argparse.Namespace) -> None:
    result = client.unpair(args.terminal)
    if not result["changed"]:
        _confirm(args, result, lambda t: f"{t} was not paired; nothing changed")
        return
    _confirm(args, result, lambda t: f"unpaired {t}; {_now_shows(result)}")


def kick(client: AdminClient, args: argparse.Namespace) -> None:
    result = client.kick(args.terminal)
    if result.get("elsewhere"):
        _confirm(
            args,
            result,
            lambda t: f"asked every node to kick {t}: the node it is connected to closes it",
        )
        return
    _confirm(args, result, lambda t: f"kicked {t}: it shows a notice, then its connection closes")


def shadow(client: AdminClient, args: argparse.Namespace) -> None:
    result = client.shadow(args.terminal, args.desktop)
    _confirm(args, result, lambda t: f"{t} watches {args.desktop}; {_now_shows(result)}")


def unshadow(client: AdminClient, args: argparse.Namespace) -> None:
    result = client.unshadow(args.terminal)
    if not result["changed"]:
        _confirm(args, result, lambda t: f"{t} was not watching a desktop; nothing changed")
        return
    _confirm(args, result, lambda t: f"{t} stopped watching; {_now_shows(result)}")


def add_user(client: AdminClient, args: argparse.Namespace) -> None:
    secret = read_secret(args)
    result = client.add_user(args.name, secret, args.desktop)
    if not _json_out(args, result):
        own = f" with desktop {args.desktop}" if args.desktop else ""
        print(f"added user {clean(args.name)}{own}")


def delete_user(client: AdminClient, args: argparse.Namespace) -> None:
    result = client.delete_user(args.name)
    if not _json_out(args, result):
        print(f"deleted user {clean(args.name)}")


def read_secret(args: argparse.Namespace) -> str:
    """The new user's PIN or password: from stdin's first line, or asked twice."""
    prompt = f"PIN or password for {clean(args.name)}: "
    return _typed_twice(args, args.secret_stdin, "secret", "PIN or password", prompt)


def user_passwd(client: AdminClient, args: argparse.Namespace) -> None:
    result = client.user_secret(args.name, read_secret(args))
    if not _json_out(args, result):
        print(f"user {clean(args.name)} has a new PIN or password")


def user_action(client: AdminClient, args: argparse.Namespace) -> None:
    result = client.user_action(args.name, args.users_command)
    if _json_out(args, result):
        return
    done = f"{args.users_command}d"
    print(f"user {clean(args.name)} {done}" + ("" if result["changed"] else " already"))


# -- dashboard admins and API tokens ----------------------------------------------------------
def list_admins(client: AdminClient, args: argparse.Namespace) -> None:
    rows = client.admins()
    if _json_out(args, rows):
        return
    if not rows:
        print("no admin accounts yet: add one with `thinserve admins add NAME`")
        return
    print(
        table(
            ("ADMIN", "ROLE", "STATE", "WRONG PASSWORDS", "CREATED"),
            (
                (a["name"], a["role"], admin_state(a), a["failures"], when(a["created"]))
                for a in rows
            ),
        )
    )


def admin_state(row: dict[str, Any]) -> str:
    if row["disabled"]:
        return "disabled"
    if row["locked"]:
        return f"locked until {when(row['locked_until'])}"
    return "enabled"


def add_admin(client: AdminClient, args: argparse.Namespace) -> None:
    result = client.add_admin(args.name, read_password(args), args.role)
    if not _json_out(args, result):
        print(f"added {args.role} {clean(args.name)}")


def admin_passwd(client: AdminClient, args: argparse.Namespace) -> None:
    result = client.admin_password(args.name, read_password(args))
    if not _json_out(args, result):
        print(f"admin {clean(args.name)} has a new password; its dashboard sessions ended")


def admin_action(client: AdminClient, args: argparse.Namespace) -> None:
    action = args.admins_command
    result = client.admin_action(args.name, action)
    if _json_out(args, result):
        return
    done = {"disable": "disabled", "enable": "enabled", "unlock": "unlocked"}[action]
    print(f"admin {clean(args.name)} {done}" + ("" if result["changed"] else " already"))


def remove_admin(client: AdminClient, args: argparse.Namespace) -> None:
    result = client.remove_admin(args.name)
    if not _json_out(args, result):
        print(f"removed admin {clean(args.name)} and its API tokens")


def tokens(client: AdminClient, args: argparse.Namespace) -> None:
    rows = client.tokens(args.account)
    if _json_out(args, rows):
        return
    if not rows:
        print("no API tokens: make one with `thinserve tokens add ADMIN --label LABEL`")
        return
    print(
        table(
            ("ID", "ADMIN", "LABEL", "CREATED", "LAST USED"),
            (
                (t["id"], t["admin"], t["label"], when(t["created"]), when(t["last_used"]))
                for t in rows
            ),
        )
    )


def add_token(client: AdminClient, args: argparse.Namespace) -> None:
    result = client.add_token(args.account, args.label)
    if _json_out(args, result):
        return
    print(clean(result["token"]))  # alone on standard output, for TOKEN=$(thinserve tokens add ...)
    print(
        f"API token {clean(result['id'])} acts as {clean(args.account)} ({clean(args.label)}); "
        "store it now: it will not be shown again",
        file=sys.stderr,
    )


def remove_token(client: AdminClient, args: argparse.Namespace) -> None:
    result = client.remove_token(args.id)
    if not _json_out(args, result):
        print(f"removed API token {clean(args.id)}")


def read_password(args: argparse.Namespace) -> str:
    """An admin's new password: from stdin's first line, or asked twice."""
    prompt = f"Password for {clean(args.name)} (10 to 128 characters): "
    return _typed_twice(args, args.password_stdin, "password", "password", prompt)


def _typed_twice(
    args: argparse.Namespace, from_stdin: bool, option: str, what: str, prompt: str
) -> str:
    """A secret from stdin's first line (with --OPTION-stdin), or typed twice at
    the terminal; ``what`` names it in the messages."""
    if from_stdin:
        secret = sys.stdin.readline(MAX_SECRET_LINE).rstrip("\r\n")
        if not secret:
            raise AdminError(f"no {what} on standard input", "pipe one line, e.g. printf")
        return secret
    if not sys.stdin.isatty():
        args.parser.error(
            f"standard input is not a terminal: use --{option}-stdin and pipe the {option}"
        )
    first = getpass.getpass(prompt)
    second = getpass.getpass("The same again: ")
    if first != second:
        raise AdminError("the two entries differ; nothing was changed", "run the command again")
    return first


# -- output helpers ---------------------------------------------------------------------------
def table(headers: Sequence[str], rows: Iterable[Sequence[object]], header: bool = True) -> str:
    """Columns aligned with two spaces between them; None shows as "-"."""
    cells = [[cell(value) for value in row] for row in rows]
    widths = [len(h) if header else 0 for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ([list(headers)] if header else []) + cells
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return clean(str(value))


def clean(text: str) -> str:
    """``text`` safe for a terminal: control characters (escapes) become "?"."""
    return _CONTROL.sub("?", text)


def when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def duration(started: float, ended: float | None) -> str:
    seconds = int((ended or time.time()) - started)
    hours, rest = divmod(max(seconds, 0), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def size_text(size: dict[str, int] | None) -> str | None:
    return f"{size['width']}x{size['height']}" if size else None


def shows_text(shows: dict[str, Any] | None) -> str | None:
    """What a terminal shows, in a few words."""
    if shows is None:
        return None
    if shows["kind"] == "desktop":
        return f"{shows['desktop']} ({'control' if shows['control'] else 'view-only'})"
    if shows["kind"] == "pairing":
        return "pairing screen"
    screen = f"{shows['kind']} screen"
    return f"{screen} ({shows['desktop']})" if shows.get("desktop") else screen


def png_size(png: bytes) -> tuple[int, int]:
    if len(png) < 24 or not png.startswith(PNG_SIGNATURE):
        raise AdminError("thinserve sent something that is not a PNG", "check thinserve's log")
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def _now_shows(result: dict[str, Any]) -> str:
    row = result.get("terminal")
    if row is None or not row["connected"]:
        return "it shows that when it connects"
    return f"it now shows {shows_text(row['shows'])}"


def _confirm(args: argparse.Namespace, result: dict[str, Any], text: Callable[[str], str]) -> None:
    if _json_out(args, result):
        return
    row = result.get("terminal")
    print(text(clean(row["id"] if row else str(getattr(args, "terminal", "")))))


def _json_out(args: argparse.Namespace, data: Any) -> bool:
    if args.json:
        _print_json(data)
    return bool(args.json)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _positive(args: argparse.Namespace, value: int) -> None:
    if not 1 <= value <= 1000:
        args.parser.error("--limit: give a number from 1 to 1000")
