"""Secrets that the embedded deployment generates for itself on first start.

A single-machine archive must not key its pseudonyms with a placeholder everyone can read in our
source code: anyone could recompute the pseudonym of a known PatientID. So when no de-identification
key is configured and the deployment keeps its state in one data directory (the embedded bus),
the key is generated once, kept in ``<data_dir>/secrets/`` (mode 0600) and read by every process
of the family. A scale-out deployment has no shared directory, so there the key must be configured
(Settings.check_secrets refuses the placeholder outside dev mode).
"""

import os
import secrets
from pathlib import Path

from dicomflow.kernel.settings import PLACEHOLDER_SECRET, BusBackend, Settings

DEID_SECRET_FILE = "deid-secret"  # noqa: S105 - a file name, not a secret


def load_or_create_secret(path: Path) -> str:
    """The secret kept in `path`, created (256 random bits, mode 0600) if it does not exist yet.

    Creation is atomic (a temporary file linked into place), so concurrent first starts of
    several processes, or threads, agree on one value.
    """
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Unique per call, not per process: threads of one process may race on a first start too.
    candidate = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_urlsafe(32).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(candidate, path)  # fails if another process won the race: theirs is kept
    except FileExistsError:
        pass
    finally:
        candidate.unlink()
    return path.read_text().strip()


def is_placeholder(value: str) -> bool:
    return value in ("", PLACEHOLDER_SECRET)


def deid_secret(settings: Settings) -> bytes:
    """The key of the pseudonymisation hash: configured, else generated for this data dir."""
    configured = settings.deid_secret.get_secret_value()
    if not is_placeholder(configured) or settings.bus is not BusBackend.EMBEDDED:
        return configured.encode()
    return load_or_create_secret(settings.data_dir / "secrets" / DEID_SECRET_FILE).encode()
