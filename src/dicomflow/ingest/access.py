"""Who may do what over DIMSE: the calling AE title allowlists of the SCP.

One `AccessPolicy`, built from the settings, answers for both acceptors (the storage fast path
and pynetdicom, plain and TLS) and every service:

- ``DICOMFLOW_DICOM_ALLOWED_AES``: who may associate at all. An association from another AE is
  rejected (rejected-permanent, DICOM UL service-user, calling-AE-title-not-recognized).
- ``DICOMFLOW_DICOM_STORE_AES``, ``_FIND_AES``, ``_RETRIEVE_AES`` (C-MOVE and C-GET): who may
  use each service; empty = every AE that may associate. An association that proposes only
  services its AE may not use is rejected the same way (Verification alone is always allowed);
  an operation on a mixed association answers 0x0124 Refused: Not Authorized.
- ``DICOMFLOW_DICOM_MOVE_DESTINATIONS``: which registered destinations each AE may C-MOVE to,
  ``WS1=PACS2,VIEWER;WS2=*;*=ARCHIVE`` (refused: 0xA801 Move Destination unknown).

An entry is ``AE`` (from anywhere), ``AE@192.0.2.7`` or ``AE@192.0.2.0/24`` (from that address or
network only); ``*`` stands for any AE title (``*@10.0.0.0/8``: any AE of that network).
"""

import ipaddress
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicomflow.ingest.exceptions import AccessConfigError
from dicomflow.kernel.settings import Settings

log = logging.getLogger(__name__)

ANY = "*"

# A-ASSOCIATE-RJ (result, source, reason) of PS3.8 9.3.4.
REJECT_NOT_RECOGNIZED = (1, 1, 3)  # rejected-permanent, service-user, calling AE not recognized
REJECT_LOCAL_LIMIT = (2, 3, 2)  # rejected-transient, service-provider (presentation), limit

# DIMSE statuses of a refusal (PS3.7 C.5.21 and PS3.4 C.4.2.1.5).
NOT_AUTHORIZED = 0x0124
MOVE_DESTINATION_UNKNOWN = 0xA801


class DimseService(StrEnum):
    """A DIMSE service the SCP offers, named as in PS3.7."""

    ECHO = "C-ECHO"
    STORE = "C-STORE"
    FIND = "C-FIND"
    MOVE = "C-MOVE"
    GET = "C-GET"


_SERVICE_OF_SYNTAX: dict[str, DimseService] = {
    str(Verification): DimseService.ECHO,
    str(PatientRootQueryRetrieveInformationModelFind): DimseService.FIND,
    str(StudyRootQueryRetrieveInformationModelFind): DimseService.FIND,
    str(PatientRootQueryRetrieveInformationModelMove): DimseService.MOVE,
    str(StudyRootQueryRetrieveInformationModelMove): DimseService.MOVE,
    str(PatientRootQueryRetrieveInformationModelGet): DimseService.GET,
    str(StudyRootQueryRetrieveInformationModelGet): DimseService.GET,
}


def service_of(abstract_syntax: str) -> DimseService:
    """The service of a presentation context the SCP supports (storage SOP classes otherwise)."""
    return _SERVICE_OF_SYNTAX.get(abstract_syntax.strip(), DimseService.STORE)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AeRule:
    """One allowlist entry: an AE title (or any) from an address or network (or anywhere)."""

    title: str
    network: Network | None = None

    def matches(self, calling_ae: str, host: str) -> bool:
        if self.title not in (ANY, calling_ae.strip()):
            return False
        if self.network is None:
            return True
        try:
            address = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.version == self.network.version and address in self.network

    def __str__(self) -> str:
        return self.title if self.network is None else f"{self.title}@{self.network}"


def _check_title(title: str, setting: str) -> str:
    title = title.strip()
    if title == ANY:
        return title
    if not 0 < len(title) <= 16 or "\\" in title or not title.isprintable():
        raise AccessConfigError(
            f"{setting}: {title[:40]!r} is not an AE title (1-16 printable characters, no "
            "backslash) nor '*'"
        )
    return title


def parse_ae_rules(text: str, setting: str) -> tuple[AeRule, ...] | None:
    """A comma-separated allowlist; None (anyone) when empty. Raises AccessConfigError."""
    rules: list[AeRule] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        title, at, host = item.rpartition("@") if "@" in item else (item, "", "")
        network: Network | None = None
        if at:
            try:
                network = ipaddress.ip_network(host.strip().strip("[]"), strict=False)
            except ValueError:
                raise AccessConfigError(
                    f"{setting}: {item[:60]!r}: {host[:40]!r} is not an IP address or network "
                    "(AE@192.0.2.7 or AE@192.0.2.0/24)"
                ) from None
        rules.append(AeRule(_check_title(title, setting), network))
    return tuple(rules) if rules else None


def parse_move_destinations(text: str) -> dict[str, frozenset[str] | None] | None:
    """``CALLING=DEST1,DEST2;OTHER=*`` as {calling AE: destinations (None = any)}; None if empty."""
    setting = "DICOMFLOW_DICOM_MOVE_DESTINATIONS"
    mapping: dict[str, frozenset[str] | None] = {}
    for item in (part.strip() for part in text.split(";")):
        if not item:
            continue
        calling, equals, targets = item.partition("=")
        if not equals:
            raise AccessConfigError(
                f"{setting}: {item[:60]!r} is not CALLING=DEST1,DEST2 (e.g. WS1=PACS2,VIEWER)"
            )
        title = _check_title(calling, setting)
        if title in mapping:
            raise AccessConfigError(f"{setting}: {title} is listed twice")
        names = [_check_title(name, setting) for name in targets.split(",") if name.strip()]
        mapping[title] = None if ANY in names else frozenset(names)
    return mapping or None


def _allowed(rules: tuple[AeRule, ...] | None, calling_ae: str, host: str) -> bool:
    return rules is None or any(rule.matches(calling_ae, host) for rule in rules)


@dataclass(frozen=True)
class AccessPolicy:
    """The allowlists of every DIMSE service (None: any calling AE)."""

    associate: tuple[AeRule, ...] | None = None
    store: tuple[AeRule, ...] | None = None
    find: tuple[AeRule, ...] | None = None
    retrieve: tuple[AeRule, ...] | None = None
    move_destinations: dict[str, frozenset[str] | None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "AccessPolicy":
        """The policy of the settings; raises AccessConfigError naming a malformed setting."""
        return cls(
            associate=parse_ae_rules(settings.dicom_allowed_aes, "DICOMFLOW_DICOM_ALLOWED_AES"),
            store=parse_ae_rules(settings.dicom_store_aes, "DICOMFLOW_DICOM_STORE_AES"),
            find=parse_ae_rules(settings.dicom_find_aes, "DICOMFLOW_DICOM_FIND_AES"),
            retrieve=parse_ae_rules(settings.dicom_retrieve_aes, "DICOMFLOW_DICOM_RETRIEVE_AES"),
            move_destinations=parse_move_destinations(settings.dicom_move_destinations),
        )

    def may_associate(self, calling_ae: str, host: str) -> bool:
        return _allowed(self.associate, calling_ae, host)

    def may_use(self, service: DimseService, calling_ae: str, host: str) -> bool:
        """Whether `calling_ae` (from `host`) may use `service` (and may associate at all)."""
        if not self.may_associate(calling_ae, host):
            return False
        rules = {
            DimseService.STORE: self.store,
            DimseService.FIND: self.find,
            DimseService.MOVE: self.retrieve,
            DimseService.GET: self.retrieve,
        }.get(service)
        return _allowed(rules, calling_ae, host)

    def may_move_to(self, calling_ae: str, destination: str) -> bool:
        """Whether `calling_ae` may C-MOVE to the (registered) destination `destination`."""
        if self.move_destinations is None:
            return True
        calling, wanted = calling_ae.strip(), destination.strip()
        allowed = self.move_destinations.get(calling, self.move_destinations.get(ANY, frozenset()))
        return allowed is None or wanted in allowed

    def association_refusal(
        self, calling_ae: str, host: str, abstract_syntaxes: Iterable[str]
    ) -> str | None:
        """Why an association request must be rejected; None if it may be accepted.

        Rejected: an AE that may not associate, or one that proposes only services it may not
        use (Verification alone is allowed to every AE that may associate).
        """
        if not self.may_associate(calling_ae, host):
            return "not in DICOMFLOW_DICOM_ALLOWED_AES"
        services = {service_of(syntax) for syntax in abstract_syntaxes} - {DimseService.ECHO}
        if services and not any(self.may_use(s, calling_ae, host) for s in services):
            names = "/".join(sorted(services))
            return f"may not use {names}"
        return None

    def warnings(self) -> list[str]:
        """What the policy leaves open, to log at start."""
        if self.associate is None or any(
            rule.title == ANY and rule.network is None for rule in self.associate
        ):
            return [
                "the DICOM SCP accepts associations from any calling AE title: set "
                "DICOMFLOW_DICOM_ALLOWED_AES (and _STORE_AES, _FIND_AES, _RETRIEVE_AES) to "
                "restrict who may store, query and retrieve"
            ]
        return []


DeniedHook = Callable[[str, str, str, int, str], None]
"""(what was refused, calling AE title, peer host, peer port, reason) of a refusal."""


@dataclass
class AccessGuard:
    """The policy as the acceptors apply it: every refusal is logged and reported.

    `on_denied` (the audit trail's ACCESS_DENIED events) is called for every refusal; if it
    fails the refusal stands and the failure is logged.
    """

    policy: AccessPolicy = field(default_factory=AccessPolicy)
    on_denied: DeniedHook | None = None

    def refuse(self, what: str, calling_ae: str, host: str, port: int, reason: str) -> None:
        # AE title and address only: no patient data in the log.
        log.warning("%s refused for %s from %s:%d: %s", what, calling_ae or "?", host, port, reason)
        if self.on_denied is not None:
            try:
                self.on_denied(what, calling_ae, host, port, reason)
            except Exception:
                log.exception("the refusal of %s for %s could not be recorded", what, calling_ae)

    def admit(
        self, calling_ae: str, host: str, port: int, abstract_syntaxes: Iterable[str]
    ) -> bool:
        """Whether to accept an association request (a refusal is logged and reported)."""
        reason = self.policy.association_refusal(calling_ae, host, abstract_syntaxes)
        if reason is None:
            return True
        self.refuse("association", calling_ae, host, port, reason)
        return False

    def permits(self, service: DimseService, calling_ae: str, host: str, port: int) -> bool:
        """Whether one operation may run (a refusal is logged and reported)."""
        if self.policy.may_use(service, calling_ae, host):
            return True
        if not self.policy.may_associate(calling_ae, host):
            setting = "ALLOWED"
        elif service in (DimseService.MOVE, DimseService.GET):
            setting = "RETRIEVE"
        else:
            setting = service.removeprefix("C-")
        self.refuse(service, calling_ae, host, port, f"not in DICOMFLOW_DICOM_{setting}_AES")
        return False

    def permits_move(self, calling_ae: str, host: str, port: int, destination: str) -> bool:
        """Whether `calling_ae` may C-MOVE to `destination` (a refusal is logged, reported)."""
        if self.policy.may_move_to(calling_ae, destination):
            return True
        self.refuse(
            f"C-MOVE to {destination.strip()}",
            calling_ae,
            host,
            port,
            "destination not allowed by DICOMFLOW_DICOM_MOVE_DESTINATIONS",
        )
        return False
