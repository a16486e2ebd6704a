"""The query language of the index: a small AST, and its two front ends.

- `parse_lucene` reads the search box syntax of /api/search (Lucene, parsed by luqum):
  ``PatientName:DOE* AND StudyDate:[20200101 TO 20201231] AND NOT Modality:SR``.
- `qido_to_query` reads QIDO-RS query parameters and C-FIND identifiers (PS3.4 C.2.2.2,
  PS3.18 8.3.4): ``PatientName=DOE*``, ``StudyDate=20200101-``, ``StudyInstanceUID=1.2,1.3``.

Field names are DICOM keywords, checked against the data dictionary. Values in the AST are
already normalised the way `dicomflow.indexer.values` normalises stored fields (ISO dates and
times, numbers, upper-case person names), so that a back end only compares. Person names are
matched case-insensitively everywhere; other values exactly. A single date or time, or a
partial one (``StudyDate:2020``), becomes the `Range` it covers.

Wildcard patterns use ``*`` (any run) and ``?`` (any one character); in a `Wildcard` pattern a
backslash escapes the next character (``\\*`` is a literal asterisk).
"""

import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from luqum import tree
from luqum.exceptions import ParseError
from luqum.parser import parser as _luqum_parser

from dicomflow.indexer.exceptions import InvalidQuery
from dicomflow.indexer.levels import COMPUTED_KEYWORDS, Level
from dicomflow.indexer.values import (
    TEMPORAL_KINDS,
    ValueKind,
    kind_of_keyword,
    normalise_name,
    parse_date,
    parse_datetime,
    parse_float,
    parse_int,
    parse_partial_date,
    parse_time,
    resolve_keyword,
    vr_of_keyword,
)
from dicomflow.kernel.uids import is_valid_uid

Scalar: TypeAlias = str | int | float

MAX_QUERY_LENGTH = 4096
MAX_DEPTH = 32
MAX_TERMS = 256
MAX_LIST_VALUES = 1000


# --- the AST ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Match:
    """`field` has exactly `value` (one of its values, for a multi-valued attribute)."""

    field: str
    value: Scalar


@dataclass(frozen=True, slots=True)
class Wildcard:
    """`field` has a text value matching `pattern` (``*``, ``?``, backslash escapes)."""

    field: str
    pattern: str


@dataclass(frozen=True, slots=True)
class Range:
    """`field` has a value between `low` and `high`; a None bound is open."""

    field: str
    low: Scalar | None
    high: Scalar | None
    include_low: bool = True
    include_high: bool = True


@dataclass(frozen=True, slots=True)
class AnyOf:
    """`field` has one of `values` (UID lists, multiple value matching)."""

    field: str
    values: tuple[Scalar, ...]


@dataclass(frozen=True, slots=True)
class Text:
    """Free text: the words of `text`, in this order, in any text attribute.

    With `prefix`, the last word may be the start of a longer word (``DOE*``).
    """

    text: str
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class And:
    items: tuple["Query", ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple["Query", ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: "Query"


Query: TypeAlias = Match | Wildcard | Range | AnyOf | Text | And | Or | Not
FieldQuery: TypeAlias = Match | Wildcard | Range | AnyOf

MATCH_ALL: Query = And(())
"""The query that matches everything (universal matching)."""


def fields_of(query: Query) -> Iterator[str]:
    """The keywords a query matches on, in order of appearance (with repeats)."""
    if isinstance(query, And | Or):
        for item in query.items:
            yield from fields_of(item)
    elif isinstance(query, Not):
        yield from fields_of(query.item)
    elif not isinstance(query, Text):
        yield query.field


def conjunction(items: Iterable[Query]) -> Query:
    """`And` of `items`, flattened; one item stays itself."""
    flat: list[Query] = []
    for item in items:
        flat.extend(item.items if isinstance(item, And) else (item,))
    return flat[0] if len(flat) == 1 else And(tuple(flat))


def disjunction(items: Iterable[Query]) -> Query:
    """`Or` of `items`, flattened; one item stays itself."""
    flat: list[Query] = []
    for item in items:
        flat.extend(item.items if isinstance(item, Or) else (item,))
    return flat[0] if len(flat) == 1 else Or(tuple(flat))


# --- values ---------------------------------------------------------------------------------


def check_keyword(key: str) -> str:
    """The keyword named by `key` (a keyword in any case, or an 8-hex-digit tag).

    Raises InvalidQuery naming `key` when it names no public DICOM attribute.
    """
    if "." in key:
        raise InvalidQuery(
            f"{key[:80]!r}: matching on attributes inside sequences is not supported"
        )
    keyword = resolve_keyword(key)
    if keyword is None:
        raise InvalidQuery(
            f"unknown attribute {key[:80]!r}: use a DICOM keyword (PatientName) "
            "or an 8-digit hexadecimal tag (00100010)"
        )
    kind = kind_of_keyword(keyword)
    if kind in (ValueKind.SEQUENCE, ValueKind.BINARY):
        raise InvalidQuery(f"{keyword} holds {kind.value} values, which cannot be matched")
    return keyword


def _bad_value(keyword: str, raw: str, expected: str) -> InvalidQuery:
    return InvalidQuery(f"{keyword}: {raw[:80]!r} is not {expected}")


def _temporal_bound(keyword: str, kind: ValueKind, raw: str, *, upper: bool) -> str:
    if kind is ValueKind.DATE:
        value = parse_partial_date(raw, upper=upper)
        expected = "a date (YYYYMMDD or YYYY-MM-DD)"
    elif kind is ValueKind.TIME:
        value = parse_time(raw, upper=upper)
        expected = "a time (HHMMSS or HH:MM:SS)"
    else:
        value = parse_datetime(raw, upper=upper)
        expected = "a date and time (YYYYMMDDHHMMSS)"
    if value is None:
        raise _bad_value(keyword, raw, expected)
    return value


def scalar_value(keyword: str, raw: str) -> Scalar:
    """`raw` as an exact value of `keyword`, normalised like stored fields."""
    kind = kind_of_keyword(keyword)
    raw = raw.strip()
    if kind is ValueKind.NAME:
        return normalise_name(raw)
    if kind is ValueKind.INT:
        number = parse_int(raw)
        if number is None:
            raise _bad_value(keyword, raw, "an integer")
        if not -(1 << 63) <= number < 1 << 63:  # what the index back ends hold (64 bits)
            raise _bad_value(keyword, raw, "an integer of at most 64 bits")
        return number
    if kind is ValueKind.FLOAT:
        real = parse_float(raw)
        if real is None:
            raise _bad_value(keyword, raw, "a number")
        return real
    if kind is ValueKind.UID and not is_valid_uid(raw):
        raise _bad_value(keyword, raw, "a valid UID")
    if kind is ValueKind.DATE:
        date = parse_date(raw)
        if date is None:
            raise _bad_value(keyword, raw, "a date (YYYYMMDD or YYYY-MM-DD)")
        return date
    return raw


def _range_bound(keyword: str, raw: str | None, *, upper: bool) -> Scalar | None:
    if raw is None or raw.strip() in ("", "*"):
        return None
    kind = kind_of_keyword(keyword)
    if kind in TEMPORAL_KINDS:
        return _temporal_bound(keyword, kind, raw, upper=upper)
    return scalar_value(keyword, raw)


def value_range(
    keyword: str,
    low: str | None,
    high: str | None,
    *,
    include_low: bool = True,
    include_high: bool = True,
) -> Range:
    """A `Range` of `keyword` from raw bounds (None, ``''`` or ``'*'`` leaves a side open)."""
    return Range(
        keyword,
        _range_bound(keyword, low, upper=False),
        _range_bound(keyword, high, upper=True),
        include_low,
        include_high,
    )


def value_query(keyword: str, raw: str) -> FieldQuery:
    """One exact value of `keyword`; dates and times become the `Range` they cover."""
    kind = kind_of_keyword(keyword)
    if kind in TEMPORAL_KINDS and not (kind is ValueKind.DATE and parse_date(raw) is not None):
        return value_range(keyword, raw, raw)
    return Match(keyword, scalar_value(keyword, raw))


def wildcard_query(keyword: str, pattern: str) -> Wildcard:
    """A `Wildcard` of `keyword`; only text attributes, dates and times take wildcards."""
    kind = kind_of_keyword(keyword)
    if kind in (ValueKind.UID, ValueKind.INT, ValueKind.FLOAT):
        raise InvalidQuery(
            f"{keyword}: wildcards (* and ?) are not allowed for {vr_of_keyword(keyword)} values"
        )
    if kind is ValueKind.NAME:
        pattern = normalise_name(pattern)
    return Wildcard(keyword, pattern)


def values_query(keyword: str, queries: Sequence[FieldQuery]) -> Query:
    """Any of `queries` of one keyword: `AnyOf` when they are all exact values."""
    if len(queries) > MAX_LIST_VALUES:
        raise InvalidQuery(f"{keyword}: at most {MAX_LIST_VALUES} values can be listed")
    if len(queries) > 1 and all(isinstance(q, Match) for q in queries):
        return AnyOf(keyword, tuple(q.value for q in queries if isinstance(q, Match)))
    return disjunction(queries)


# --- Lucene ---------------------------------------------------------------------------------

_PARSE_LOCK = threading.Lock()  # luqum's ply parser keeps lexer state in a module global
_WORD_CHARS = re.compile(r"\w", re.UNICODE)


def _max_paren_depth(text: str) -> int:
    depth = deepest = 0
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif not quoted and char in ")]}":
            depth = max(0, depth - 1)
    return deepest


def _escape_carets(text: str) -> str:
    """``^`` outside quotes escaped: it separates person name components, it is no boost."""
    out: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "^" and not quoted:
            out.append("\\")
        out.append(char)
    return "".join(out)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text, flags=re.DOTALL)


def _word_pattern(value: str) -> tuple[str, bool]:
    """A luqum word as (pattern with only ``\\*``, ``\\?``, ``\\\\`` escapes, has wildcard)."""
    out: list[str] = []
    wild = False
    chars = iter(value)
    for char in chars:
        if char == "\\":
            nxt = next(chars, "")
            out.append("\\" + nxt if nxt in ("*", "?", "\\") else nxt)
        else:
            wild = wild or char in "*?"
            out.append(char)
    return "".join(out), wild


class _LuceneConverter:
    def __init__(self) -> None:
        self.terms = 0

    def convert(self, node: tree.Item, field: str | None, depth: int) -> Query:
        if depth > MAX_DEPTH:
            raise InvalidQuery(f"query nests deeper than {MAX_DEPTH} levels")
        depth += 1
        if isinstance(node, tree.SearchField):
            if field is not None:
                raise InvalidQuery(f"field {node.name!r} inside the field group of {field!r}")
            return self.convert(node.expr, check_keyword(str(node.name)), depth)
        if isinstance(node, tree.Group | tree.FieldGroup):
            return self.convert(node.expr, field, depth)
        if isinstance(node, tree.AndOperation | tree.UnknownOperation):
            return conjunction(self.convert(child, field, depth) for child in node.children)
        if isinstance(node, tree.OrOperation):
            return disjunction(self.convert(child, field, depth) for child in node.children)
        if isinstance(node, tree.Not | tree.Prohibit):
            return Not(self.convert(node.a, field, depth))
        if isinstance(node, tree.Plus):
            return self.convert(node.a, field, depth)
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise InvalidQuery(f"query has more than {MAX_TERMS} terms")
        if isinstance(node, tree.Range):
            return self._range(node, field)
        if isinstance(node, tree.From | tree.To):
            return self._open_range(node, field)
        if isinstance(node, tree.Phrase):
            text = _unescape(str(node.value)[1:-1])
            if field is None:
                return Text(text)
            return value_query(field, text)
        if isinstance(node, tree.Word):
            return self._word(str(node.value), field)
        raise InvalidQuery(f"{type(node).__name__.lower()} queries ({node}) are not supported")

    def _word(self, value: str, field: str | None) -> Query:
        pattern, wild = _word_pattern(value)
        if field is None:
            prefix = pattern.endswith("*") and not pattern.endswith("\\*")
            body = pattern[:-1] if prefix else pattern
            if _word_pattern(body)[1]:
                raise InvalidQuery(
                    f"free text {value[:80]!r}: only a trailing * is supported outside a field"
                )
            return Text(_unescape(body), prefix=prefix)
        if not wild:
            return value_query(field, _unescape(pattern))
        if pattern == "*":
            return Wildcard(field, "*")
        return wildcard_query(field, pattern)

    def _range(self, node: tree.Range, field: str | None) -> Query:
        if field is None:
            raise InvalidQuery(f"range {node} needs a field (StudyDate:[20200101 TO 20201231])")
        return value_range(
            field,
            self._bound(node.low),
            self._bound(node.high),
            include_low=bool(node.include_low),
            include_high=bool(node.include_high),
        )

    def _open_range(self, node: tree.From | tree.To, field: str | None) -> Query:
        if field is None:
            raise InvalidQuery(f"range {node} needs a field (StudyDate:>=20200101)")
        bound = self._bound(node.a)
        if isinstance(node, tree.From):
            return value_range(field, bound, None, include_low=bool(node.include))
        return value_range(field, None, bound, include_high=bool(node.include))

    @staticmethod
    def _bound(node: tree.Item) -> str | None:
        if isinstance(node, tree.Phrase):
            return _unescape(str(node.value)[1:-1])
        if isinstance(node, tree.Word):
            value = str(node.value)
            return None if value == "*" else _unescape(value)
        raise InvalidQuery(f"range bound {node} must be a value")


def parse_lucene(text: str) -> Query:
    """Parse a Lucene query string into a `Query`; raises InvalidQuery on any problem.

    Field names are DICOM keywords (any case) or 8-hex-digit tags; bare words are free text;
    words next to each other must all match (implicit AND). An empty string matches all.
    ``^`` is part of a value (``PatientName:DOE^JOHN``): there is no boosting.
    """
    if len(text) > MAX_QUERY_LENGTH:
        raise InvalidQuery(f"query is longer than {MAX_QUERY_LENGTH} characters")
    if not text.strip():
        return MATCH_ALL
    if _max_paren_depth(text) > MAX_DEPTH:
        raise InvalidQuery(f"query nests deeper than {MAX_DEPTH} levels")
    try:
        with _PARSE_LOCK:
            node = _luqum_parser.parse(_escape_carets(text))
    except ParseError as exc:
        raise InvalidQuery(f"query syntax error: {exc}") from None
    except (ArithmeticError, ValueError):  # luqum converts the degree of a ~ as it parses
        raise InvalidQuery("query syntax error: the degree after a ~ is not a number") from None
    except RecursionError:
        raise InvalidQuery("query is too complex") from None
    return _LuceneConverter().convert(node, None, 0)


# --- QIDO-RS and C-FIND ----------------------------------------------------------------------

RESERVED_QIDO_PARAMS = frozenset({"limit", "offset", "includefield", "fuzzymatching"})

# VRs whose values may contain a comma, so that only the backslash separates list values.
_COMMA_TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "UR"})


def _split_range(keyword: str, kind: ValueKind, value: str) -> tuple[str, str] | None:
    """``'a-b'``, ``'a-'``, ``'-b'`` as (low, high); None when `value` is a single value."""
    if "-" not in value:
        return None
    if kind is ValueKind.DATE and parse_date(value) is not None:
        return None  # an ISO date such as 2020-01-31
    candidates = [i for i, char in enumerate(value) if char == "-"]
    for index in candidates:
        low, high = value[:index], value[index + 1 :]
        if (low or high) and all(not part or _parses(keyword, kind, part) for part in (low, high)):
            return low, high
    if kind is ValueKind.DATETIME and _parses(keyword, kind, value):
        return None  # a date and time with a negative UTC offset
    raise _bad_value(keyword, value, "a valid value or range (low-high, low-, -high)")


def _parses(keyword: str, kind: ValueKind, raw: str) -> bool:
    try:
        _temporal_bound(keyword, kind, raw, upper=False)
    except InvalidQuery:
        return False
    return True


def _qido_value(keyword: str, value: str) -> FieldQuery | None:
    kind = kind_of_keyword(keyword)
    if value == "*":
        return None
    if kind in TEMPORAL_KINDS:
        bounds = _split_range(keyword, kind, value)
        if bounds is not None:
            return value_range(keyword, bounds[0], bounds[1])
    if "*" in value or "?" in value:
        return wildcard_query(keyword, value)
    return value_query(keyword, value)


def _qido_items(
    params: Mapping[str, Sequence[str] | str] | Iterable[tuple[str, str]],
) -> Iterator[tuple[str, str]]:
    if isinstance(params, Mapping):
        for key, values in params.items():
            if isinstance(values, str):
                yield key, values
            else:
                for value in values:
                    yield key, value
    else:
        yield from params


def qido_to_query(
    params: Mapping[str, Sequence[str] | str] | Iterable[tuple[str, str]],
    level: Level,
) -> Query:
    """The `Query` of QIDO-RS / C-FIND matching keys at `level` (PS3.4 C.2.2.2).

    `params` maps keys (keywords or 8-hex-digit tags) to the values as sent: a mapping of
    lists (a parsed query string), of strings, or (key, value) pairs. An empty value or
    ``*`` is universal matching; ``*`` and ``?`` are wildcards; dates, times and date-times
    take ranges (``20200101-20201231``, ``20200101-``, ``-20201231``); UIDs take lists
    separated by ``,`` or ``\\``; other values take lists separated by ``\\`` (and ``,``
    except for text that may contain one). A key given twice matches any of its values.
    The reserved parameters (limit, offset, includefield, fuzzymatching) are ignored.
    """
    per_key: dict[str, list[FieldQuery]] = {}
    universal: set[str] = set()
    for key, raw in _qido_items(params):
        if key.strip().lower() in RESERVED_QIDO_PARAMS:
            continue
        keyword = check_keyword(key)
        owner = COMPUTED_KEYWORDS.get(keyword)
        if owner is not None and owner.depth > level.depth and owner is not Level.INSTANCE:
            raise InvalidQuery(f"{keyword} is an attribute of the {owner} level, not {level}")
        separators = "\\" if vr_of_keyword(keyword) in _COMMA_TEXT_VRS else "\\,"
        values = [v.strip() for v in re.split(f"[{re.escape(separators)}]", raw) if v.strip()]
        if not values:
            universal.add(keyword)
        for value in values:
            query = _qido_value(keyword, value)
            if query is None:
                universal.add(keyword)
            else:
                per_key.setdefault(keyword, []).append(query)
    return conjunction(
        values_query(keyword, queries)
        for keyword, queries in per_key.items()
        if keyword not in universal
    )
