"""The embedded search index: one SQLite file, ``<data_dir>/index/index.sqlite3`` (WAL).

Layout (every row carries its namespace, so the namespaces never mix):

- ``patients``, ``studies``, ``series``, ``instances``: one small row per entity, linked by
  row id (``patient_ref``, ``study_ref``, ``series_ref``), with the columns that sorting,
  instance matching and the computed attributes need. Rows stay small so that matching and
  counting touch few pages; the documents live beside them, except one copy in each study
  row (``studies.doc``: its patient's and its own attributes), so that each study of a
  study-level answer is one row to read, not three scattered ones (what an answer costs when
  the index is not in memory):
- ``docs``: the patient, study and series attributes of each entity as DICOM JSON;
  ``instance_data``: each instance's whole DICOM JSON (zlib) and its blob reference.
- ``attrs``: every searchable value of the patient, study and series levels as
  (level, owner row, tag, text, number), indexed on (level, tag, text) and (level, tag,
  number): any keyword of these levels is searchable with an index. Instance-level matching
  uses the columns of ``instances`` (see `INSTANCE_COLUMNS`).
- ``fts_patient``, ``fts_study``, ``fts_series``: FTS5 tables of the text values of each
  entity, for free text.

A query on an attribute of another level than the one searched relates through the hierarchy:
a study matches ``Modality:CT`` when one of its series does, a series matches ``PatientName``
when its patient does. Study and series counts, ModalitiesInStudy and SOPClassesInStudy are
recomputed, once per batch, for the studies and series that the batch touched.

One process writes (the index processor: ``BEGIN IMMEDIATE`` per batch); any number read,
each thread on its own connection.
"""

import re
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from pydantic_core import from_json, to_json

from dicomflow.indexer.base import InstanceRecord, SearchRequest, SearchResult, StudyIndex
from dicomflow.indexer.documents import ONLINE as _ONLINE
from dicomflow.indexer.documents import Wanted as _Wanted
from dicomflow.indexer.documents import event_fields as _fields
from dicomflow.indexer.documents import field_text as _text
from dicomflow.indexer.documents import level_documents, patient_key, series_tags, wanted_tags
from dicomflow.indexer.documents import list_element as _list_element
from dicomflow.indexer.documents import number_element as _number_element
from dicomflow.indexer.documents import select as _select
from dicomflow.indexer.documents import text_values as _text_of
from dicomflow.indexer.exceptions import IndexerError, InvalidQuery
from dicomflow.indexer.levels import (
    Level,
    level_of_keyword,
)
from dicomflow.indexer.query import (
    And,
    AnyOf,
    Match,
    Not,
    Or,
    Query,
    Range,
    Text,
    Wildcard,
)
from dicomflow.indexer.values import (
    NUMERIC_KINDS,
    ValueKind,
    as_list,
    keyword_hex,
    kind_of_keyword,
    name_forms,
    normalise_name,
    parse_int,
    tag_of_keyword,
)
from dicomflow.kernel.events import BlobRef, MetadataExtracted, Namespace
from dicomflow.kernel.exceptions import BackendUnavailable, BackPressure

INDEX_FILE = "index.sqlite3"
ANALYZE_FIRST = 1000
ANALYZE_ROWS = 1000
SCHEMA_VERSION = 2
"""1: the first layout; 2: ``studies.doc`` (filled from ``docs`` when a version 1 index opens)."""
MAX_ATTR_TEXT = 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS patients(
    id INTEGER PRIMARY KEY,
    ns TEXT NOT NULL,
    pkey TEXT NOT NULL,
    name_norm TEXT NOT NULL DEFAULT '',
    UNIQUE(ns, pkey)
);
CREATE TABLE IF NOT EXISTS studies(
    id INTEGER PRIMARY KEY,
    ns TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    patient_ref INTEGER NOT NULL,
    study_date TEXT,
    study_time TEXT,
    n_series INTEGER NOT NULL DEFAULT 0,
    n_instances INTEGER NOT NULL DEFAULT 0,
    modalities TEXT NOT NULL DEFAULT '[]',
    sop_classes TEXT NOT NULL DEFAULT '[]',
    updated REAL NOT NULL DEFAULT 0,
    doc TEXT,
    UNIQUE(study_uid, ns)
);
CREATE INDEX IF NOT EXISTS studies_patient ON studies(patient_ref);
CREATE INDEX IF NOT EXISTS studies_date ON studies(ns, study_date, study_time, patient_ref);
CREATE TABLE IF NOT EXISTS series(
    id INTEGER PRIMARY KEY,
    ns TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    study_ref INTEGER NOT NULL,
    modality TEXT NOT NULL DEFAULT '',
    series_number INTEGER,
    n_instances INTEGER NOT NULL DEFAULT 0,
    UNIQUE(series_uid, ns)
);
CREATE INDEX IF NOT EXISTS series_study ON series(study_ref, series_number);
CREATE TABLE IF NOT EXISTS instances(
    id INTEGER PRIMARY KEY,
    ns TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    series_ref INTEGER NOT NULL,
    study_ref INTEGER NOT NULL,
    sop_class TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    instance_number INTEGER,
    img_rows INTEGER,
    img_columns INTEGER,
    bits_allocated INTEGER,
    number_of_frames INTEGER,
    content_date TEXT,
    content_time TEXT,
    UNIQUE(sop_uid, ns)
);
CREATE TABLE IF NOT EXISTS instance_data(
    id INTEGER PRIMARY KEY,
    blob TEXT NOT NULL,
    dicom_json BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS docs(
    level INTEGER NOT NULL,
    owner INTEGER NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY(level, owner)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_ref, instance_number);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_ref, sop_class);
CREATE TABLE IF NOT EXISTS attrs(
    level INTEGER NOT NULL,
    owner INTEGER NOT NULL,
    tag INTEGER NOT NULL,
    text TEXT NOT NULL,
    num REAL
);
CREATE INDEX IF NOT EXISTS attrs_text ON attrs(level, tag, text, owner);
CREATE INDEX IF NOT EXISTS attrs_num ON attrs(level, tag, num, owner) WHERE num IS NOT NULL;
CREATE INDEX IF NOT EXISTS attrs_owner ON attrs(level, owner);
CREATE VIRTUAL TABLE IF NOT EXISTS fts_patient USING fts5(
    body, tokenize = 'unicode61 remove_diacritics 2');
CREATE VIRTUAL TABLE IF NOT EXISTS fts_study USING fts5(
    body, tokenize = 'unicode61 remove_diacritics 2');
CREATE VIRTUAL TABLE IF NOT EXISTS fts_series USING fts5(
    body, tokenize = 'unicode61 remove_diacritics 2');
"""

_TABLE = {
    Level.PATIENT: "patients",
    Level.STUDY: "studies",
    Level.SERIES: "series",
    Level.INSTANCE: "instances",
}
_CODE = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.INSTANCE: 3}
_ROLLUP = 4
"""The ``attrs`` level of the distinct series values of a study, owned by the study: a
study-level query on a series attribute (``Modality:MR``) is then one index range scan."""
_FTS = {Level.PATIENT: "fts_patient", Level.STUDY: "fts_study", Level.SERIES: "fts_series"}
_KEY_COLUMN = {Level.PATIENT: "pkey", Level.STUDY: "study_uid", Level.SERIES: "series_uid"}
_PARENT_COLUMN = {Level.STUDY: "patient_ref", Level.SERIES: "study_ref"}

# Attributes matched on a column (an SQL expression over the row alias ``{a}``), per level.
INSTANCE_COLUMNS = {
    "SOPInstanceUID": "{a}.sop_uid",
    "SOPClassUID": "{a}.sop_class",
    "InstanceNumber": "{a}.instance_number",
    "Rows": "{a}.img_rows",
    "Columns": "{a}.img_columns",
    "BitsAllocated": "{a}.bits_allocated",
    "NumberOfFrames": "{a}.number_of_frames",
    "ContentDate": "{a}.content_date",
    "ContentTime": "{a}.content_time",
    "InstanceAvailability": "'ONLINE'",
}
_COLUMNS: dict[str, tuple[Level, str]] = {
    "StudyInstanceUID": (Level.STUDY, "{a}.study_uid"),
    "StudyDate": (Level.STUDY, "{a}.study_date"),  # with the (ns, date, time) index
    "StudyTime": (Level.STUDY, "{a}.study_time"),
    "SeriesInstanceUID": (Level.SERIES, "{a}.series_uid"),
    "NumberOfStudyRelatedSeries": (Level.STUDY, "{a}.n_series"),
    "NumberOfStudyRelatedInstances": (Level.STUDY, "{a}.n_instances"),
    "NumberOfSeriesRelatedInstances": (Level.SERIES, "{a}.n_instances"),
    "NumberOfPatientRelatedStudies": (
        Level.PATIENT,
        "(SELECT count(*) FROM studies c WHERE c.patient_ref = {a}.id)",
    ),
    "NumberOfPatientRelatedSeries": (
        Level.PATIENT,
        "(SELECT coalesce(sum(c.n_series), 0) FROM studies c WHERE c.patient_ref = {a}.id)",
    ),
    "NumberOfPatientRelatedInstances": (
        Level.PATIENT,
        "(SELECT coalesce(sum(c.n_instances), 0) FROM studies c WHERE c.patient_ref = {a}.id)",
    ),
    **{keyword: (Level.INSTANCE, expr) for keyword, expr in INSTANCE_COLUMNS.items()},
}

# Sort expressions over the result alias ``e`` that use a column (others use ``attrs``).
_SORT_COLUMNS: dict[Level, dict[str, str]] = {
    Level.PATIENT: {"PatientName": "e.name_norm"},
    Level.STUDY: {
        "StudyDate": "e.study_date",
        "StudyTime": "e.study_time",
        "PatientName": "(SELECT p.name_norm FROM patients p WHERE p.id = e.patient_ref)",
    },
    Level.SERIES: {
        "SeriesNumber": "e.series_number",
        "Modality": "e.modality",
        "StudyDate": "(SELECT s.study_date FROM studies s WHERE s.id = e.study_ref)",
    },
    Level.INSTANCE: {},
}
_DEFAULT_ORDER = {
    Level.PATIENT: "e.name_norm, e.id",
    Level.STUDY: "e.study_date DESC, e.study_time DESC, e.id DESC",
    Level.SERIES: "e.study_ref DESC, e.series_number IS NULL, e.series_number, e.id",
    Level.INSTANCE: "e.series_ref, e.instance_number IS NULL, e.instance_number, e.id",
}

_MODALITIES_TAG = int(keyword_hex("ModalitiesInStudy"), 16)
_SOP_CLASSES_TAG = int(keyword_hex("SOPClassesInStudy"), 16)

Params: TypeAlias = list[object]
AttrRow: TypeAlias = tuple[int, str, float | None]


def _dumps(value: object) -> str:
    """Compact JSON text (pydantic-core's serialiser: several times faster than json's)."""
    return to_json(value).decode()


def _loads(text: str | bytes) -> Any:
    return from_json(text)


def _study_doc(patient_doc: str, study_doc: str) -> str:
    """The ``studies.doc`` of a study: its patient's attributes, then its own."""
    return _dumps({**_loads(patient_doc), **_loads(study_doc)})


_STUDY_DOCS = (
    "SELECT e.id, p.doc, d.doc FROM studies e JOIN docs d ON d.level = 1 AND d.owner = e.id "
    "JOIN docs p ON p.level = 0 AND p.owner = e.patient_ref"
)


# --- turning an event into rows ------------------------------------------------------------


@dataclass(slots=True)
class _Entity:
    """What one event says about its patient, study or series."""

    doc: str
    attrs: list[AttrRow] = field(default_factory=list)
    text: str = ""
    columns: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Keys:
    """Where one event goes: its namespace and the keys of its four entities."""

    ns: str
    patient: str
    study: str
    series: str
    sop: str

    def of(self, level: Level) -> tuple[Level, str, str]:
        key = {Level.PATIENT: self.patient, Level.STUDY: self.study, Level.SERIES: self.series}
        return level, self.ns, key[level]


# SQLite integers are signed 64-bit: a larger value (an IS of 20 digits, say) made the whole
# batch fail to insert (found by fuzzing); it is kept as text only.
_SQLITE_INTEGERS = range(-(1 << 63), 1 << 63)


def _real(number: int | float) -> float | None:
    try:
        return float(number)
    except OverflowError:  # an integer beyond the largest float
        return None


def _attr_rows(tag: int, kind: ValueKind, value: object) -> Iterator[AttrRow]:
    for item in as_list(value):
        if kind is ValueKind.NAME and isinstance(item, Mapping):
            for form in dict.fromkeys(name_forms(item)):
                yield tag, form[:MAX_ATTR_TEXT], None
        elif kind in NUMERIC_KINDS and isinstance(item, int | float):
            yield tag, str(item), _real(item)
        elif isinstance(item, str):
            yield tag, item[:MAX_ATTR_TEXT], None


def _number(fields: Mapping[str, Any], keyword: str) -> int | None:
    values = as_list(fields.get(keyword))
    number = parse_int(values[0]) if values else None
    return number if number is not None and number in _SQLITE_INTEGERS else None


def _keys(event: MetadataExtracted) -> _Keys:
    fields = _fields(event)
    identity = event.identity
    return _Keys(
        ns=event.namespace.value,
        patient=patient_key(fields),
        study=identity.study_instance_uid,
        series=identity.series_instance_uid,
        sop=identity.sop_instance_uid,
    )


def _entities(event: MetadataExtracted) -> dict[Level, _Entity]:
    """The patient, study and series documents, search values and text of one event."""
    levels = (Level.PATIENT, Level.STUDY, Level.SERIES)
    docs = level_documents(event)

    fields = _fields(event)
    attrs: dict[Level, list[AttrRow]] = {level: [] for level in levels}
    texts: dict[Level, list[str]] = {level: [] for level in levels}
    for keyword, value in fields.items():
        level = level_of_keyword(keyword)
        tag = tag_of_keyword(keyword)
        if level not in docs or tag is None or keyword in _COLUMNS:
            continue
        kind = kind_of_keyword(keyword)
        attrs[level].extend(_attr_rows(tag, kind, value))
        texts[level].extend(_text_of(kind, value))

    name = fields.get("PatientName")
    name_norm = ""
    if isinstance(name, Mapping) and isinstance(name.get("alphabetic"), str):
        name_norm = normalise_name(name["alphabetic"])
    columns: dict[Level, dict[str, object]] = {
        Level.PATIENT: {"name_norm": name_norm},
        Level.STUDY: {
            "study_date": _text(fields, "StudyDate") or None,
            "study_time": _text(fields, "StudyTime") or None,
        },
        Level.SERIES: {
            "modality": _text(fields, "Modality"),
            "series_number": _number(fields, "SeriesNumber"),
        },
    }
    return {
        level: _Entity(_dumps(docs[level]), attrs[level], " ".join(texts[level]), columns[level])
        for level in levels
    }


def _instance_columns(event: MetadataExtracted) -> dict[str, object]:
    fields = _fields(event)
    return {
        "sop_class": event.identity.sop_class_uid,
        "transfer_syntax": event.identity.transfer_syntax_uid,
        "instance_number": _number(fields, "InstanceNumber"),
        "img_rows": _number(fields, "Rows"),
        "img_columns": _number(fields, "Columns"),
        "bits_allocated": _number(fields, "BitsAllocated"),
        "number_of_frames": _number(fields, "NumberOfFrames"),
        "content_date": _text(fields, "ContentDate") or None,
        "content_time": _text(fields, "ContentTime") or None,
    }


def _instance_data(event: MetadataExtracted) -> tuple[str, bytes]:
    """(blob reference JSON, compressed DICOM JSON) of an instance."""
    return event.blob.model_dump_json(), zlib.compress(to_json(event.dicom_json), 1)


# --- writing a batch -------------------------------------------------------------------------


class _BatchWriter:
    """Writes one batch inside one transaction, then recomputes what it touched.

    Within a batch, the last event of a patient, study or series is the one whose values it
    keeps (last writer wins), so only that event's documents are built and written.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.touched: dict[Level, set[int]] = {
            Level.PATIENT: set(),
            Level.STUDY: set(),
            Level.SERIES: set(),
        }

    def write(self, events: Sequence[MetadataExtracted]) -> None:
        keys = [_keys(event) for event in events]
        last: dict[tuple[Level, str, str], int] = {}
        for position, key in enumerate(keys):
            for level in (Level.PATIENT, Level.STUDY, Level.SERIES):
                last[key.of(level)] = position
        entities = {position: _entities(events[position]) for position in set(last.values())}
        ids: dict[tuple[Level, str, str], int] = {}
        for level, parent_level in (
            (Level.PATIENT, None),
            (Level.STUDY, Level.PATIENT),
            (Level.SERIES, Level.STUDY),
        ):
            for entity_key, position in last.items():
                if entity_key[0] is level:
                    parent = ids[keys[position].of(parent_level)] if parent_level else None
                    data = entities[position][level]
                    ids[entity_key] = self.entity(level, entity_key[1], entity_key[2], data, parent)
                    self.touched[level].add(ids[entity_key])
        # An instance belongs to the study of its series (as the series' last event says).
        study_of_series = {
            series_key: ids[keys[position].of(Level.STUDY)]
            for series_key, position in last.items()
            if series_key[0] is Level.SERIES
        }
        self.instances(events, keys, ids, study_of_series)

    def entity(self, level: Level, ns: str, key: str, data: _Entity, parent: int | None) -> int:
        table, key_column = _TABLE[level], _KEY_COLUMN[level]
        parent_column = _PARENT_COLUMN.get(level)
        found = self.conn.execute(
            f"SELECT e.id, d.doc, {'e.' + parent_column if parent_column else 'NULL'} "
            f"FROM {table} e LEFT JOIN docs d ON d.level = ? AND d.owner = e.id "
            f"WHERE e.ns = ? AND e.{key_column} = ?",
            (_CODE[level], ns, key),
        ).fetchone()
        columns = dict(data.columns)
        if parent_column is not None:
            columns[parent_column] = parent
        if found is None:
            names = ["ns", key_column, *columns]
            rowid = self.conn.execute(
                f"INSERT INTO {table}({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                (ns, key, *columns.values()),
            ).lastrowid
            assert rowid is not None
        else:
            rowid, old_doc, old_parent = found
            if old_doc == data.doc and old_parent == parent:
                return int(rowid)
            if level is Level.PATIENT and old_doc != data.doc:  # their copies of it
                self.touched[Level.STUDY].update(
                    study
                    for (study,) in self.conn.execute(
                        "SELECT id FROM studies WHERE patient_ref = ?", (rowid,)
                    )
                )
            assignments = ", ".join(f"{name} = ?" for name in columns)
            self.conn.execute(
                f"UPDATE {table} SET {assignments} WHERE id = ?", (*columns.values(), rowid)
            )
            if old_parent != parent and parent_column is not None:
                self._moved(level, rowid, old_parent, parent)
            self._delete_attrs(level, rowid)
        self.conn.execute(
            "INSERT OR REPLACE INTO docs(level, owner, doc) VALUES (?, ?, ?)",
            (_CODE[level], rowid, data.doc),
        )
        self.conn.executemany(
            "INSERT INTO attrs(level, owner, tag, text, num) VALUES (?, ?, ?, ?, ?)",
            [(_CODE[level], rowid, tag, text, num) for tag, text, num in data.attrs],
        )
        if data.text:
            self.conn.execute(
                f"INSERT INTO {_FTS[level]}(rowid, body) VALUES (?, ?)", (rowid, data.text)
            )
        return int(rowid)

    def _moved(self, level: Level, rowid: int, old_parent: int, parent: int | None) -> None:
        """A study that changed patient, or a series that changed study."""
        if level is Level.STUDY:
            self.touched[Level.PATIENT].add(old_parent)
        elif level is Level.SERIES:
            self.touched[Level.STUDY].add(old_parent)
            self.conn.execute(
                "UPDATE instances SET study_ref = ? WHERE series_ref = ?", (parent, rowid)
            )

    def instances(
        self,
        events: Sequence[MetadataExtracted],
        keys: list[_Keys],
        ids: dict[tuple[Level, str, str], int],
        study_of_series: dict[tuple[Level, str, str], int],
    ) -> None:
        """Insert or overwrite the instances; an instance that moved touches its old series."""
        known: dict[tuple[str, str], int] = {}
        for ns in {key.ns for key in keys}:
            sops = list({key.sop for key in keys if key.ns == ns})
            for chunk in range(0, len(sops), 500):
                part = sops[chunk : chunk + 500]
                for rowid, sop, series, study in self.conn.execute(
                    "SELECT id, sop_uid, series_ref, study_ref FROM instances "
                    f"WHERE ns = ? AND sop_uid IN ({', '.join('?' * len(part))})",
                    (ns, *part),
                ):
                    known[(ns, sop)] = rowid
                    self.touched[Level.SERIES].add(series)
                    self.touched[Level.STUDY].add(study)
        (next_id,) = self.conn.execute("SELECT coalesce(max(id), 0) + 1 FROM instances").fetchone()
        rows, data = [], []
        for event, key in zip(events, keys, strict=True):
            rowid = known.get((key.ns, key.sop))
            if rowid is None:  # the one writer allocates ids, so that both tables share them
                rowid = known[(key.ns, key.sop)] = next_id
                next_id += 1
            series_key = key.of(Level.SERIES)
            columns = _instance_columns(event)
            rows.append(
                (
                    rowid,
                    key.ns,
                    key.sop,
                    ids[series_key],
                    study_of_series[series_key],
                    *columns.values(),
                )
            )
            data.append((rowid, *_instance_data(event)))
        names = ("id", "ns", "sop_uid", "series_ref", "study_ref", *columns)
        updates = ", ".join(f"{name} = excluded.{name}" for name in names[3:])
        self.conn.executemany(
            f"INSERT INTO instances({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
            f"ON CONFLICT(sop_uid, ns) DO UPDATE SET {updates}",
            rows,
        )
        self.conn.executemany(
            "INSERT OR REPLACE INTO instance_data(id, blob, dicom_json) VALUES (?, ?, ?)", data
        )

    def _delete_attrs(self, level: Level, rowid: int, tags: Sequence[int] = ()) -> None:
        if tags:
            marks = ", ".join("?" * len(tags))
            self.conn.execute(
                f"DELETE FROM attrs WHERE level = ? AND owner = ? AND tag IN ({marks})",
                (_CODE[level], rowid, *tags),
            )
            return
        self.conn.execute("DELETE FROM attrs WHERE level = ? AND owner = ?", (_CODE[level], rowid))
        self.conn.execute(f"DELETE FROM {_FTS[level]} WHERE rowid = ?", (rowid,))

    def _delete(self, level: Level, rowid: int) -> None:
        self._delete_attrs(level, rowid)
        if level is Level.STUDY:
            self.conn.execute("DELETE FROM attrs WHERE level = ? AND owner = ?", (_ROLLUP, rowid))
        self.conn.execute("DELETE FROM docs WHERE level = ? AND owner = ?", (_CODE[level], rowid))
        self.conn.execute(f"DELETE FROM {_TABLE[level]} WHERE id = ?", (rowid,))

    def finish(self) -> None:
        """Recount the touched series and studies; drop the entities left empty."""
        conn = self.conn
        for series in self.touched[Level.SERIES]:
            (count,) = conn.execute(
                "SELECT count(*) FROM instances WHERE series_ref = ?", (series,)
            ).fetchone()
            if count:
                conn.execute("UPDATE series SET n_instances = ? WHERE id = ?", (count, series))
            else:
                self._delete(Level.SERIES, series)
        now = time.time()
        for study in self.touched[Level.STUDY]:
            n_series, n_instances = conn.execute(
                "SELECT count(*), coalesce(sum(n_instances), 0) FROM series WHERE study_ref = ?",
                (study,),
            ).fetchone()
            if not n_series:
                found = conn.execute(
                    "SELECT patient_ref FROM studies WHERE id = ?", (study,)
                ).fetchone()
                if found is not None:
                    self.touched[Level.PATIENT].add(found[0])
                self._delete(Level.STUDY, study)
                continue
            modalities = [
                m
                for (m,) in conn.execute(
                    "SELECT DISTINCT modality FROM series WHERE study_ref = ? ORDER BY modality",
                    (study,),
                )
                if m
            ]
            sop_classes = [
                c
                for (c,) in conn.execute(
                    "SELECT DISTINCT sop_class FROM instances WHERE study_ref = ? "
                    "ORDER BY sop_class",
                    (study,),
                )
            ]
            _, patient_doc, study_doc = conn.execute(
                f"{_STUDY_DOCS} WHERE e.id = ?", (study,)
            ).fetchone()
            conn.execute(
                "UPDATE studies SET n_series = ?, n_instances = ?, modalities = ?, "
                "sop_classes = ?, updated = ?, doc = ? WHERE id = ?",
                (
                    n_series,
                    n_instances,
                    _dumps(modalities),
                    _dumps(sop_classes),
                    now,
                    _study_doc(patient_doc, study_doc),
                    study,
                ),
            )
            self._delete_attrs(Level.STUDY, study, (_MODALITIES_TAG, _SOP_CLASSES_TAG))
            conn.executemany(
                "INSERT INTO attrs(level, owner, tag, text, num) VALUES (?, ?, ?, ?, NULL)",
                [(_CODE[Level.STUDY], study, _MODALITIES_TAG, m) for m in modalities]
                + [(_CODE[Level.STUDY], study, _SOP_CLASSES_TAG, c) for c in sop_classes],
            )
            conn.execute("DELETE FROM attrs WHERE level = ? AND owner = ?", (_ROLLUP, study))
            conn.execute(
                "INSERT INTO attrs(level, owner, tag, text, num) "
                "SELECT DISTINCT ?, ?, a.tag, a.text, a.num FROM series s "
                "JOIN attrs a ON a.level = ? AND a.owner = s.id WHERE s.study_ref = ?",
                (_ROLLUP, study, _CODE[Level.SERIES], study),
            )
        for patient in self.touched[Level.PATIENT]:
            if (
                conn.execute(
                    "SELECT 1 FROM studies WHERE patient_ref = ? LIMIT 1", (patient,)
                ).fetchone()
                is None
            ):
                self._delete(Level.PATIENT, patient)


# --- compiling a query -----------------------------------------------------------------------


def _glob(pattern: str) -> tuple[str, str]:
    """A Wildcard pattern as (GLOB pattern, literal prefix before the first wildcard)."""
    out: list[str] = []
    prefix: list[str] = []
    in_prefix = True
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            literal = next(chars, "\\")
            out.append(f"[{literal}]" if literal in "*?[" else literal)
            if in_prefix:
                prefix.append(literal)
        elif char in "*?":
            out.append(char)
            in_prefix = False
        else:
            out.append("[[]" if char == "[" else char)
            if in_prefix:
                prefix.append(char)
    return "".join(out), "".join(prefix)


def _successor(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix`."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


def _condition(
    expr: str, numeric: bool, query: Match | Wildcard | Range | AnyOf
) -> tuple[str, Params]:
    """An SQL condition on `expr` (a column or ``text``/``num`` of ``attrs``)."""
    if isinstance(query, Match):
        return f"{expr} = ?", [query.value]
    if isinstance(query, AnyOf):
        return f"{expr} IN ({', '.join('?' * len(query.values))})", list(query.values)
    if isinstance(query, Range):
        parts: list[str] = []
        params: Params = []
        if query.low is not None:
            parts.append(f"{expr} {'>=' if query.include_low else '>'} ?")
            params.append(query.low)
        if query.high is not None:
            parts.append(f"{expr} {'<=' if query.include_high else '<'} ?")
            params.append(query.high)
        return (" AND ".join(parts) or f"{expr} IS NOT NULL"), params
    if numeric or query.pattern.replace("*", "") == "":
        return f"{expr} IS NOT NULL", []
    glob, prefix = _glob(query.pattern)
    sql, params = f"{expr} GLOB ?", [glob]
    if prefix:
        sql += f" AND {expr} >= ?"
        params.append(prefix)
        upper = _successor(prefix)
        if upper is not None:
            sql += f" AND {expr} < ?"
            params.append(upper)
    return sql, params


def _fts_phrase(text: Text) -> str | None:
    if not re.search(r"\w", text.text):
        return None
    # FTS5 ends a query string at a NUL ("unterminated string"); its tokenizer separates
    # words there anyway, as at a space.
    phrase = text.text.replace("\0", " ").replace('"', '""')
    return '"' + phrase + '"' + (" *" if text.prefix else "")


_REF = {Level.PATIENT: "patient_ref", Level.STUDY: "study_ref", Level.SERIES: "series_ref"}


def _relate(home: Level, target: Level, *, where: str | None = None, ids: str | None = None) -> str:
    """A condition at `home` as a condition on alias ``e`` of `target`.

    The condition is `where` (over alias ``{a}`` of `home`'s table) or `ids` (a SELECT of
    row ids at `home`). Ancestors match their descendants; descendants make their ancestors
    match.
    """
    table = _TABLE[home]
    if where is not None:
        source = f"FROM {table} x WHERE {where.format(a='x')}"
    else:
        assert ids is not None
        source = f"FROM {table} x WHERE x.id IN ({ids})"
    if home is target:
        return where.format(a="e") if where is not None else f"e.id IN ({ids})"
    if home.depth < target.depth:  # an ancestor's attribute
        ancestors = ids if ids is not None else f"SELECT x.id {source}"
        if home is Level.PATIENT and target is not Level.STUDY:
            return f"e.study_ref IN (SELECT id FROM studies WHERE patient_ref IN ({ancestors}))"
        return f"e.{_REF[home]} IN ({ancestors})"
    # a descendant's attribute: its ancestor at the target level matches
    if target is Level.SERIES:  # home: instance
        return f"e.id IN (SELECT x.series_ref {source})"
    if home is Level.STUDY:  # target: patient
        studies = ids if ids is not None else f"SELECT x.id {source}"
    else:
        studies = f"SELECT x.study_ref {source}"
    if target is Level.STUDY:
        return f"e.id IN ({studies})"
    return f"e.id IN (SELECT patient_ref FROM studies WHERE id IN ({studies}))"


class _Compiler:
    def __init__(self, target: Level) -> None:
        self.target = target
        self.params: Params = []

    def compile(self, query: Query) -> str:
        if isinstance(query, And):
            if not query.items:
                return "1"
            return "(" + " AND ".join(self.compile(item) for item in query.items) + ")"
        if isinstance(query, Or):
            if not query.items:
                return "0"
            return "(" + " OR ".join(self.compile(item) for item in query.items) + ")"
        if isinstance(query, Not):
            return f"NOT {self.compile(query.item)}"
        if isinstance(query, Text):
            return self._text(query)
        return self._field(query)

    def _field(self, query: Match | Wildcard | Range | AnyOf) -> str:
        keyword = query.field
        numeric = kind_of_keyword(keyword) in NUMERIC_KINDS
        column = _COLUMNS.get(keyword)
        if column is not None:
            home, expr = column
            condition, params = _condition(expr, numeric, query)
            self.params.extend(params)
            return _relate(home, self.target, where=f"({condition})")
        home = level_of_keyword(keyword)
        if home is Level.INSTANCE:
            raise InvalidQuery(
                f"{keyword} cannot be searched (instance attributes that can: "
                f"{', '.join(sorted(INSTANCE_COLUMNS))})"
            )
        tag = tag_of_keyword(keyword)
        value_column = "num" if numeric else "text"
        condition, params = _condition(value_column, numeric, query)
        if numeric:
            condition = f"num IS NOT NULL AND {condition}"
        code = _CODE[home]
        if home is Level.SERIES and self.target.depth < home.depth:
            home, code = Level.STUDY, _ROLLUP  # the study's roll-up of its series' values
        self.params.extend([code, tag, *params])
        ids = f"SELECT owner FROM attrs WHERE level = ? AND tag = ? AND {condition}"
        return _relate(home, self.target, ids=ids)

    def _text(self, query: Text) -> str:
        phrase = _fts_phrase(query)
        if phrase is None:
            return "0"
        parts = []
        for home, fts in _FTS.items():
            self.params.append(phrase)
            ids = f"SELECT rowid FROM {fts} WHERE {fts} MATCH ?"
            parts.append(_relate(home, self.target, ids=ids))
        return "(" + " OR ".join(parts) + ")"


# --- the index -------------------------------------------------------------------------------


# SQLite's own page cache per connection. The index processor's upserts revisit the same
# b-tree pages and get the larger one; a reader's pages come from the OS page cache (pread)
# on a miss, which at 1M instances kept a study search at a few milliseconds.
WRITER_CACHE_BYTES = 16 << 20
READER_CACHE_BYTES = 4 << 20


def _add_study_docs(conn: sqlite3.Connection) -> None:
    """Version 1 -> 2: ``studies.doc``, built from ``docs`` (0.36 s for 5,000 studies, the
    100,000 instances of the bench's layout). Runs in the transaction that sets the version,
    so a version 1 index never has the column."""
    conn.execute("ALTER TABLE studies ADD COLUMN doc TEXT")
    last = 0
    while True:
        rows = conn.execute(
            f"{_STUDY_DOCS} WHERE e.id > ? ORDER BY e.id LIMIT 5000", (last,)
        ).fetchall()
        if not rows:
            return
        conn.executemany(
            "UPDATE studies SET doc = ? WHERE id = ?",
            [(_study_doc(patient_doc, study_doc), study) for study, patient_doc, study_doc in rows],
        )
        last = rows[-1][0]


class EmbeddedStudyIndex(StudyIndex):
    """The SQLite search index under `directory` (``<data_dir>/index``).

    No connection maps the file by default (`mmap_bytes` 0): mapped pages count in the RSS of
    every process that touches them, so readers that mapped 256 MiB each made the API's and the
    ingest's RSS grow with the index (file-backed 40 -> 89 MB from 10k to 100k instances in the
    benchmark). Each connection's page cache is bounded by `cache_bytes` instead.
    """

    def __init__(
        self,
        directory: Path,
        *,
        busy_timeout: float = 30.0,
        mmap_bytes: int = 0,
        cache_bytes: int = WRITER_CACHE_BYTES,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / INDEX_FILE
        self.busy_timeout = busy_timeout
        self.mmap_bytes = mmap_bytes
        self.cache_bytes = cache_bytes
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._written = 0  # instances upserted since the planner statistics were refreshed
        self._analyze_at = ANALYZE_FIRST
        if self._conn().execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            with self._write() as conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                for statement in _SCHEMA.split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
                if version == 1:
                    _add_study_docs(conn)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # connections and transactions

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise IndexerError(f"the index {self.path} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(f"PRAGMA cache_size = {-(int(self.cache_bytes) >> 10)}")  # in KiB
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute(f"PRAGMA mmap_size = {int(self.mmap_bytes)}")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            if not conn.in_transaction:
                conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            transient = _transient(exc) if isinstance(exc, sqlite3.OperationalError) else None
            if transient is not None:
                raise transient from exc
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            conn.execute("BEGIN")
            yield conn
        except sqlite3.OperationalError as exc:
            transient = _transient(exc)
            if transient is not None:
                raise transient from exc
            raise
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    # writing

    def upsert(self, events: Sequence[MetadataExtracted]) -> None:
        if not events:
            return
        with self._write() as conn:
            writer = _BatchWriter(conn)
            writer.write(events)
            writer.finish()
        self._written += len(events)
        if self._written >= self._analyze_at:
            self._analyze()

    def _analyze(self) -> None:
        """Refresh the query planner's statistics (sampled: tens of ms at a million instances).

        Without them SQLite scans a namespace instead of looking up the few rows that an
        attribute matches (65 ms instead of 0.2 ms for a PatientID at a million instances).
        They are refreshed as the index grows by a quarter, and once after each start.
        """
        with self._write() as conn:
            conn.execute(f"PRAGMA analysis_limit = {ANALYZE_ROWS}")
            conn.execute("ANALYZE")
            (instances,) = conn.execute("SELECT count(*) FROM instances").fetchone()
        self._written = 0
        self._analyze_at = max(ANALYZE_FIRST, instances // 4)

    def clear(self, namespace: Namespace) -> None:
        ns = Namespace(namespace).value
        with self._write() as conn:
            for level, fts in _FTS.items():
                table = _TABLE[level]
                conn.execute(
                    f"DELETE FROM attrs WHERE level = ? AND owner IN "
                    f"(SELECT id FROM {table} WHERE ns = ?)",
                    (_CODE[level], ns),
                )
                conn.execute(
                    f"DELETE FROM {fts} WHERE rowid IN (SELECT id FROM {table} WHERE ns = ?)",
                    (ns,),
                )
                conn.execute(
                    f"DELETE FROM docs WHERE level = ? AND owner IN "
                    f"(SELECT id FROM {table} WHERE ns = ?)",
                    (_CODE[level], ns),
                )
            conn.execute(
                "DELETE FROM attrs WHERE level = ? AND owner IN "
                "(SELECT id FROM studies WHERE ns = ?)",
                (_ROLLUP, ns),
            )
            conn.execute(
                "DELETE FROM instance_data WHERE id IN (SELECT id FROM instances WHERE ns = ?)",
                (ns,),
            )
            for table in ("instances", "series", "studies", "patients"):
                conn.execute(f"DELETE FROM {table} WHERE ns = ?", (ns,))

    # reading

    def counts(self, namespace: Namespace) -> dict[Level, int]:
        ns = Namespace(namespace).value
        with self._read() as conn:
            (patients,) = conn.execute(
                "SELECT count(*) FROM patients WHERE ns = ?", (ns,)
            ).fetchone()
            studies, series, instances = conn.execute(  # the studies' exact counts: no scan
                "SELECT count(*), coalesce(sum(n_series), 0), coalesce(sum(n_instances), 0) "
                "FROM studies WHERE ns = ?",
                (ns,),
            ).fetchone()
        return {
            Level.PATIENT: patients,
            Level.STUDY: studies,
            Level.SERIES: series,
            Level.INSTANCE: instances,
        }

    def search(self, request: SearchRequest) -> SearchResult:
        level = request.level
        compiler = _Compiler(level)
        where = ["e.ns = ?"]
        params: Params = [request.namespace.value]
        if request.study_uid is not None:
            if level is Level.STUDY:
                where.append("e.study_uid = ?")
            else:
                where.append(
                    "e.study_ref = (SELECT id FROM studies WHERE ns = ? AND study_uid = ?)"
                )
                params.append(request.namespace.value)
            params.append(request.study_uid)
        if request.series_uid is not None:
            where.append("e.series_ref = (SELECT id FROM series WHERE ns = ? AND series_uid = ?)")
            params.extend([request.namespace.value, request.series_uid])
        where.append(compiler.compile(request.query))
        params.extend(compiler.params)
        order = self._order(request)
        table = _TABLE[level]
        condition = " AND ".join(where)
        with self._read() as conn:
            total = conn.execute(
                f"SELECT count(*) FROM {table} e WHERE {condition}", params
            ).fetchone()[0]
            if request.limit == 0 or request.offset >= total:
                return SearchResult(total=total)
            ids = [
                rowid
                for (rowid,) in conn.execute(
                    f"SELECT e.id FROM {table} e WHERE {condition} ORDER BY {order} "
                    "LIMIT ? OFFSET ?",
                    [*params, request.limit, request.offset],
                )
            ]
            wanted = self._wanted(request)
            results = self._documents(conn, level, ids, wanted)
        return SearchResult(total=total, results=results)

    @staticmethod
    def _order(request: SearchRequest) -> str:
        if not request.sort:
            return _DEFAULT_ORDER[request.level]
        parts = []
        for key in request.sort:
            keyword = key.keyword
            expr = _SORT_COLUMNS[request.level].get(keyword)
            if expr is None and keyword in _COLUMNS and _COLUMNS[keyword][0] is request.level:
                expr = _COLUMNS[keyword][1].format(a="e")
            if expr is None:
                tag = tag_of_keyword(keyword)
                if tag is None or level_of_keyword(keyword) is not request.level:
                    raise InvalidQuery(
                        f"results at the {request.level} level cannot be sorted by {keyword[:80]!r}"
                    )
                value = "num" if kind_of_keyword(keyword) in NUMERIC_KINDS else "text"
                expr = (
                    f"(SELECT min({value}) FROM attrs WHERE level = {_CODE[request.level]} "
                    f"AND owner = e.id AND tag = {tag})"
                )
            direction = "DESC" if key.descending else "ASC"
            parts.append(f"{expr} IS NULL, {expr} {direction}")
        return ", ".join([*parts, "e.id"])

    @staticmethod
    def _wanted(request: SearchRequest) -> _Wanted:
        return wanted_tags(request)

    def _documents(
        self,
        conn: sqlite3.Connection,
        level: Level,
        ids: list[int],
        wanted: _Wanted,
    ) -> list[dict[str, Any]]:
        marks = ", ".join("?" * len(ids))
        docs: dict[int, dict[str, Any]] = {}
        if level is Level.PATIENT:
            for rowid, doc, n_studies, n_series, n_instances in conn.execute(
                "SELECT e.id, d.doc, count(s.id), coalesce(sum(s.n_series), 0), "
                "coalesce(sum(s.n_instances), 0) FROM patients e "
                "JOIN docs d ON d.level = 0 AND d.owner = e.id "
                f"LEFT JOIN studies s ON s.patient_ref = e.id WHERE e.id IN ({marks}) "
                "GROUP BY e.id",
                ids,
            ):
                merged = _loads(doc)
                merged[keyword_hex("NumberOfPatientRelatedStudies")] = _number_element(n_studies)
                merged[keyword_hex("NumberOfPatientRelatedSeries")] = _number_element(n_series)
                merged[keyword_hex("NumberOfPatientRelatedInstances")] = _number_element(
                    n_instances
                )
                docs[rowid] = merged
        elif level is Level.STUDY:
            for rowid, doc, n_series, n_instances, modalities, sop_classes in conn.execute(
                "SELECT e.id, e.doc, e.n_series, e.n_instances, e.modalities, e.sop_classes "
                f"FROM studies e WHERE e.id IN ({marks})",
                ids,
            ):
                if doc is None:  # not expected: every batch fills the docs of its studies
                    found = conn.execute(f"{_STUDY_DOCS} WHERE e.id = ?", (rowid,)).fetchone()
                    if found is None:
                        continue
                    doc = _study_doc(found[1], found[2])
                merged = _loads(doc)
                merged[keyword_hex("NumberOfStudyRelatedSeries")] = _number_element(n_series)
                merged[keyword_hex("NumberOfStudyRelatedInstances")] = _number_element(n_instances)
                merged[keyword_hex("ModalitiesInStudy")] = _list_element("CS", _loads(modalities))
                merged[keyword_hex("SOPClassesInStudy")] = _list_element("UI", _loads(sop_classes))
                merged[keyword_hex("InstanceAvailability")] = _ONLINE
                docs[rowid] = merged
            if wanted != "all":
                self._from_series(conn, ids, docs, wanted)
        elif level is Level.SERIES:
            for rowid, p_doc, s_doc, e_doc, n_instances in conn.execute(
                "SELECT e.id, p.doc, s.doc, d.doc, e.n_instances FROM series e "
                "JOIN studies st ON st.id = e.study_ref "
                "JOIN docs d ON d.level = 2 AND d.owner = e.id "
                "JOIN docs s ON s.level = 1 AND s.owner = e.study_ref "
                "JOIN docs p ON p.level = 0 AND p.owner = st.patient_ref "
                f"WHERE e.id IN ({marks})",
                ids,
            ):
                merged = {**_loads(p_doc), **_loads(s_doc), **_loads(e_doc)}
                merged[keyword_hex("NumberOfSeriesRelatedInstances")] = _number_element(n_instances)
                merged[keyword_hex("InstanceAvailability")] = _ONLINE
                docs[rowid] = merged
        else:
            for rowid, compressed in conn.execute(
                f"SELECT id, dicom_json FROM instance_data WHERE id IN ({marks})", ids
            ):
                merged = _loads(zlib.decompress(compressed))
                merged[keyword_hex("InstanceAvailability")] = _ONLINE
                docs[rowid] = merged
        return [_select(docs[rowid], wanted) for rowid in ids if rowid in docs]

    @staticmethod
    def _from_series(
        conn: sqlite3.Connection,
        ids: list[int],
        docs: dict[int, dict[str, Any]],
        wanted: tuple[frozenset[str], frozenset[str]],
    ) -> None:
        """Requested series attributes of studies, from the first series that has them."""
        missing = series_tags(wanted)
        if not missing:
            return
        marks = ", ".join("?" * len(ids))
        for study, doc in conn.execute(
            "SELECT s.study_ref, d.doc FROM series s JOIN docs d ON d.level = 2 AND d.owner = s.id "
            f"WHERE s.study_ref IN ({marks}) "
            "ORDER BY s.series_number IS NULL, s.series_number, s.id",
            ids,
        ):
            series_doc = _loads(doc)
            target = docs[study]
            for tag in missing:
                if tag not in target and tag in series_doc:
                    target[tag] = series_doc[tag]

    def get_instance(self, namespace: Namespace, sop_uid: str) -> InstanceRecord | None:
        with self._read() as conn:
            records = self._instances(
                conn, "i.ns = ? AND i.sop_uid = ?", [Namespace(namespace).value, sop_uid], True
            )
        return records[0] if records else None

    def instances(
        self,
        namespace: Namespace,
        study_uid: str,
        series_uid: str | None = None,
        *,
        with_json: bool = True,
    ) -> list[InstanceRecord]:
        where = "st.ns = ? AND st.study_uid = ?"
        params: Params = [Namespace(namespace).value, study_uid]
        if series_uid is not None:
            where += " AND se.series_uid = ?"
            params.append(series_uid)
        with self._read() as conn:
            return self._instances(conn, where, params, with_json)

    @staticmethod
    def _instances(
        conn: sqlite3.Connection, where: str, params: Params, with_json: bool
    ) -> list[InstanceRecord]:
        json_column = "j.dicom_json" if with_json else "NULL"
        rows = conn.execute(
            "SELECT i.ns, st.study_uid, se.series_uid, i.sop_uid, i.sop_class, "
            f"i.transfer_syntax, j.blob, i.instance_number, {json_column} FROM instances i "
            "JOIN instance_data j ON j.id = i.id "
            "JOIN series se ON se.id = i.series_ref JOIN studies st ON st.id = i.study_ref "
            f"WHERE {where} ORDER BY se.series_number IS NULL, se.series_number, se.id, "
            "i.instance_number IS NULL, i.instance_number, i.id",
            params,
        )
        return [
            InstanceRecord(
                namespace=Namespace(ns),
                study_uid=study_uid,
                series_uid=series_uid,
                sop_uid=sop_uid,
                sop_class_uid=sop_class,
                transfer_syntax_uid=transfer_syntax,
                blob=BlobRef.model_validate_json(blob),
                instance_number=instance_number,
                dicom_json=_loads(zlib.decompress(compressed)) if compressed else {},
            )
            for (
                ns,
                study_uid,
                series_uid,
                sop_uid,
                sop_class,
                transfer_syntax,
                blob,
                instance_number,
                compressed,
            ) in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


def _transient(exc: sqlite3.OperationalError) -> Exception | None:
    """The typed transient error for an SQLite failure, or None for any other failure."""
    message = str(exc).lower()
    if "locked" in message or "busy" in message:
        return BackPressure(f"the search index is busy ({exc}); retry", retry_after=1.0)
    if "disk" in message or "full" in message or "i/o" in message:
        return BackendUnavailable(f"the search index cannot be written ({exc})")
    return None
