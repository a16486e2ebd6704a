"""How the UI shows DICOM values: dates, times, person names, lists, sizes."""

from typing import Any

from dicomflow.kernel.events import Namespace

VIEW_NAMESPACES = (Namespace.ORIGINAL, Namespace.DEIDENTIFIED)


def view_namespace(value: str | None) -> Namespace:
    """The namespace a page shows (``original`` or ``deidentified``; default original).

    Raises ValueError naming the accepted values for anything else.
    """
    if value is None or value == "":
        return Namespace.ORIGINAL
    for namespace in VIEW_NAMESPACES:
        if value == namespace.value:
            return namespace
    raise ValueError(f"namespace {value[:40]!r} is not original or deidentified")


def dicomweb_root(namespace: Namespace) -> str:
    """The DICOMweb root URL path of a namespace."""
    return "/dicomweb/deidentified" if namespace is Namespace.DEIDENTIFIED else "/dicomweb"


def text(value: Any) -> str:
    """Any flattened value as text: lists joined with a backslash (DICOM's separator)."""
    if value is None:
        return ""
    if isinstance(value, list):
        return "\\".join(text(item) for item in value if not isinstance(item, dict))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def date(value: Any) -> str:
    """A DA value (``20240115``) as ``2024-01-15``; anything else as it is."""
    raw = text(value).strip()
    if len(raw) == 8 and raw.isdigit():
        return f"{raw[:4]}-{raw[4:6]}-{raw[6:]}"
    return raw


def time(value: Any) -> str:
    """A TM value (``093000.123``) as ``09:30:00``; anything else as it is."""
    raw = text(value).strip()
    digits = raw.split(".")[0]
    if digits.isdigit() and len(digits) in (2, 4, 6):
        parts = [digits[i : i + 2] for i in range(0, len(digits), 2)]
        return ":".join(parts if len(parts) > 1 else [*parts, "00"])
    return raw


def person(value: Any) -> str:
    """A person name (``DOE^JOHN^^DR``) as ``DOE, JOHN`` (family, given middle)."""
    raw = text(value).strip()
    if "^" not in raw:
        return raw
    parts = raw.split("^")
    family = parts[0].strip()
    rest = " ".join(p.strip() for p in parts[1:3] if p.strip())
    return f"{family}, {rest}" if family and rest else family or rest


def integer(value: Any) -> int | None:
    """A count or number, or None when absent or not a number."""
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def size(count: float) -> str:
    """A byte count for people (``12.3 MB``), in powers of 1000 like disk vendors."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} PB"  # pragma: no cover - the loop returns at TB


def number(count: float) -> str:
    """A count with thousands separators (``12,345``)."""
    return f"{count:,.0f}"
