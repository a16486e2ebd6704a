"""The bench's C-FIND client against pynetdicom's C-FIND SCP (the reference implementation)."""

from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from dicomflow.bench.clients import study_identifier
from dicomflow.bench.findscu import FindError, FindNotSupported, RawFindClient


def _serve(contexts: list[str], answers: list[tuple[int, Dataset | None]]) -> tuple[object, int]:
    def on_find(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        assert event.identifier.PatientID == "P1"
        yield from answers

    ae = AE(ae_title="REFSCP")
    for context in contexts:
        ae.add_supported_context(context, ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)]
    )
    return server, server.socket.getsockname()[1]  # type: ignore[attr-defined]


def _match(n: int) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = f"1.2.3.{n}"
    return ds


@pytest.mark.parametrize("matches", [0, 1, 5])
def test_counts_the_matches_of_each_query(matches: int) -> None:
    server, port = _serve(
        [StudyRootQueryRetrieveInformationModelFind],
        [*((0xFF00, _match(n)) for n in range(matches)), (0x0000, None)],
    )
    client = RawFindClient(port, "REFSCP", "BENCHTEST")
    try:
        for _ in range(3):  # one association, many queries
            seconds, found = client.find(study_identifier({"PatientID": "P1"}))
            assert found == matches and 0 < seconds < 30
    finally:
        client.close()
        server.shutdown()  # type: ignore[attr-defined]


def test_a_failure_status_is_an_error() -> None:
    server, port = _serve([StudyRootQueryRetrieveInformationModelFind], [(0xC000, None)])
    client = RawFindClient(port, "REFSCP", "BENCHTEST")
    try:
        with pytest.raises(FindError, match="0xC000"):
            client.find(study_identifier({"PatientID": "P1"}))
    finally:
        client.close()
        server.shutdown()  # type: ignore[attr-defined]


def test_a_peer_without_a_find_scp_is_reported_not_supported() -> None:
    server, port = _serve([Verification], [])
    try:
        with pytest.raises(FindNotSupported):
            RawFindClient(port, "REFSCP", "BENCHTEST")
    finally:
        server.shutdown()  # type: ignore[attr-defined]
