"""Shared fixtures: settings on a temporary data directory, synthetic datasets, free ports."""

import os
import socket
from collections.abc import Iterator
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
