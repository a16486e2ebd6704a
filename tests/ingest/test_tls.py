"""DICOM TLS: a TLS client works on the TLS port, a plain one is refused, the server goes on."""

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from dicomflow.ingest.exceptions import AccessConfigError
from dicomflow.ingest.receiver import DurableReceiver
from dicomflow.ingest.scp import start_scp, tls_context
from dicomflow.kernel.backends import open_bus, open_spool
from dicomflow.kernel.events import Topic
from dicomflow.kernel.settings import Settings
from tests.conftest import Pki, free_port, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_settings(settings: Settings, pki: Pki, mutual: bool = False) -> Settings:
    return settings.model_copy(
        update={
            "dicom_tls_port": free_port(),
            "dicom_tls_certificate": str(pki.server_certificate),
            "dicom_tls_key": str(pki.server_key),
            "dicom_tls_ca": str(pki.ca) if mutual else "",
        }
    )


class Scp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bus = open_bus(settings)
        self.receiver = DurableReceiver(open_spool(settings), self.bus, settings.max_object_bytes)
        self.server = start_scp(settings, self.receiver)

    def close(self) -> None:
        self.server.shutdown()
        self.receiver.close()
        self.bus.close()


@pytest.fixture
def scp_factory() -> Iterator[list[Scp]]:
    started: list[Scp] = []
    yield started
    for scp in started:
        scp.close()


def client_context(pki: Pki, with_certificate: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if with_certificate:
        context.load_cert_chain(str(pki.client_certificate), str(pki.client_key))
    return context


def associate(port: int, context: ssl.SSLContext | None) -> Association:
    ae = AE(ae_title="TLSSCU")
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    tls_args = (context, "127.0.0.1") if context is not None else None
    return ae.associate("127.0.0.1", port, ae_title="DICOMFLOW", tls_args=tls_args)


def store_and_echo(assoc: Association, ds: Dataset) -> None:
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == 0
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()


def test_a_tls_client_works_and_a_plain_client_is_refused(
    settings: Settings, pki: Pki, scp_factory: list[Scp], ct_instance: Dataset
) -> None:
    scp = Scp(tls_settings(settings, pki))
    scp_factory.append(scp)
    tls_port = scp.settings.dicom_tls_port
    store_and_echo(associate(tls_port, client_context(pki)), ct_instance)

    plain = associate(tls_port, None)  # a plain A-ASSOCIATE-RQ to the TLS port
    assert not plain.is_established
    # A client that connects and never speaks holds only its own thread.
    with socket.create_connection(("127.0.0.1", tls_port)):
        store_and_echo(associate(tls_port, client_context(pki)), ct_instance)
        store_and_echo(associate(scp.settings.dicom_port, None), ct_instance)  # plain port
    assert len(scp.bus.read(scp.bus.topic(Topic.RECEIVED))) == 3


def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    settings: Settings, pki: Pki, scp_factory: list[Scp], ct_instance: Dataset, tmp_path: Path
) -> None:
    scp = Scp(tls_settings(settings, pki, mutual=True))
    scp_factory.append(scp)
    tls_port = scp.settings.dicom_tls_port
    assert not associate(tls_port, client_context(pki)).is_established  # no certificate
    stranger = make_pki(tmp_path / "other")  # a certificate from another CA
    other = client_context(pki)
    other.load_cert_chain(str(stranger.client_certificate), str(stranger.client_key))
    assert not associate(tls_port, other).is_established
    assoc = associate(tls_port, client_context(pki, with_certificate=True))
    store_and_echo(assoc, ct_instance)


def test_tls_settings_are_checked(settings: Settings, pki: Pki, tmp_path: Path) -> None:
    assert tls_context(settings) is None  # port 0: no TLS listener
    context = tls_context(tls_settings(settings, pki))
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    mutual = tls_context(tls_settings(settings, pki, mutual=True))
    assert mutual is not None and mutual.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(AccessConfigError, match="DICOMFLOW_DICOM_TLS_CERTIFICATE"):
        tls_context(settings.model_copy(update={"dicom_tls_port": 2762}))
    missing = tls_settings(settings, pki).model_copy(
        update={"dicom_tls_key": str(tmp_path / "nowhere.key")}
    )
    with pytest.raises(AccessConfigError, match="cannot be loaded"):
        tls_context(missing)
