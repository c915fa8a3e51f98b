"""Command-line options of thinserve-terminal."""

from __future__ import annotations

import argparse
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from protocols.terminal import DEFAULT_PORT, MAX_SCREEN_SIDE

from .identity import KEY_FILE, checked_id

MODEL = "thinserve-terminal"
RFB_PORT = 5900
HEADLESS_SIZE = (1024, 768)
MAX_SERVERS = 16  # --connect given this many times at most


@dataclass(frozen=True)
class Options:
    mode: str  # "listen", "connect" or "find"
    host: str | None = None  # --connect: the first server
    port: int = DEFAULT_PORT  # where to listen, or where to connect
    servers: tuple[tuple[str, int], ...] = ()  # --connect: every server, in order
    interfaces: tuple[str, ...] = ()
    ipv4_only: bool = False
    name: str | None = None  # DNS-SD instance name
    id_name: str | None = None  # --id: the key key-NAME.pem instead of key.pem
    key_file: Path | None = None  # None: the default (or --id's) place
    window: tuple[int, int] | None = None  # None: full screen
    headless: bool = False
    record: Path | None = None
    script: str | None = None  # a file name, or "-" for standard input
    clipboard_file: Path | None = None
    quality: int | None = None  # JPEG quality level 0-9; None: lossless
    password_file: Path | None = None
    ca_file: str | None = None
    find_name: str = "thinserve"
    show_id: bool = False
    verbose: bool = False


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 1280x800")
    width, height = int(match.group(1)), int(match.group(2))
    if width > MAX_SCREEN_SIDE or height > MAX_SCREEN_SIDE:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {MAX_SCREEN_SIDE} a side")
    return width, height


def parse_host_port(text: str, default_port: int = RFB_PORT) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[IPv6]:PORT`` or a bare IPv6 address."""
    host, port = text, default_port
    if text.startswith("["):
        match = re.fullmatch(r"\[([^\]]+)\](?::([0-9]+))?", text)
        if match is None:
            raise argparse.ArgumentTypeError(f"{text!r} is not [ADDRESS]:PORT")
        host, port = match.group(1), int(match.group(2) or default_port)
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        if not number.isdigit():
            raise argparse.ArgumentTypeError(f"{text!r}: the port is not a number")
        port = int(number)
    if not host or not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST[:PORT] with a port 1-65535")
    return host, port


def parse_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def parse_port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port 0-65535")
    return int(text)


def parse_quality(text: str) -> int:
    if text not in {str(n) for n in range(10)}:
        raise argparse.ArgumentTypeError(f"{text!r} is not a quality level 0-9")
    return int(text)


def parse_id(text: str) -> str:
    try:
        return checked_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thinserve-terminal",
        description="A thinserve terminal: shows one remote screen full-screen and sends "
        "keyboard, pointer and clipboard. By default it advertises itself and waits for "
        "thinserve to connect.",
    )
    how = parser.add_mutually_exclusive_group()
    how.add_argument(
        "--connect",
        "--server",
        dest="connect",
        action="append",
        metavar="HOST[:PORT]",
        help="connect to this server; repeat it for the other nodes of the site, tried in "
        "turn when the connection is lost",
    )
    how.add_argument("--find", action="store_true", help="find thinserve with mDNS (_rfb._tcp)")
    parser.add_argument(
        "--port", type=parse_port, help=f"port to listen on (default {DEFAULT_PORT}; 0: any)"
    )
    parser.add_argument(
        "--interfaces",
        type=parse_address,
        nargs="+",
        default=[],
        metavar="ADDRESS",
        help="local addresses to listen and use mDNS on (default: all)",
    )
    parser.add_argument("--ipv4-only", action="store_true", help="IPv4 only, for mDNS too")
    parser.add_argument("--name", help="the name thinserve shows for this terminal")
    parser.add_argument(
        "--id",
        type=parse_id,
        dest="id_name",
        metavar="NAME",
        help="be the terminal whose key is key-NAME.pem (one machine, several terminals)",
    )
    parser.add_argument("--key-file", type=Path, metavar="FILE", help="where the key is kept")
    parser.add_argument("--id-file", type=Path, help=argparse.SUPPRESS)  # older: key beside it
    parser.add_argument("--show-id", action="store_true", help="print the terminal id and exit")
    parser.add_argument("--window", type=parse_size, metavar="WxH", help="a window of this size")
    parser.add_argument("--headless", action="store_true", help="no window (for tests and demos)")
    parser.add_argument("--record", type=Path, metavar="DIR", help="save each update as a PNG")
    parser.add_argument("--script", metavar="FILE", help="scripted input from FILE ('-': stdin)")
    parser.add_argument("--clipboard-file", type=Path, metavar="FILE", help="headless clipboard")
    parser.add_argument("--quality", type=parse_quality, metavar="N", help="allow JPEG, level 0-9")
    parser.add_argument("--password-file", type=Path, metavar="FILE", help="VNC password")
    parser.add_argument(
        "--ca",
        "--ca-file",
        dest="ca_file",
        metavar="FILE",
        help="trust only servers whose certificate this CA signed, or this very certificate "
        "(default: trust a server's key on first use)",
    )
    parser.add_argument(
        "--find-name",
        default="thinserve",
        metavar="TEXT",
        help="--find: a server whose name holds TEXT",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    return parser


def parse_servers(parser: argparse.ArgumentParser, given: list[str]) -> tuple[tuple[str, int], ...]:
    """Each ``--connect`` once, in the order given; at most MAX_SERVERS."""
    if len(given) > MAX_SERVERS:
        parser.error(f"{len(given)} servers: give at most {MAX_SERVERS} --connect")
    servers: list[tuple[str, int]] = []
    for text in given:
        try:
            server = parse_host_port(text)
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
        if server not in servers:
            servers.append(server)
    return tuple(servers)


def parse_args(argv: list[str] | None = None) -> Options:
    parser = build_parser()
    args = parser.parse_args(argv)
    mode, host, port = "listen", None, DEFAULT_PORT if args.port is None else args.port
    servers: tuple[tuple[str, int], ...] = ()
    if args.connect is not None:
        servers = parse_servers(parser, args.connect)
        (host, port), mode = servers[0], "connect"
    elif args.find:
        mode = "find"
    interfaces = tuple(args.interfaces)
    all_ipv4 = bool(interfaces) and all(":" not in a for a in interfaces)
    key_file = args.key_file
    if args.id_file is not None and key_file is None:
        key_file = args.id_file.parent / KEY_FILE
    if args.id_name is not None and key_file is not None:
        parser.error("--id names a key beside the default one; give --id or --key-file")
    window = args.window or (HEADLESS_SIZE if args.headless else None)
    return Options(
        mode=mode,
        host=host,
        port=port,
        servers=servers,
        interfaces=interfaces,
        ipv4_only=args.ipv4_only or all_ipv4,
        name=args.name,
        id_name=args.id_name,
        key_file=key_file,
        window=window,
        headless=args.headless,
        record=args.record,
        script=args.script,
        clipboard_file=args.clipboard_file,
        quality=args.quality,
        password_file=args.password_file,
        ca_file=args.ca_file,
        find_name=args.find_name,
        show_id=args.show_id,
        verbose=args.verbose,
    )
