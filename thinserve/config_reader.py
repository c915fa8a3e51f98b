"""Reading the config file's TOML tables: typed keys, ranges, one error type.

Every problem is a ConfigError whose message names the file, the table and
the key, and says what to write instead.  A Table hands out its keys one at
a time, each checked as it is taken; ``done`` then refuses whatever key
nobody took, so a misspelt key is an error rather than a silent default.
Tables that map onto a dataclass (the backends' settings, the broker's) are
read from the dataclass's own field types, so each key is declared once.

Values are quoted in messages only where the caller asks (numbers, choices):
a mistyped password must not end up in a log.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeGuard, TypeVar, overload


class Dataclass(Protocol):
    """Any dataclass, as a type."""

    __dataclass_fields__: ClassVar[dict[str, Any]]


D = TypeVar("D", bound=Dataclass)

# Reads one key of a table in a way its field type cannot say (e.g. a pair
# written as a list); given the table and the key, returns the value.
Reader = Callable[["Table", str], Any]


class ConfigError(Exception):
    """A configuration problem: where it is, and what to change."""


class Table:
    """One table of the config file, read key by key.

    ``source`` names the file; ``path`` is the table's dotted TOML name
    ("" for the file's top level); ``where`` is how messages name it.
    """

    def __init__(self, data: object, source: str, path: str = "", where: str = "") -> None:
        self.source = source
        self.path = path
        self.where = where or _where(source, f"[{path}]" if path else "")
        if not isinstance(data, Mapping):
            raise ConfigError(f"{self.where}: must be a table")
        self.data: Mapping[str, object] = data
        self.known: set[str] = set()

    # -- errors -----------------------------------------------------------------------------
    def error(self, key: str, advice: str, *value: object) -> ConfigError:
        """The error for ``key``, quoting the value when one is given."""
        shown = f" = {value[0]!r}" if value else ""
        return ConfigError(f"{self.where} {key}{shown}: {advice}")

    def done(self) -> None:
        """Refuse the keys nobody read: misspelt, or not in this version."""
        unknown = sorted(set(self.data) - self.known)
        if unknown:
            raise ConfigError(
                f"{self.where}: unknown key(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(self.known))}"
            )

    # -- single keys ------------------------------------------------------------------------
    def take(self, key: str) -> object | None:
        """The value as written, None when absent; the key is known from now on."""
        self.known.add(key)
        return self.data.get(key)

    def text(self, key: str, default: str | None = None) -> str:
        """A non-empty string; without a default the key must be there."""
        value = self.take(key)
        if value is None and default is not None:
            return default
        if not isinstance(value, str) or not value:
            raise self.error(key, "give a non-empty string")
        return value

    def optional_text(self, key: str) -> str | None:
        value = self.take(key)
        if value is not None and not isinstance(value, str):
            raise self.error(key, "give a string")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.take(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, "give true or false")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(key, default)
        if value not in choices:
            raise self.error(key, f"one of {', '.join(choices)}", value)
        return value

    @overload
    def number(
        self, key: str, default: float, low: float, high: float, what: str = ...
    ) -> float: ...
    @overload
    def number(
        self, key: str, default: None, low: float, high: float, what: str = ...
    ) -> float | None: ...
    def number(
        self, key: str, default: float | None, low: float, high: float, what: str = "a number"
    ) -> float | None:
        """A number from ``low`` to ``high``; whole numbers are welcome."""
        value = self.take(key)
        if value is None:
            return default
        if not is_number(value) or not low <= value <= high:
            raise self.error(key, f"{what} from {low} to {high}", value)
        return float(value)

    @overload
    def whole(self, key: str, default: int, low: int, high: int) -> int: ...
    @overload
    def whole(self, key: str, default: None, low: int, high: int) -> int | None: ...
    def whole(self, key: str, default: int | None, low: int, high: int) -> int | None:
        """A whole number from ``low`` to ``high``."""
        value = self.take(key)
        if value is None:
            return default
        if not is_whole(value) or not low <= value <= high:
            raise self.error(key, f"a whole number from {low} to {high}", value)
        return value

    def texts(
        self, key: str, default: tuple[str, ...], example: str, allow_empty: bool = True
    ) -> tuple[str, ...]:
        """A list of non-empty strings; a single string stands for a list of one."""
        value = self.take(key)
        if value is None:
            return default
        if isinstance(value, str):
            value = [value]
        if not _is_strings(value) or (not value and not allow_empty):
            raise self.error(key, f"give a list of strings, e.g. {example}")
        return tuple(value)

    # -- nested tables ----------------------------------------------------------------------
    def table(self, key: str) -> Table:
        """The sub-table ``[path.key]``; an empty one when absent."""
        value = self.take(key)
        path = f"{self.path}.{key}" if self.path else key
        if value is not None and not isinstance(value, Mapping):
            raise self.error(key, f"write it as a table, [{path}]")
        return Table(value or {}, self.source, path)

    def tables(self, key: str) -> list[Table]:
        """The array of tables ``[[key]]``, each named by its place in the file."""
        value = self.take(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
            raise self.error(key, f"write each as a [[{key}]] table")
        return [
            Table(t, self.source, key, _where(self.source, f"[[{key}]] #{i + 1}"))
            for i, t in enumerate(value)
        ]

    # -- dataclasses ------------------------------------------------------------------------
    def build(self, cls: type[D], readers: Mapping[object, Reader] | None = None) -> D:
        """``cls`` from this table: one key per field, read by the field's type.

        ``readers`` reads, by type, the fields whose type says too little
        about how they are written.  Every key must be a field, fields without
        a default must be there, and the dataclass's own checks apply (their
        message follows the table's name).
        """
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        missing = []
        for f in dataclasses.fields(cls):
            value = self.take(f.name)
            if f.name in self.data:
                values[f.name] = self._read(f.name, value, hints[f.name], readers or {})
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                missing.append(f.name)
        self.done()  # a misspelt key first: it may be the missing one
        if missing:
            raise ConfigError(f"{self.where}: missing key(s) {', '.join(missing)}; add them")
        try:
            return cls(**values)
        except (TypeError, ValueError, ConfigError) as exc:
            raise ConfigError(f"{self.where}: {exc}") from None

    def _read(self, key: str, value: object, hint: object, readers: Mapping[object, Reader]) -> Any:
        """``value`` checked against (and converted to) the type ``hint``."""
        inner = _optional_of(hint)
        if inner is not None:
            if value is None:
                return None
            hint = inner
        if hint in readers:
            return readers[hint](self, key)
        if hint is bool and not isinstance(value, bool):
            raise self.error(key, "give true or false")
        if hint is int and not is_whole(value):
            raise self.error(key, "give a whole number")
        if hint is str and not isinstance(value, str):
            raise self.error(key, "give a string")
        if hint is float:
            if not is_number(value):
                raise self.error(key, "give a number")
            return float(value)
        if hint is Path and not isinstance(value, Path):
            if not isinstance(value, str) or not value:
                raise self.error(key, 'give a path, e.g. "/var/lib/thinserve"')
            return Path(value)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin is tuple and args[:1] == (str,):
            if not _is_strings(value):
                raise self.error(key, 'give a list of strings, e.g. ["a", "b"]')
            return tuple(value)
        if origin in (Mapping, dict) and len(args) == 2:
            table = self.table(key)
            return {
                name: table._read(name, table.take(name), args[1], readers) for name in table.data
            }
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            return self.table(key).build(hint, readers)
        return value


def _optional_of(hint: object) -> object | None:
    """X for the type ``X | None``; None for any other type."""
    options: tuple[object, ...] = typing.get_args(hint)
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if union and len(options) == 2 and type(None) in options:
        return options[0] if options[1] is type(None) else options[1]
    return None


def _where(source: str, table: str) -> str:
    return " ".join(part for part in (source, table) if part)


def is_whole(value: object) -> TypeGuard[int]:
    """An int, and not a bool (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_strings(value: object) -> TypeGuard[list[str] | tuple[str, ...]]:
    """A list of non-empty strings (a tuple too, for configs made in Python)."""
    return isinstance(value, list | tuple) and all(isinstance(x, str) and x for x in value)
