"""A libvirt domain's state, or lifecycle event, in thinserve's desktop states.

libvirt says more (paused, pm-suspended, crashed-but-kept, why it shut
off); the detail string keeps what the state alone loses.  With several
hosts, ``desktop_status`` says what one desktop is across all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import libvirt

from ..desktop_state import DesktopState
from .libvirt_hosts import Host

RUNNING_STATES = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED)
_STOPPED_DETAIL = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "shut down",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: "migrated away",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: "saved",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: "reverted to a snapshot",
}


_RUNNING = (DesktopState.RUNNING, "")
_PAUSED = (DesktopState.STOPPED, "paused")
_SUSPENDED = (DesktopState.STOPPED, "suspended")
_SHUTTING_DOWN = (DesktopState.STOPPING, "shutting down")
_GUEST_CRASHED = (DesktopState.CRASHED, "the guest crashed")
_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: _RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: _RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: _PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: _SUSPENDED,
    libvirt.VIR_DOMAIN_SHUTDOWN: _SHUTTING_DOWN,
    libvirt.VIR_DOMAIN_CRASHED: _GUEST_CRASHED,
}
_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: _GUEST_CRASHED,
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: (DesktopState.CRASHED, "the domain failed to start"),
}
_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_STARTED: _RUNNING,
    libvirt.VIR_DOMAIN_EVENT_RESUMED: _RUNNING,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: _PAUSED,
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: _SUSPENDED,
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: _SHUTTING_DOWN,
    libvirt.VIR_DOMAIN_EVENT_CRASHED: _GUEST_CRASHED,
    libvirt.VIR_DOMAIN_EVENT_DEFINED: (DesktopState.STOPPED, ""),
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: (DesktopState.STOPPED, "removed"),
}
_STOPPED_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: _GUEST_CRASHED,
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: (DesktopState.CRASHED, "the hypervisor failed"),
}


def status_of_state(state: int, reason: int) -> tuple[DesktopState, str]:
    """Map a libvirt domain state and its reason to a desktop status and detail."""
    if state == libvirt.VIR_DOMAIN_SHUTOFF:
        return _SHUTOFF_REASONS.get(reason, (DesktopState.STOPPED, ""))
    return _STATES.get(state, (DesktopState.STOPPED, "no state"))


def status_of_event(event: int, detail: int) -> tuple[DesktopState, str] | None:
    """Map a lifecycle event to a status, or None when it changes nothing."""
    if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
        stopped = (DesktopState.STOPPED, _STOPPED_DETAIL.get(detail, ""))
        return _STOPPED_EVENTS.get(detail, stopped)
    return _EVENTS.get(event)


def desktop_status(name: str, hosts: Sequence[Host]) -> tuple[DesktopState, str] | None:
    """A desktop's status across ``hosts`` (config order), from what each last said.

    The host where it is active wins; else the first that answers and
    defines it; else, when only hosts that are down define it, CRASHED
    with the reason.  None when no host is known to define it.
    """
    up = [h.seen[name] for h in hosts if not h.error and name in h.seen]
    for state, reason in up:
        if state != libvirt.VIR_DOMAIN_SHUTOFF:
            return status_of_state(state, reason)
    if up:
        return status_of_state(*up[0])
    for host in hosts:
        if host.error and name in host.seen:
            return DesktopState.CRASHED, host.error
    return None
