"""Which policies a site runs, and their limits."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from types import MappingProxyType

from ..config_reader import ConfigError, Table, is_number, is_whole
from .ratelimit import RateLimit

UNKNOWN_TERMINAL_CHOICES = ("pairing", "login", "pool")

CODE_FAILURES_PER_ACTOR = RateLimit(10, 600.0)
CODE_FAILURES_TOTAL = RateLimit(30, 600.0)
LOGIN_FAILURES_PER_TERMINAL = RateLimit(5, 60.0)
LOGIN_FAILURES_PER_USER = RateLimit(10, 900.0)


# The broker's settings contradict themselves: the config file's one error type.
BrokerConfigError = ConfigError


@dataclass(frozen=True)
class BrokerConfig:
    """The broker's policies.  Explicit pairings made by an administrator are
    always honoured; everything else is switched here.

    unknown_terminal: what a terminal with no pairing (and nobody logged in)
      sees: "pairing" (its id and a pairing code), "login" (the hot-desk
      login screen) or "pool" (the first free desktop of ``default_pool``).
    pools: pool name -> desktop names, in the order they are handed out.
    hot_desk: users may log in at any terminal and their desktop follows them.
    user_pool: the pool that lends a desktop to a logged-in user who has no
      desktop of their own (None: such users cannot log in).
    """

    unknown_terminal: str = "pairing"
    pairing_codes: bool = True
    code_lifetime: float = 600.0
    code_length: int = 6
    code_tries: int = 3  # wrong tries aimed at one terminal before its code is replaced
    code_failures_per_actor: RateLimit = CODE_FAILURES_PER_ACTOR
    code_failures_total: RateLimit = CODE_FAILURES_TOTAL
    pools: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default_pool: str | None = None
    hot_desk: bool = False
    user_pool: str | None = None
    login_failures_per_terminal: RateLimit = LOGIN_FAILURES_PER_TERMINAL
    login_failures_per_user: RateLimit = LOGIN_FAILURES_PER_USER
    forget_unpaired_after: float = 7 * 86400.0  # never-paired terminals not seen for this long

    def __post_init__(self) -> None:
        pools = MappingProxyType({str(k): tuple(v) for k, v in self.pools.items()})
        object.__setattr__(self, "pools", pools)
        self._check_choice()
        self._check_pools()
        if not 60.0 <= self.code_lifetime <= 86400.0:
            raise BrokerConfigError("code_lifetime: between 60 and 86400 seconds")
        if not 5 <= self.code_length <= 12:
            raise BrokerConfigError("code_length: between 5 and 12 characters")
        if self.code_tries < 1:
            raise BrokerConfigError("code_tries: at least 1")
        if not 60.0 <= self.forget_unpaired_after <= 10 * 365 * 86400.0:
            raise BrokerConfigError("forget_unpaired_after: between 60 s and ten years, in seconds")

    def _check_choice(self) -> None:
        if self.unknown_terminal not in UNKNOWN_TERMINAL_CHOICES:
            raise BrokerConfigError(
                f"unknown_terminal {self.unknown_terminal!r}: use one of "
                + ", ".join(UNKNOWN_TERMINAL_CHOICES)
            )
        if self.unknown_terminal == "pairing" and not self.pairing_codes:
            raise BrokerConfigError('unknown_terminal = "pairing" needs pairing_codes on')
        if self.unknown_terminal == "login" and not self.hot_desk:
            raise BrokerConfigError('unknown_terminal = "login" needs hot_desk on')
        if self.unknown_terminal == "pool" and self.default_pool is None:
            raise BrokerConfigError('unknown_terminal = "pool" needs default_pool')

    def _check_pools(self) -> None:
        seen: dict[str, str] = {}
        for pool, desktops in self.pools.items():
            if not desktops:
                raise BrokerConfigError(f"pool {pool!r} has no desktops")
            for desktop in desktops:
                if desktop in seen:
                    raise BrokerConfigError(
                        f"desktop {desktop!r} is in pools {seen[desktop]!r} and {pool!r}"
                    )
                seen[desktop] = pool
        for name, chosen in (("default_pool", self.default_pool), ("user_pool", self.user_pool)):
            if chosen is not None and chosen not in self.pools:
                raise BrokerConfigError(f"{name} {chosen!r} is not one of the pools")

    def pool_of(self, desktop: str) -> str | None:
        """The pool ``desktop`` belongs to, or None."""
        for pool, desktops in self.pools.items():
            if desktop in desktops:
                return pool
        return None


def from_mapping(data: Mapping[str, object], source: str = "") -> BrokerConfig:
    """A BrokerConfig from the parsed ``[broker]`` table of ``source`` (docs/broker.md)."""
    return from_table(Table(data, source, "broker"))


def from_table(table: Table) -> BrokerConfig:
    """A BrokerConfig from its table.

    Rate limits are written ``[failures, window_seconds]``; pools as a table
    of name = [desktop names].
    """
    return table.build(BrokerConfig, {RateLimit: _rate_limit})


def _rate_limit(table: Table, key: str) -> RateLimit:
    value = table.take(key)
    if isinstance(value, list) and len(value) == 2:
        failures, window = value
        if is_whole(failures) and is_number(window):
            with suppress(ValueError):  # RateLimit's own check: at least 1 failure, a window
                return RateLimit(failures, float(window))
    raise table.error(key, "write [failures, window_seconds], e.g. [5, 60]")
