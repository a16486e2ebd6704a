"""Generated and configured secrets; placeholders refused where they would be shared."""

import stat
import threading
from pathlib import Path

import pytest
from pydantic import SecretStr

from dicomflow.kernel.secrets import deid_secret, load_or_create_secret
from dicomflow.kernel.settings import BlobBackend, BusBackend, Settings


def test_a_generated_secret_is_created_once_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "key"
    first = load_or_create_secret(path)
    assert len(first) >= 40
    assert load_or_create_secret(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(path.parent.iterdir()) == [path]


def test_concurrent_first_starts_agree_on_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "key"
    seen: list[str] = []
    threads = [
        threading.Thread(target=lambda: seen.append(load_or_create_secret(path))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == len(threads)  # every first start got the secret, none failed
    assert len(set(seen)) == 1
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


def test_the_embedded_deployment_generates_its_deid_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    key = deid_secret(settings)
    assert key not in (b"", b"change-me")
    assert deid_secret(Settings(data_dir=tmp_path)) == key
    assert deid_secret(Settings(data_dir=tmp_path / "other")) != key
    configured = Settings(data_dir=tmp_path, deid_secret=SecretStr("configured-key"))
    assert deid_secret(configured) == b"configured-key"


def test_a_scale_out_deployment_must_be_given_its_keys(tmp_path: Path) -> None:
    scale_out = Settings(
        data_dir=tmp_path,
        bus=BusBackend.KAFKA,
        deid_secret=SecretStr("change-me"),
        s3_secret_key=SecretStr("s"),
    )
    with pytest.raises(ValueError, match="DICOMFLOW_DEID_SECRET"):
        scale_out.check_secrets()
    Settings(data_dir=tmp_path, bus=BusBackend.KAFKA, dev_mode=True).check_secrets()
    Settings(
        data_dir=tmp_path, bus=BusBackend.KAFKA, deid_secret=SecretStr("k" * 40)
    ).check_secrets()
    Settings(data_dir=tmp_path).check_secrets()  # embedded: the key is generated
    with pytest.raises(ValueError, match="DICOMFLOW_S3_SECRET_KEY"):
        Settings(
            data_dir=tmp_path, blobs=BlobBackend.S3, s3_secret_key=SecretStr("")
        ).check_secrets()
