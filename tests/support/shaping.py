"""A slow link for real: a traffic-shaping queue discipline (``tc``) on an interface.

``shape`` limits what leaves an interface of a network namespace to a rate,
as a DSL line or a busy WAN link would: with netem's ``rate`` where the
kernel has netem, else with a token bucket filter (tbf, in every kernel
that has traffic control).  Either queues what the rate does not let
through yet, up to ``QUEUE_SECONDS`` of it, and drops beyond: the sender's
TCP sees a real bottleneck (a full queue, then losses), not a proxy that
pauses reading.  ``unshape`` lifts the limit.
"""

from __future__ import annotations

import shutil
import subprocess

from .netns import NetNamespace

QUEUE_SECONDS = 0.2  # what the queue holds, in seconds of the rate
MTU = 1514  # bytes of the largest Ethernet frame the bucket must pass at once


def tc_problem() -> str | None:
    """Why a link cannot be shaped here, or None."""
    if shutil.which("tc") is None:
        return "tc is not on PATH; install iproute2 (make deps)"
    return None


def shape(netns: NetNamespace, device: str, bits_per_second: int) -> str:
    """Let at most ``bits_per_second`` leave ``device`` in ``netns``; the queue
    discipline that does it ("netem" or "tbf")."""
    queue_bytes = max(int(bits_per_second / 8 * QUEUE_SECONDS), 4 * MTU)
    netem = ["netem", "rate", f"{bits_per_second}bit", "limit", str(queue_bytes // MTU)]
    if _tc(netns, ["qdisc", "replace", "dev", device, "root", *netem]) is None:
        return "netem"
    burst = max(bits_per_second // 8 // 250, 2 * MTU)  # a timer tick's worth at least
    tbf = ["tbf", "rate", f"{bits_per_second}bit", "burst", str(burst), "limit", str(queue_bytes)]
    error = _tc(netns, ["qdisc", "replace", "dev", device, "root", *tbf])
    if error is not None:
        raise RuntimeError(f"cannot shape {device} in {netns.name} with netem nor tbf: {error}")
    return "tbf"


def unshape(netns: NetNamespace, device: str) -> None:
    """Lift the limit: ``device`` sends as fast as it can again."""
    error = _tc(netns, ["qdisc", "del", "dev", device, "root"])
    if error is not None:
        raise RuntimeError(f"cannot lift the limit on {device} in {netns.name}: {error}")


def _tc(netns: NetNamespace, args: list[str]) -> str | None:
    """Run ``tc`` in ``netns``; its error output if it failed, else None."""
    command = netns.command(["tc", *args])
    result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    return None if result.returncode == 0 else result.stderr.strip() or f"exit {result.returncode}"
