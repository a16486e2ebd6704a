"""The registry of C-MOVE destinations: the AE titles dicomflow may send to, and where they are.

Two sources, merged: the ``DICOMFLOW_DESTINATIONS`` setting (a comma-separated list of
``AET@host:port``, read-only at run time) and ``<data_dir>/destinations.json``, which the admin
API (``/api/admin/destinations``) edits. The file is re-read whenever it changes, so that a
destination added through the API is usable by the SCP (another process) at once. A change is
written to a temporary file, fsync'd and renamed over the old one under an exclusive lock.

File format::

    {"destinations": [{"ae_title": "PACS2", "host": "10.0.0.7", "port": 104}]}
"""

import fcntl
import json
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dicomflow.api.exceptions import DestinationConflict, InvalidDestination
from dicomflow.kernel.blobs.filesystem import write_durably
from dicomflow.kernel.settings import Settings

DESTINATIONS_FILE = "destinations.json"
_HOST = re.compile(r"^[A-Za-z0-9._:\-\[\]%]{1,253}$")


class DestinationSource(StrEnum):
    """Where a destination is defined: the settings (read-only) or the file (editable)."""

    SETTINGS = "settings"
    FILE = "file"


def check_ae_title(value: str) -> str:
    """An AE title without its padding; 1-16 printable characters, no backslash."""
    stripped = value.strip()
    if not 0 < len(stripped) <= 16 or "\\" in stripped or not stripped.isprintable():
        raise ValueError(
            f"AE title {value[:40]!r} must be 1-16 printable characters without backslash"
        )
    return stripped


class Destination(BaseModel):
    """One C-MOVE destination."""

    model_config = ConfigDict(frozen=True)

    ae_title: str = Field(description="AE title of the destination (the Move Destination).")
    host: str = Field(description="Host name or IP address of the destination's Storage SCP.")
    port: int = Field(ge=1, le=65535, description="TCP port of the destination's Storage SCP.")

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return check_ae_title(value)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        value = value.strip()
        if not _HOST.match(value):
            raise ValueError(f"host {value[:60]!r} is not a host name or IP address")
        return value.removeprefix("[").removesuffix("]")


def parse_destination(text: str) -> Destination:
    """``AET@host:port`` (``AET@[::1]:104`` for IPv6) as a `Destination`."""
    ae_title, at, address = text.strip().rpartition("@")
    host, colon, port = address.rpartition(":")
    if not at or not colon or not port.isdigit():
        raise InvalidDestination(
            f"destination {text.strip()[:80]!r} is not AET@host:port (e.g. PACS2@10.0.0.7:104)"
        )
    try:
        return Destination(ae_title=ae_title, host=host, port=int(port))
    except ValidationError as exc:
        reasons = "; ".join(f"{error['loc'][0]}: {error['msg']}" for error in exc.errors())
        raise InvalidDestination(f"destination {text.strip()[:80]!r}: {reasons}") from None


def parse_destinations(text: str) -> list[Destination]:
    """A comma-separated list of ``AET@host:port`` (the ``DICOMFLOW_DESTINATIONS`` setting)."""
    destinations = [parse_destination(item) for item in text.split(",") if item.strip()]
    seen: set[str] = set()
    for destination in destinations:
        if destination.ae_title in seen:
            raise InvalidDestination(f"destination {destination.ae_title} is listed twice")
        seen.add(destination.ae_title)
    return destinations


class DestinationRegistry:
    """The destinations of the settings and of ``<data_dir>/destinations.json``.

    Raises InvalidDestination at construction when the setting is malformed, so that a typo
    stops the start of the service that needs it, with the reason.
    """

    def __init__(self, settings: Settings) -> None:
        self.path = settings.data_dir / DESTINATIONS_FILE
        self._configured = {d.ae_title: d for d in parse_destinations(settings.destinations)}
        self._lock = threading.Lock()
        self._cache: tuple[tuple[int, int], dict[str, Destination]] | None = None

    def get(self, ae_title: str) -> Destination | None:
        """The destination with this AE title (leading and trailing spaces ignored)."""
        title = ae_title.strip()
        return self._configured.get(title) or self._from_file().get(title)

    def entries(self) -> list[tuple[Destination, DestinationSource]]:
        """Every destination with its source, by AE title."""
        merged = {title: (d, DestinationSource.FILE) for title, d in self._from_file().items()}
        merged.update(
            (title, (d, DestinationSource.SETTINGS)) for title, d in self._configured.items()
        )
        return [merged[title] for title in sorted(merged)]

    def add(self, destination: Destination) -> Destination:
        """Add a destination to the file; raises DestinationConflict if its AE title exists."""
        if destination.ae_title in self._configured:
            raise DestinationConflict(
                f"{destination.ae_title} is defined by DICOMFLOW_DESTINATIONS; change it there"
            )
        with self._editing() as entries:
            if destination.ae_title in entries:
                raise DestinationConflict(
                    f"destination {destination.ae_title} exists; delete it first to change it"
                )
            entries[destination.ae_title] = destination
        return destination

    def remove(self, ae_title: str) -> bool:
        """Remove a destination from the file; False if there was none with this AE title."""
        title = ae_title.strip()
        if title in self._configured:
            raise DestinationConflict(
                f"{title} is defined by DICOMFLOW_DESTINATIONS; remove it there"
            )
        with self._editing() as entries:
            return entries.pop(title, None) is not None

    # the file

    def _from_file(self) -> dict[str, Destination]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if self._cache is not None and self._cache[0] == stamp:
                return self._cache[1]
            entries = self._read()
            self._cache = (stamp, entries)
            return entries

    def _read(self) -> dict[str, Destination]:
        try:
            document: Any = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise InvalidDestination(f"{self.path} cannot be read: {exc}") from exc
        items = document.get("destinations") if isinstance(document, dict) else None
        if not isinstance(items, list):
            raise InvalidDestination(f'{self.path} must hold {{"destinations": [...]}}')
        entries: dict[str, Destination] = {}
        for item in items:
            try:
                destination = Destination.model_validate(item)
            except ValidationError as exc:
                raise InvalidDestination(f"{self.path}: bad destination {item!r}: {exc}") from None
            entries[destination.ae_title] = destination
        return entries

    @contextmanager
    def _editing(self) -> Iterator[dict[str, Destination]]:
        """The file's entries, to change in place; written back durably under a lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with (self.path.parent / (DESTINATIONS_FILE + ".lock")).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self._read()
            before = dict(entries)
            yield entries
            if entries != before:
                document = {
                    "destinations": [entries[title].model_dump() for title in sorted(entries)]
                }
                text = json.dumps(document, indent=2) + "\n"
                write_durably(self.path, text.encode("utf-8"))
                os.utime(self.path)  # a fresh mtime even within the clock's resolution
            with self._lock:
                self._cache = None
