"""Ganeti's query filter language, parsed and evaluated on the client.

``gnt-instance list -F 'status == "running" and be/vcpus >= 2'`` selects rows with a filter
expression (``-F``/``--filter``; a single argument that looks like a filter is taken as one
even without ``-F``, and names with ``*``/``?`` are globs, as in Ganeti's ``qlang``). The
master's query API only selects by name, so the command fetches the rows with the fields the
filter needs and keeps the matching ones itself.

Syntax (Ganeti's, plus ``true``/``false`` literals and quoted regular expressions):

* conditions: ``FIELD == VALUE``, ``!=``, ``<``, ``<=``, ``>``, ``>=``; ``FIELD =~ m/RE/i``
  (also ``/RE/``, ``m#RE#``, ``"RE"``; flags ``i`` and ``s``), ``FIELD !~ ...``;
  ``FIELD =* "GLOB"``, ``FIELD !* "GLOB"``; ``VALUE in FIELD``, ``VALUE not in FIELD`` (list
  fields such as ``tags``); a bare ``FIELD`` is true when the field's value is true;
* values: ``"text"`` or ``'text'`` (backslash escapes), integers, decimals, ``true``,
  ``false``;
* ``not``, ``and``, ``or`` (in that order of precedence) and parentheses.

Filters are built as Ganeti's list form (``["&", ["=", "status", "running"], ...]``). A value
that is not available (``-`` in the table) matches no comparison. Everything here is pure;
malformed filters raise :class:`~corral.cli.parsing.UsageError` naming the problem and where.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from corral.cli.parsing import UsageError

OP_OR = "|"
OP_AND = "&"
OP_NOT = "!"
OP_TRUE = "?"
OP_EQUAL = "="
OP_NOT_EQUAL = "!="
OP_LT = "<"
OP_LE = "<="
OP_GT = ">"
OP_GE = ">="
OP_REGEXP = "=~"
OP_CONTAINS = "=[]"

#: Characters that make a lone argument a filter rather than a name (Ganeti's).
FILTER_DETECTION_CHARS = frozenset("()=/!~'\"\\<> \t\n")
#: Characters that make a name argument a glob pattern.
GLOB_DETECTION_CHARS = frozenset("*?")

_COMPARISONS = {
    "==": OP_EQUAL,
    "!=": OP_NOT_EQUAL,
    "<=": OP_LE,
    ">=": OP_GE,
    "<": OP_LT,
    ">": OP_GT,
}
_FIELD_RE = re.compile(r"[A-Za-z][A-Za-z0-9_/.]*")
_NUMBER_RE = re.compile(r"[-+]?\d+(\.\d+)?(?![A-Za-z0-9_])")
_KEYWORDS = frozenset({"and", "or", "not", "in"})
_REGEXP_DELIMS = "/#^|"
_REGEXP_FLAGS = frozenset("is")


def glob_regexp(pattern: str) -> str:
    """A glob (``web*``, ``db?``) as an anchored regular expression.

    As Ganeti's ``DnsNameGlobPattern``, the pattern may match a host name without its
    domain: ``node1`` matches ``node1.example.com``.
    """
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return f"^{body}(\\..*)?\\Z"


class _Parser:
    """Recursive descent over the filter text (no separate tokenizer: regexps need context)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    # --- low level ---------------------------------------------------------------------------
    def fail(self, what: str) -> UsageError:
        at = self.pos
        rest = self.text[at:]
        where = f"at position {at + 1} ({rest[:20]!r})" if rest else "at the end"
        return UsageError(f"query filter {self.text!r}: {what} {where}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def at_end(self) -> bool:
        self.skip_space()
        return self.pos >= len(self.text)

    def peek_word(self) -> str | None:
        self.skip_space()
        m = _FIELD_RE.match(self.text, self.pos)
        return m.group(0) if m else None

    def keyword(self, word: str) -> bool:
        """Consume ``word`` if it comes next as a whole word."""
        if self.peek_word() == word:
            self.pos += len(word)
            return True
        return False

    def literal(self, token: str) -> bool:
        self.skip_space()
        if self.text.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    # --- grammar -----------------------------------------------------------------------------
    def parse(self) -> list[Any]:
        if self.at_end():
            raise UsageError("query filter is empty")
        result = self.or_expr()
        if not self.at_end():
            raise self.fail("unexpected text (expected 'and', 'or' or the end)")
        return result

    def or_expr(self) -> list[Any]:
        parts = [self.and_expr()]
        while self.keyword("or"):
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else [OP_OR, *parts]

    def and_expr(self) -> list[Any]:
        parts = [self.not_expr()]
        while self.keyword("and"):
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else [OP_AND, *parts]

    def not_expr(self) -> list[Any]:
        if self.keyword("not"):
            return [OP_NOT, self.not_expr()]
        if self.literal("("):
            inner = self.or_expr()
            if not self.literal(")"):
                raise self.fail("missing ')'")
            return inner
        return self.condition()

    def condition(self) -> list[Any]:
        self.skip_space()
        word = self.peek_word()
        if word is None or word in ("true", "false"):
            # VALUE [not] in FIELD
            start = self.pos
            value = self.value()
            negate = self.keyword("not")
            if not self.keyword("in"):
                self.pos = start
                raise self.fail("expected a field name or VALUE in FIELD")
            cond = [OP_CONTAINS, self.field(), value]
            return [OP_NOT, cond] if negate else cond
        if word in _KEYWORDS:
            raise self.fail(f"expected a field name, not '{word}'")
        field = self.field()
        self.skip_space()
        for token, negate in (("=~", False), ("!~", True)):
            if self.literal(token):
                cond = [OP_REGEXP, field, self.regexp()]
                return [OP_NOT, cond] if negate else cond
        for token, negate in (("=*", False), ("!*", True)):
            if self.literal(token):
                pattern = self.value()
                if not isinstance(pattern, str):
                    raise self.fail(f"{token} needs a quoted glob pattern")
                cond = [OP_REGEXP, field, glob_regexp(pattern)]
                return [OP_NOT, cond] if negate else cond
        for token, op in _COMPARISONS.items():
            if self.literal(token):
                return [op, field, self.value()]
        if self.text.startswith("=", self.pos) and not self.text.startswith("==", self.pos):
            raise self.fail("unknown operator '=' (use '==')")
        return [OP_TRUE, field]

    def field(self) -> str:
        self.skip_space()
        m = _FIELD_RE.match(self.text, self.pos)
        if not m or m.group(0) in _KEYWORDS:
            raise self.fail("expected a field name")
        self.pos = m.end()
        return m.group(0)

    def value(self) -> Any:
        self.skip_space()
        if self.pos >= len(self.text):
            raise self.fail("expected a value")
        quote = self.text[self.pos]
        if quote in "\"'":
            return self.quoted(quote)
        m = _NUMBER_RE.match(self.text, self.pos)
        if m:
            self.pos = m.end()
            return float(m.group(0)) if m.group(1) else int(m.group(0))
        for word, val in (("true", True), ("false", False)):
            if self.keyword(word):
                return val
        raise self.fail("expected a value (a quoted string, a number, true or false)")

    def quoted(self, quote: str) -> str:
        out: list[str] = []
        i = self.pos + 1
        while i < len(self.text):
            ch = self.text[i]
            if ch == "\\" and i + 1 < len(self.text):
                out.append(self.text[i + 1])
                i += 2
                continue
            if ch == quote:
                self.pos = i + 1
                return "".join(out)
            out.append(ch)
            i += 1
        raise self.fail(f"unterminated string (missing {quote})")

    def regexp(self) -> str:
        self.skip_space()
        if self.pos < len(self.text) and self.text[self.pos] in "\"'":
            pattern, flags = self.quoted(self.text[self.pos]), ""
        else:
            if self.text.startswith("m", self.pos):
                self.pos += 1
            if self.pos >= len(self.text) or self.text[self.pos] not in _REGEXP_DELIMS:
                raise self.fail("expected a regular expression such as m/^web/ or /db[0-9]/i")
            delim = self.text[self.pos]
            end = self.pos + 1
            while end < len(self.text) and self.text[end] != delim:
                end += 2 if self.text[end] == "\\" else 1
            if end >= len(self.text):
                raise self.fail(f"unterminated regular expression (missing closing {delim})")
            pattern = self.text[self.pos + 1 : end].replace("\\" + delim, delim)
            self.pos = end + 1
            m = re.compile(r"[A-Za-z]*").match(self.text, self.pos)
            flags = m.group(0) if m else ""
            unknown = sorted(set(flags) - _REGEXP_FLAGS)
            if unknown:
                raise self.fail(f"unknown regular expression flag(s) {''.join(unknown)!r}")
            self.pos += len(flags)
        full = (f"(?{''.join(sorted(set(flags)))})" if flags else "") + pattern
        try:
            re.compile(full)
        except re.error as exc:
            raise self.fail(f"invalid regular expression {pattern!r} ({exc})") from None
        return full


def parse_filter(text: str) -> list[Any]:
    """Parse a filter expression into Ganeti's list form.

    Raises:
        UsageError: the text is not a filter; the message says what was expected where.
    """
    return _Parser(text).parse()


def make_filter(
    args: Sequence[str], *, force_filter: bool, namefield: str = "name"
) -> tuple[list[str], list[Any] | None]:
    """Split list arguments into names for the server and a filter to apply here.

    As Ganeti's ``qlang.MakeFilter``: with ``force_filter`` (``-F``), or a single argument
    containing filter characters (spaces, quotes, ``=``, ...), the argument is a filter; names
    with ``*`` or ``?`` are globs; otherwise the names go to the server, which fails for an
    unknown one.

    Returns:
        ``(names, None)`` or ``([], filter)``.

    Raises:
        UsageError: ``-F`` without exactly one argument, or a filter that does not parse.
    """
    if force_filter or (len(args) == 1 and set(args[0]) & FILTER_DETECTION_CHARS):
        if len(args) != 1:
            raise UsageError(
                f"-F/--filter: give exactly one filter argument (got {len(args)}), quoted, "
                """e.g. 'status == "running"'"""
            )
        return [], parse_filter(args[0])
    if any(set(a) & GLOB_DETECTION_CHARS for a in args):
        parts: list[Any] = [
            [OP_REGEXP, namefield, glob_regexp(a)]
            if set(a) & GLOB_DETECTION_CHARS
            else [OP_EQUAL, namefield, a]
            for a in args
        ]
        return [], [OP_OR, *parts]
    return list(args), None


def filter_fields(qfilter: Any) -> list[str]:
    """The field names a filter reads, in order of first use."""
    out: list[str] = []

    def walk(node: Any) -> None:
        op = node[0]
        if op in (OP_AND, OP_OR):
            for sub in node[1:]:
                walk(sub)
        elif op == OP_NOT:
            walk(node[1])
        elif node[1] not in out:
            out.append(node[1])

    if qfilter is not None:
        walk(qfilter)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, bool) or isinstance(value, bool):
        return isinstance(value, bool) and value is wanted
    if _is_number(value) and _is_number(wanted):
        return bool(value == wanted)
    if _is_number(wanted) and isinstance(value, str):
        try:
            return float(value) == float(wanted)
        except ValueError:
            return False
    return str(value) == str(wanted)


def _order(value: Any, wanted: Any) -> tuple[Any, Any] | None:
    """Comparable forms of both sides, or None when they cannot be ordered."""
    if isinstance(value, bool) or isinstance(wanted, bool):
        return None
    if _is_number(wanted):
        try:
            return float(value), float(wanted)
        except (TypeError, ValueError):
            return None
    if isinstance(value, str) and isinstance(wanted, str):
        return value, wanted
    return None


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def evaluate(qfilter: Any, row: Mapping[str, Any]) -> bool:
    """Whether ``row`` (field name -> value, None when unavailable) matches ``qfilter``."""
    op = qfilter[0]
    if op == OP_AND:
        return all(evaluate(sub, row) for sub in qfilter[1:])
    if op == OP_OR:
        return any(evaluate(sub, row) for sub in qfilter[1:])
    if op == OP_NOT:
        return not evaluate(qfilter[1], row)
    value = row.get(qfilter[1])
    if op == OP_TRUE:
        return bool(value)
    if value is None:
        return False
    wanted = qfilter[2]
    if op == OP_EQUAL:
        return _equal(value, wanted)
    if op == OP_NOT_EQUAL:
        return not _equal(value, wanted)
    if op == OP_REGEXP:
        return re.search(wanted, _text(value)) is not None
    if op == OP_CONTAINS:
        items = value if isinstance(value, list) else [value]
        return any(_equal(item, wanted) for item in items)
    pair = _order(value, wanted)
    if pair is None:
        return False
    left, right = pair
    if op == OP_LT:
        return bool(left < right)
    if op == OP_LE:
        return bool(left <= right)
    if op == OP_GT:
        return bool(left > right)
    if op == OP_GE:
        return bool(left >= right)
    raise ValueError(f"unknown filter operator {op!r}")
