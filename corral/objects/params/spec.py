"""Parameter schemas: one :class:`ParamSpec` per key, grouped in a :class:`Schema`.

Parameters are checked in two phases (Ganeti's ``CheckParameterSyntax`` /
``ValidateParameters``):

* syntax, on the master, by :meth:`Schema.check_syntax`: unknown keys, types, ranges,
  allowed values — pure, no I/O;
* environment, on the node, by the driver that uses them (files exist, the binary supports it).

Values are kept as plain JSON-able dicts (what the store and the RAPI carry); a schema turns raw
input (strings from the CLI, JSON from the API) into typed values and reports *all* problems
together in one :class:`~corral.common.errors.ParamError` whose ``problems`` name each key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from corral.common.errors import ParamError
from corral.objects.units import format_size, parse_size_mib

#: A coercer turns raw input into the typed value or raises ValueError(reason).
Coercer = Callable[[Any], Any]
#: A check returns None when the (coerced) value is fine, else the reason it is not.
Check = Callable[[Any], str | None]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ParamSpec:
    """One parameter: its name, how to read it, its default and its documentation."""

    name: str
    coerce: Coercer
    default: Any
    doc: str
    check: Check | None = None
    type_name: str = ""

    def parse(self, raw: Any) -> Any:
        """Return the typed value of ``raw``.

        Raises:
            ValueError: with the reason the value is not acceptable.
        """
        value = self.coerce(raw)
        if self.check is not None and value is not None:
            reason = self.check(value)
            if reason:
                raise ValueError(reason)
        return value


@dataclasses.dataclass(frozen=True, slots=True)
class Schema:
    """A named set of parameters (e.g. ``hvparams/kvm``, ``beparams``)."""

    name: str
    specs: Mapping[str, ParamSpec]

    @classmethod
    def of(cls, name: str, specs: Iterable[ParamSpec]) -> Schema:
        """Build a schema from specs (their names must be unique)."""
        table: dict[str, ParamSpec] = {}
        for spec in specs:
            if spec.name in table:
                raise ValueError(f"duplicate parameter {spec.name!r} in schema {name}")
            table[spec.name] = spec
        return cls(name, table)

    def defaults(self) -> dict[str, Any]:
        """The default value of every key."""
        return {k: s.default for k, s in self.specs.items()}

    def check_syntax(self, raw: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check and coerce a (partial) set of values.

        Args:
            raw: key -> raw value (strings from the CLI, JSON values from the API). The value
                ``None`` or the string ``"default"`` resets a key to its default; it is kept as
                ``None`` so the caller can drop the override.

        Returns:
            key -> typed value, for the keys given.

        Raises:
            ParamError: unknown keys or bad values; every problem is listed, by key.
        """
        problems: dict[str, str] = {}
        out: dict[str, Any] = {}
        for key, value in (raw or {}).items():
            spec = self.specs.get(key)
            if spec is None:
                problems[key] = f"unknown parameter (known: {', '.join(sorted(self.specs))})"
                continue
            if value is None or value == "default":
                out[key] = None
                continue
            try:
                out[key] = spec.parse(value)
            except (ValueError, TypeError) as exc:
                problems[key] = str(exc)
        if problems:
            raise ParamError(problems, context=self.name)
        return out

    def fill(self, *layers: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults, overridden by each layer in turn (cluster, group, instance).

        ``None`` values in a layer mean "not set here" and do not override.
        """
        result = self.defaults()
        for layer in layers:
            for key, value in (layer or {}).items():
                if key in self.specs and value is not None:
                    result[key] = value
        return result

    def doc_table(self) -> str:
        """A Markdown table documenting every key (used to generate docs/)."""
        rows = ["| key | type | default | description |", "|---|---|---|---|"]
        for spec in self.specs.values():
            rows.append(f"| `{spec.name}` | {spec.type_name} | `{spec.default!r}` | {spec.doc} |")
        return "\n".join(rows)


# --- coercers -------------------------------------------------------------------------------


def as_str(raw: Any) -> str:
    """A string (numbers are accepted and converted)."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValueError(f"expected a string, got {type(raw).__name__}")
    return str(raw)


def as_int(raw: Any) -> int:
    """An integer, from an int or a decimal string."""
    if isinstance(raw, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        return int(raw.strip())
    raise ValueError(f"expected an integer, got {raw!r}")


def as_float(raw: Any) -> float:
    """A number."""
    if isinstance(raw, bool):
        raise ValueError("expected a number, got a boolean")
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {raw!r}") from None


_TRUE = {"true", "yes", "on", "1", "y"}
_FALSE = {"false", "no", "off", "0", "n"}


def as_bool(raw: Any) -> bool:
    """A boolean, from a bool or one of true/false, yes/no, on/off, 1/0."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str):
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise ValueError(f"expected a boolean (true/false), got {raw!r}")


def as_size_mib(raw: Any) -> int:
    """A size in MiB, from an integer (MiB) or a string with a unit (``512M``, ``1G``)."""
    return parse_size_mib(raw)


def as_choice(*choices: str) -> Coercer:
    """A coercer accepting exactly one of ``choices``."""

    def coerce(raw: Any) -> str:
        value = as_str(raw)
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    return coerce


def as_path(raw: Any) -> str:
    """An absolute path, or the empty string for "none"."""
    value = as_str(raw)
    if value and not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    if "\0" in value or "\n" in value:
        raise ValueError("must not contain NUL or newline characters")
    return value


def in_range(low: float, high: float) -> Check:
    """A check that a number lies in ``[low, high]``."""

    def check(value: Any) -> str | None:
        if value < low or value > high:
            return f"must be between {low:g} and {high:g}, got {value}"
        return None

    return check


def size_range(low_mib: int, high_mib: int) -> Check:
    """A check that a size in MiB lies in ``[low_mib, high_mib]`` (message with units)."""

    def check(value: Any) -> str | None:
        if value < low_mib or value > high_mib:
            return (
                f"must be between {format_size(low_mib)} and {format_size(high_mib)}, "
                f"got {format_size(value)}"
            )
        return None

    return check


# --- spec builders shared by the hypervisor schemas -------------------------------------------


def choice_param(name: str, choices: tuple[str, ...], default: str, doc: str) -> ParamSpec:
    """A parameter taking one of ``choices``; the doc lists them (an empty one quoted)."""
    return ParamSpec(
        name=name,
        coerce=as_choice(*choices),
        default=default,
        type_name="choice",
        doc=f"{doc} One of: {', '.join(c if c else repr(c) for c in choices)}.",
    )


def flag_param(name: str, default: bool, doc: str) -> ParamSpec:
    """A boolean parameter."""
    return ParamSpec(name=name, coerce=as_bool, default=default, type_name="bool", doc=doc)


def ip_or_empty(value: Any) -> str | None:
    """Check: an IPv4/IPv6 address or empty (None when fine, else the problem)."""
    if not value:
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"must be an IP address (IPv4 or IPv6) or empty, got {value!r}"
    return None
