"""The AE title access policy: parsing of the settings and the answers it gives."""

import pytest
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicomflow.ingest.access import (
    AccessGuard,
    AccessPolicy,
    DimseService,
    parse_ae_rules,
    parse_move_destinations,
)
from dicomflow.ingest.exceptions import AccessConfigError
from dicomflow.kernel.settings import Settings

STORE, FIND, MOVE, GET = (
    str(CTImageStorage),
    str(StudyRootQueryRetrieveInformationModelFind),
    str(StudyRootQueryRetrieveInformationModelMove),
    str(StudyRootQueryRetrieveInformationModelGet),
)
ECHO = str(Verification)


def policy(**settings: str) -> AccessPolicy:
    return AccessPolicy.from_settings(Settings(**settings))  # type: ignore[arg-type]


def test_empty_settings_allow_anyone_and_say_so() -> None:
    open_policy = policy()
    assert open_policy.may_associate("ANYONE", "203.0.113.9")
    assert all(open_policy.may_use(s, "ANYONE", "::1") for s in DimseService)
    assert open_policy.may_move_to("ANYONE", "PACS2")
    assert "any calling AE" in open_policy.warnings()[0]
    assert "any calling AE" in policy(dicom_allowed_aes="*").warnings()[0]
    assert policy(dicom_allowed_aes="A").warnings() == []


def test_titles_hosts_and_networks() -> None:
    rules = parse_ae_rules(" CT1 , WS@192.0.2.7,*@10.0.0.0/8, V6@2001:db8::/32 ", "X")
    assert rules is not None
    access = AccessPolicy(associate=rules)
    assert access.may_associate("CT1", "198.51.100.1")
    assert access.may_associate("WS", "192.0.2.7")
    assert access.may_associate("WS", "::ffff:192.0.2.7")  # IPv4-mapped, as a dual-stack socket
    assert not access.may_associate("WS", "192.0.2.8")
    assert access.may_associate("WHOEVER", "10.1.2.3")
    assert not access.may_associate("WHOEVER", "11.1.2.3")
    assert access.may_associate("V6", "2001:db8::1")
    assert not access.may_associate("V6", "192.0.2.7")
    assert not access.may_associate("CT2", "127.0.0.1")
    assert not access.may_associate("ct1", "127.0.0.1")  # AE titles are case-sensitive


@pytest.mark.parametrize(
    "text",
    ["WAY-TOO-LONG-AE-TITLE", "A\\B", "WS@not-an-ip", "WS@192.0.2.0/99"],
)
def test_malformed_allowlists_are_refused_with_the_setting_named(text: str) -> None:
    with pytest.raises(AccessConfigError, match="DICOMFLOW_DICOM_FIND_AES"):
        policy(dicom_find_aes=text)


def test_each_service_list_narrows_the_associate_list() -> None:
    access = policy(
        dicom_allowed_aes="CT,WS,ADMIN",
        dicom_store_aes="CT,ADMIN",
        dicom_retrieve_aes="WS,ADMIN",
    )
    assert access.may_use(DimseService.STORE, "CT", "h")
    assert not access.may_use(DimseService.STORE, "WS", "h")
    assert access.may_use(DimseService.FIND, "CT", "h")  # empty list: every allowed AE
    assert access.may_use(DimseService.MOVE, "WS", "h")
    assert access.may_use(DimseService.GET, "WS", "h")
    assert not access.may_use(DimseService.GET, "CT", "h")
    assert access.may_use(DimseService.ECHO, "CT", "h")
    # A service list cannot let in an AE that may not associate.
    assert not policy(dicom_allowed_aes="CT", dicom_store_aes="OTHER").may_use(
        DimseService.STORE, "OTHER", "h"
    )


def test_move_destinations() -> None:
    assert parse_move_destinations("") is None
    mapping = parse_move_destinations("WS1=PACS2, VIEWER ; WS2=* ; *=ARCHIVE")
    assert mapping == {"WS1": frozenset({"PACS2", "VIEWER"}), "WS2": None, "*": {"ARCHIVE"}}
    access = AccessPolicy(move_destinations=mapping)
    assert access.may_move_to("WS1", "VIEWER")
    assert not access.may_move_to("WS1", "ARCHIVE")
    assert access.may_move_to("WS2", "ANYTHING")
    assert access.may_move_to("WS3", "ARCHIVE")
    assert not access.may_move_to("WS3", "PACS2")
    assert not AccessPolicy(move_destinations={"WS1": None}).may_move_to("WS9", "PACS2")
    for bad in ("WS1", "WS1=A;WS1=B", "WS1=WAY-TOO-LONG-AE-TITLE"):
        with pytest.raises(AccessConfigError, match="DICOMFLOW_DICOM_MOVE_DESTINATIONS"):
            parse_move_destinations(bad)


def test_association_refusals() -> None:
    access = policy(
        dicom_allowed_aes="CT,WS",
        dicom_store_aes="CT",
        dicom_find_aes="WS",
        dicom_retrieve_aes="WS",
    )
    assert access.association_refusal("X", "h", [ECHO]) == "not in DICOMFLOW_DICOM_ALLOWED_AES"
    assert access.association_refusal("WS", "h", [ECHO]) is None  # Verification alone
    assert access.association_refusal("WS", "h", [STORE, ECHO]) == "may not use C-STORE"
    assert access.association_refusal("CT", "h", [STORE]) is None
    assert access.association_refusal("CT", "h", [FIND, MOVE]) == "may not use C-FIND/C-MOVE"
    # Mixed: accepted; each operation is then checked on its own (0x0124).
    assert access.association_refusal("WS", "h", [STORE, FIND]) is None


def test_the_guard_logs_and_reports_every_refusal(caplog: pytest.LogCaptureFixture) -> None:
    reported: list[tuple[str, str, str, int, str]] = []

    def failing(*args: object) -> None:
        raise RuntimeError("the audit trail is down")

    guard = AccessGuard(policy(dicom_allowed_aes="CT"), on_denied=lambda *a: reported.append(a))
    assert guard.admit("CT", "192.0.2.1", 104, [STORE])
    assert not guard.admit("X", "192.0.2.1", 104, [STORE])
    assert not guard.permits(DimseService.FIND, "X", "192.0.2.1", 104)
    assert reported == [
        ("association", "X", "192.0.2.1", 104, "not in DICOMFLOW_DICOM_ALLOWED_AES"),
        ("C-FIND", "X", "192.0.2.1", 104, "not in DICOMFLOW_DICOM_ALLOWED_AES"),
    ]
    assert "association refused for X from 192.0.2.1:104" in caplog.text
    # A refusal stands even when it cannot be reported.
    assert not AccessGuard(policy(dicom_allowed_aes="CT"), on_denied=failing).admit(
        "X", "h", 1, [ECHO]
    )
