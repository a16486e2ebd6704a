"""Shared fixtures: settings on a temporary data directory, synthetic datasets, free ports."""

import ipaddress
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from pydicom.dataset import Dataset

from dicomflow.kernel.settings import Settings
from dicomflow.synthetic import PatientSpec, iter_study_tree, make_instance

# The admin token of the test servers (DICOMFLOW_ADMIN_TOKEN): tests authenticate with it, as
# automation does; auth is never turned off except by the tests of that dev setting.
ADMIN_TOKEN = "test-admin-token-" + "0123456789abcdef" * 2
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        dicom_port=free_port(),
        http_port=free_port(),
        admin_token=SecretStr(ADMIN_TOKEN),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def ct_instance() -> Dataset:
    return make_instance(PatientSpec(), 0, 0, 0)


@pytest.fixture
def small_tree() -> Iterator[Dataset]:
    return iter_study_tree(patients=2, series_per_study=2, instances_per_series=3)


def service_setting(name: str) -> str:
    """A DICOMFLOW_* setting of the real test services (written by scripts/services.sh up).

    In CI (or with DICOMFLOW_REQUIRE_SERVICES=1, as scripts/test.sh sets) a missing service is
    a failure, never a silent skip.
    """
    value = os.environ.get(name, "")
    if value:
        return value
    message = f"{name} is not set: run `bash scripts/services.sh up` and source .services.env"
    if os.environ.get("CI") or os.environ.get("DICOMFLOW_REQUIRE_SERVICES"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class Pki:
    """A test CA with a server certificate (127.0.0.1, localhost) and a client certificate."""

    ca: Path
    server_certificate: Path
    server_key: Path
    client_certificate: Path
    client_key: Path


def make_pki(folder: Path) -> Pki:
    """Generate a self-signed CA and certificates it signs, as PEM files under `folder`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def key_file(key: rsa.RSAPrivateKey, path: Path) -> Path:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return path

    def certificate(
        subject: str,
        key: rsa.RSAPrivateKey,
        issuer: tuple[x509.Name, rsa.RSAPrivateKey] | None,
        extensions: list[tuple[x509.ExtensionType, bool]],
    ) -> x509.Certificate:
        issuer_name, issuer_key = issuer or (name(subject), key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=2))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = certificate(
        "dicomflow test CA", ca_key, None, [(x509.BasicConstraints(ca=True, path_length=0), True)]
    )
    issuer = (ca_cert.subject, ca_key)
    leaf = x509.BasicConstraints(ca=False, path_length=None)
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server_cert = certificate(
        "127.0.0.1",
        server_key,
        issuer,
        [
            (leaf, True),
            (
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                False,
            ),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
    )
    client_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    client_cert = certificate(
        "dicomflow test client",
        client_key,
        issuer,
        [(leaf, True), (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)],
    )
    return Pki(
        ca=write(ca_cert, folder / "ca.pem"),
        server_certificate=write(server_cert, folder / "server.pem"),
        server_key=key_file(server_key, folder / "server.key"),
        client_certificate=write(client_cert, folder / "client.pem"),
        client_key=key_file(client_key, folder / "client.key"),
    )
