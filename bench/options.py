"""What one benchmark run measures: frame size, repetitions, contents, peer."""

from __future__ import annotations

from dataclasses import dataclass

FULL_SIZE = (1920, 1080)
FULL_REPETITIONS = 7
QUICK_SIZE = (1280, 720)
QUICK_REPETITIONS = 3


@dataclass(frozen=True)
class Options:
    width: int
    height: int
    repetitions: int  # each speed is the median of this many runs
    contents: tuple[str, ...]
    xvnc: bool  # measure TigerVNC's Xvnc too

    @classmethod
    def of(
        cls, quick: bool, contents: tuple[str, ...], xvnc: bool, repeat: int | None = None
    ) -> Options:
        width, height = QUICK_SIZE if quick else FULL_SIZE
        repetitions = repeat or (QUICK_REPETITIONS if quick else FULL_REPETITIONS)
        return cls(width, height, max(1, repetitions), contents, xvnc)


RELAY_SIZES = ((1280, 1024), (1920, 1080))
RELAY_WORKLOADS = ("typing", "scrolling", "dragging", "clock", "video")
PATHS = ("direct", "relay", "thinserve")


@dataclass(frozen=True)
class RelayOptions:
    """What ``python -m bench relay`` measures and for how long."""

    sizes: tuple[tuple[int, int], ...]
    workloads: tuple[str, ...]
    profiles: tuple[str, ...]  # keys of bench.terminal.PROFILES
    seconds: float  # length of each workload replay
    scale_counts: tuple[int, ...]  # terminals per step of the scale test; () skips it
    scale_seconds: float
    scale_size: tuple[int, int]
    idle_seconds: float
    footprint: bool  # memory and idle CPU
    qemu: bool = True  # the QEMU peer (typed characters echoed by a tiny Linux VM)

    @classmethod
    def of(cls, quick: bool, workloads: tuple[str, ...] | None = None) -> RelayOptions:
        if quick:
            return cls(
                sizes=(RELAY_SIZES[0],),
                workloads=workloads or RELAY_WORKLOADS,
                profiles=("tight",),
                seconds=3.0,
                scale_counts=(50,),
                scale_seconds=6.0,
                scale_size=RELAY_SIZES[0],
                idle_seconds=30.0,
                footprint=True,
                qemu=False,
            )
        return cls(
            sizes=RELAY_SIZES,
            workloads=workloads or RELAY_WORKLOADS,
            profiles=("tight", "zrle"),
            seconds=5.0,
            scale_counts=(10, 25, 50, 65, 80),
            scale_seconds=12.0,
            scale_size=RELAY_SIZES[0],
            idle_seconds=30.0,
            footprint=True,
        )


@dataclass(frozen=True)
class TLSOptions:
    """What ``python -m bench tls`` measures: None next to X509None through thinserve."""

    sizes: tuple[tuple[int, int], ...]
    connections: int  # timed fresh connections per path
    warmup: int  # untimed connections per path first
    workloads: tuple[str, ...]  # replayed as in the relay suite
    rounds: int  # replays of each workload per path, alternating
    seconds: float  # length of each replay

    @classmethod
    def of(cls, quick: bool) -> TLSOptions:
        if quick:
            return cls((RELAY_SIZES[0],), 60, 3, ("typing", "video"), 3, 3.0)
        return cls(RELAY_SIZES, 200, 5, ("typing", "video"), 4, 5.0)


@dataclass(frozen=True)
class FloodOptions:
    """What ``python -m bench flood`` does: a flood of fake terminals from many
    addresses while one paired terminal watches a desktop being typed into."""

    addresses: int  # fake terminals, one per address
    size: tuple[int, int]  # the desktop's screen
    phase_seconds: float  # length of the before and after phases
    hold_seconds: float  # the flood held this long once settled (during phase)
    during_max: float  # the during phase ends after this at the latest
    crowd: int  # extra fake terminals from one address (max_per_address + 2)
    max_per_address: int

    @classmethod
    def of(cls, quick: bool, addresses: int | None = None) -> FloodOptions:
        if quick:
            return cls(addresses or 500, RELAY_SIZES[0], 6.0, 5.0, 60.0, 6, 4)
        return cls(addresses or 2000, RELAY_SIZES[0], 15.0, 10.0, 120.0, 6, 4)

    @property
    def max_unpaired(self) -> int:
        """Three quarters of the flood may wait to be paired."""
        return max(1, self.addresses * 3 // 4)

    @property
    def max_connections(self) -> int:
        """Nine tenths of the flood, the crowd's first connections and the
        paired terminal may be connected; the rest are refused."""
        return max(2, self.addresses * 9 // 10 + self.max_per_address + 1)


@dataclass(frozen=True)
class SoakOptions:
    """What ``python -m bench soak`` does, and for how long."""

    minutes: float
    interval: float  # seconds between table rows
    terminals: int  # paired terminals, each with its own desktop
    size: tuple[int, int]  # the desktops' screens
    keys: tuple[int, int]  # keys typed per connection: at least, at most
    key_gap: float  # seconds between one echo and the next key
    pause: tuple[float, float]  # seconds between connections: at least, at most
    churn: int  # fake terminals reconnecting at a time
    max_unpaired: int  # thinserve's cap, under the churn: some are turned away

    @classmethod
    def of(cls, quick: bool, minutes: float | None = None) -> SoakOptions:
        if quick:
            return cls(minutes or 1.0, 5.0, 24, (640, 480), (10, 30), 0.15, (0.5, 2.0), 40, 32)
        return cls(minutes or 30.0, 30.0, 24, (640, 480), (10, 30), 0.15, (0.5, 2.0), 80, 64)


FULLSCREEN_CONTENTS = ("probe", "text-heavy", "windows", "photo")


@dataclass(frozen=True)
class FullscreenOptions:
    """What ``python -m bench fullscreen`` measures: full-screen updates, Xvnc and thinserve."""

    size: tuple[int, int]
    contents: tuple[str, ...]  # keys of bench.fullscreen.CONTENTS
    profiles: tuple[str, ...]  # keys of bench.terminal.PROFILES
    rounds: int  # timed visits per path, content and profile, the paths alternating
    warmup: int  # untimed visits per path first

    @classmethod
    def of(cls, quick: bool, rounds: int | None = None) -> FullscreenOptions:
        default = 3 if quick else 9
        return cls((1920, 1080), FULLSCREEN_CONTENTS, ("tight", "zrle"), rounds or default, 1)


@dataclass(frozen=True)
class FanoutOptions:
    """What ``python -m bench fanout`` measures: many terminals on one desktop, then
    many terminals on many desktops."""

    size: tuple[int, int]
    terminals: int  # watching the one desktop, on each path
    seconds: float  # length of each replay
    rate: float  # steps a second on the one desktop (a clock tick each second, keys between)
    rounds: int  # replays per path, the paths alternating
    crowd_terminals: int  # the second table: terminals in all, through thinserve
    crowd_desktops: int  # ... watching this many desktops, as many on each
    crowd_rate: float  # steps a second on each of those desktops

    @classmethod
    def of(
        cls, quick: bool, terminals: int | None = None, rounds: int | None = None
    ) -> FanoutOptions:
        if quick:
            return cls((1920, 1080), terminals or 20, 6.0, 10.0, rounds or 1, 50, 5, 5.0)
        return cls((1920, 1080), terminals or 50, 15.0, 10.0, rounds or 3, 200, 20, 5.0)


@dataclass(frozen=True)
class ClusterOptions:
    """What ``python -m bench cluster`` measures: crowds of terminals through one node
    on a remote PostgreSQL next to the same node on SQLite."""

    size: tuple[int, int]
    crowds: tuple[int, ...]  # terminals in all, one crowd size after another
    desktops: int  # the terminals watch this many desktops, as many on each
    seconds: float  # length of each replay
    rate: float  # steps a second on each desktop
    rounds: int  # replays per crowd size and database
    relay_size: tuple[int, int]  # the node relay's one desktop (bench/clusterrelay.py)
    relay_terminals: int  # watching it at each node
    relay_seconds: float
    relay_rate: float
    relay_rounds: int
    recovery_rounds: int  # node kills per case and timings (bench/clusterrecovery.py)

    @classmethod
    def of(cls, quick: bool, rounds: int | None = None) -> ClusterOptions:
        if quick:
            return cls(
                (1280, 1024), (50,), 5, 6.0, 5.0, rounds or 1, (1280, 1024), 3, 6.0, 10.0, 1, 1
            )
        return cls(
            (1920, 1080), (100, 200, 300), 20, 15.0, 5.0, rounds or 2, (1920, 1080), 10, 15.0,
            10.0, rounds or 3, 5,
        )  # fmt: skip
