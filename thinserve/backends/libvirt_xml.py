"""What a libvirt domain's XML says, and the domain XML made from a template.

The console address is read from the live XML of a running domain (its
VNC port exists only while it runs with ``autoport``); a desktop made from
a template is the template with the desktop's name, and without the
identifiers libvirt must make anew for each domain.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from pathlib import Path

from .base import BackendError, ConsoleAddress

WILDCARDS = ("", "0.0.0.0", "::")


# --- console address from the domain XML --------------------------------------------


def console_address(
    domain_xml: str, remote_host: str | None = None, console_host: str | None = None
) -> ConsoleAddress:
    """Where the VNC console of a running domain is, read from its XML.

    ``remote_host`` is the hypervisor host when the connection is remote: a
    wildcard listen address means "connect to that host", and a loopback
    address or Unix socket there is unreachable.  ``console_host``, when
    given, replaces whatever host the XML says (for a tunnel or NAT).
    """
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError as exc:
        raise BackendError(f"libvirt returned unreadable domain XML: {exc}") from exc
    name = root.findtext("name") or "?"
    graphics = root.find("./devices/graphics[@type='vnc']")
    if graphics is None:
        raise BackendError(f"domain {name} has no VNC console: add <graphics type='vnc'/>")
    password = graphics.get("passwd") or None
    socket = _socket_path(graphics)
    if socket:
        if remote_host and not console_host:
            raise BackendError(
                f"domain {name}: its VNC console is a Unix socket on {remote_host}; "
                "listen on an address instead"
            )
        return ConsoleAddress(endpoint=f"unix:path={socket}", password=password)
    port = int(graphics.get("port") or "-1")
    if port <= 0:
        raise BackendError(f"domain {name} has no VNC port yet (is it running?)")
    host = console_host or _console_host(name, _listen_address(graphics), remote_host)
    return ConsoleAddress(endpoint=tcp_endpoint(host, port), password=password)


def _socket_path(graphics: ET.Element) -> str | None:
    if graphics.get("socket"):
        return graphics.get("socket")
    for listen in graphics.findall("listen"):
        if listen.get("type") == "socket" and listen.get("socket"):
            return listen.get("socket")
    return None


def _listen_address(graphics: ET.Element) -> str:
    for listen in graphics.findall("listen"):
        if listen.get("type") in ("address", "network") and listen.get("address"):
            return str(listen.get("address"))
    return graphics.get("listen") or ""


def _console_host(name: str, address: str, remote_host: str | None) -> str:
    if address in WILDCARDS:
        return remote_host or "127.0.0.1"
    if remote_host and _is_loopback(address):
        raise BackendError(
            f"domain {name}: its VNC console listens on {address} of {remote_host}, "
            "which is not reachable from here; set console_host if you tunnel it"
        )
    return address


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def tcp_endpoint(host: str, port: int) -> str:
    """A Twisted client endpoint description (IPv6 colons escaped)."""
    return f"tcp:host={host.replace(':', chr(92) + ':')}:port={port}"


# --- a domain from a template ------------------------------------------------------------

MAX_TEMPLATE = 1024 * 1024  # bytes: a domain XML is a few kilobytes


def read_template(path: Path) -> str:
    """The template file's text; a missing or huge file is a BackendError."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_TEMPLATE + 1)
    except OSError as exc:
        raise BackendError(
            f"cannot read the libvirt domain template {path}: {exc.strerror}; "
            "fix template in the [[libvirt]] table"
        ) from exc
    if len(data) > MAX_TEMPLATE:
        raise BackendError(f"libvirt domain template {path} is over {MAX_TEMPLATE} bytes")
    return data.decode("utf-8", errors="replace")


def domain_from_template(template: str, name: str) -> str:
    """The template's domain XML, named ``name``.

    Its ``<uuid>`` and the ``<mac>`` of its interfaces go: libvirt makes new
    ones, so two desktops from one template never share an identity.
    """
    try:
        root = ET.fromstring(template)
    except ET.ParseError as exc:
        raise BackendError(f"the libvirt domain template is not XML: {exc}") from exc
    if root.tag != "domain":
        raise BackendError(f"the libvirt domain template's root is <{root.tag}>, not <domain>")
    element = root.find("name")
    if element is None:
        element = ET.SubElement(root, "name")
    element.text = name
    for uuid in root.findall("uuid"):
        root.remove(uuid)
    for interface in root.findall("./devices/interface"):
        for mac in interface.findall("mac"):
            interface.remove(mac)
    return ET.tostring(root, encoding="unicode")
