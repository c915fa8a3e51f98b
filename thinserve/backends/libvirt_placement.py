"""Which hypervisor host a libvirt desktop starts on: plain data, no libvirt.

A libvirt backend may name several hosts.  When a desktop is not tied to
one host (defined on several, with shared storage, or on none and made
from a template), the backend measures each candidate host at that moment
(running domains, free memory) and ``choose_host`` picks one.  Kept apart
from libvirt itself so the rule can be read, and tested, as a function of
a few numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

LEAST_LOADED = "least-loaded"
FIRST = "first"
PLACEMENTS = (LEAST_LOADED, FIRST)
MIB = 1024 * 1024


@dataclass(frozen=True)
class HostConfig:
    """One hypervisor host of a libvirt backend."""

    uri: str  # e.g. qemu+ssh://kvm1.example/system
    console_host: str | None = None  # connect its consoles here instead (a tunnel, NAT)
    max_domains: int | None = None  # start nothing more on it while it runs this many

    def __post_init__(self) -> None:
        if not self.uri:
            raise ValueError('libvirt host: uri must not be empty, e.g. "qemu+ssh://kvm1/system"')
        if self.max_domains is not None and self.max_domains < 1:
            raise ValueError("libvirt host: max_domains must be at least 1 (or left out)")

    @property
    def name(self) -> str:
        """How logs and messages name the host: its URI."""
        return self.uri

    @property
    def remote_host(self) -> str | None:
        """The host named in the URI (None for a hypervisor on this machine)."""
        return urlsplit(self.uri).hostname


@dataclass(frozen=True)
class HostLoad:
    """A host as measured when a desktop is placed."""

    name: str
    running: int  # active domains, desktops or not (and starts under way)
    free_memory: int  # bytes
    max_domains: int | None = None

    @property
    def has_room(self) -> bool:
        return self.max_domains is None or self.running < self.max_domains


def choose_host(loads: Sequence[HostLoad], placement: str = LEAST_LOADED) -> HostLoad | None:
    """The host to start on, or None when every one is at its ``max_domains``.

    ``loads`` are in config order.  ``least-loaded``: fewest running domains,
    then most free memory, then config order.  ``first``: the first with room.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}")
    open_hosts = [load for load in loads if load.has_room]
    if not open_hosts:
        return None
    if placement == FIRST:
        return open_hosts[0]
    return min(open_hosts, key=lambda load: (load.running, -load.free_memory))  # first of equals


def why_full(loads: Sequence[HostLoad]) -> str:
    """Why ``choose_host`` found no room, for an error message."""
    if not loads:
        return "no host can be reached"
    each = ", ".join(f"{load.name} runs {load.running} of {load.max_domains}" for load in loads)
    return f"every host is at its max_domains ({each}); stop a desktop or raise max_domains"


def describe(load: HostLoad) -> str:
    """A host's load in a log line."""
    return f"{load.running} running, {load.free_memory // MIB} MiB free"
