"""The fuzz targets: where their code is, what to instrument, how much of the budget they get.

This module imports nothing of dicomflow: the worker must import the code under test only
inside atheris' instrumentation (coverage feedback comes from the instrumented modules).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class TargetSpec:
    name: str
    module: str  # defines build_<entry>(workdir) and seeds_<seeds>()
    entry: str
    seeds: str
    about: str
    instrument: tuple[str, ...]  # packages whose coverage guides the fuzzer
    max_len: int  # largest input libFuzzer makes
    weight: float  # share of the execution budget (relative)
    tokens: tuple[bytes, ...] = ()  # a libFuzzer dictionary


_PDU_TOKENS = (
    b"1.2.840.10008.3.1.1.1",
    b"1.2.840.10008.1.1",
    b"1.2.840.10008.1.2",
    b"1.2.840.10008.1.2.1",
    b"1.2.840.10008.5.1.4.1.1.2",
    b"\x01\x00",
    b"\x00\x01",
    b"\x03\x00",
    b"\x04\x00",
    b"\xff\xff\xff\xff",
)
_DATASET_TOKENS = (
    b"\x08\x00\x16\x00",
    b"\x08\x00\x18\x00",
    b"\x20\x00\x0d\x00",
    b"\x20\x00\x0e\x00",
    b"\x08\x00\x05\x00",
    b"\xfe\xff\x00\xe0",
    b"\xfe\xff\x0d\xe0",
    b"\xfe\xff\xdd\xe0",
    b"\xe0\x7f\x10\x00",
    b"\xff\xff\xff\xff",
    b"UI",
    b"SQ",
    b"UN",
    b"OB",
    b"PN",
    b"DICM",
    b"ISO_IR 192",
    b"ISO 2022 IR 87",
)
_QUERY_TOKENS = (
    b" AND ",
    b" OR ",
    b"NOT ",
    b" TO ",
    b"[",
    b"]",
    b"{",
    b"}",
    b":",
    b"*",
    b"?",
    b'"',
    b"\\",
    b"^",
    b"PatientName",
    b"StudyDate",
    b"StudyTime",
    b"AcquisitionDateTime",
    b"StudyInstanceUID",
    b"ModalitiesInStudy",
    b"SeriesNumber",
    b"SliceThickness",
    b"00100010",
    b"includefield=",
    b"limit=",
    b"offset=",
    b"&",
    b"=",
    b"%",
    b"-",
    b",",
)

_INGEST = "fuzz.targets.ingest"
_QUERY = "fuzz.targets.query"
_RECEIVE = ("dicomflow.ingest", "dicomflow.kernel")

TARGETS: dict[str, TargetSpec] = {
    spec.name: spec
    for spec in (
        TargetSpec(
            "fastpath",
            _INGEST,
            "fastpath",
            "streams",
            "raw PDUs into the hand-written C-STORE acceptor (ingest/fastpath.py), whole "
            "associations, store included",
            (*_RECEIVE,),
            16384,
            2.0,
            _PDU_TOKENS,
        ),
        TargetSpec(
            "pynetdicom",
            _INGEST,
            "pynetdicom",
            "streams",
            "raw PDUs through pynetdicom's PDU and DIMSE decoding into scp.py's C-STORE handler",
            (*_RECEIVE, "pynetdicom"),
            16384,
            1.0,
            _PDU_TOKENS,
        ),
        TargetSpec(
            "dataset",
            _INGEST,
            "dataset",
            "datasets",
            "datasets into store_encoded: scan_identity, pydicom fallback, file meta, "
            "DurableReceiver.receive (in-memory spool and bus)",
            (*_RECEIVE, "pydicom"),
            16384,
            2.0,
            _DATASET_TOKENS,
        ),
        TargetSpec(
            "durable",
            _INGEST,
            "durable",
            "datasets",
            "the same with the real spool (fsync'd files) and embedded bus (SQLite)",
            (*_RECEIVE,),
            16384,
            0.05,
            _DATASET_TOKENS,
        ),
        TargetSpec(
            "part10",
            _INGEST,
            "part10",
            "files",
            "Part 10 objects into identity_of_file_bytes (STOW-RS, import), checked against "
            "pydicom",
            (*_RECEIVE, "pydicom"),
            16384,
            1.0,
            _DATASET_TOKENS,
        ),
        TargetSpec(
            "metadata",
            _INGEST,
            "metadata",
            "files",
            "stored objects into the metadata processor (DICOM JSON, search fields, event)",
            ("dicomflow.processors", "dicomflow.indexer.values", "pydicom"),
            16384,
            1.0,
            _DATASET_TOKENS,
        ),
        TargetSpec(
            "lucene",
            _QUERY,
            "lucene",
            "lucene",
            "parse_lucene, then the query run on an embedded index",
            ("dicomflow.indexer", "luqum"),
            8192,
            1.5,
            _QUERY_TOKENS,
        ),
        TargetSpec(
            "qido",
            _QUERY,
            "qido",
            "qido",
            "QIDO-RS requests: query string, Accept and path UIDs into qido_search "
            "(qido_to_query, limit/offset/includefield/fuzzymatching, the embedded index)",
            ("dicomflow.indexer", "dicomflow.api.routes.dicomweb"),
            4096,
            1.5,
            _QUERY_TOKENS,
        ),
        TargetSpec(
            "dicomweb",
            _QUERY,
            "dicomweb",
            "dicomweb",
            "WADO-RS parameters: Accept negotiation, frame lists, window, viewport, quality",
            ("dicomflow.api.routes.dicomweb", "dicomflow.api.rendering"),
            2048,
            1.0,
            (b"multipart/related", b"type=", b"transfer-syntax=", b";q=", b"*/*", b'"'),
        ),
    )
}


def split_budget(total: int, names: list[str]) -> dict[str, int]:
    """Executions per target: `total` shared by weight (at least one execution each)."""
    weights = {name: TARGETS[name].weight for name in names}
    scale = total / sum(weights.values())
    return {name: max(1, round(weight * scale)) for name, weight in weights.items()}
