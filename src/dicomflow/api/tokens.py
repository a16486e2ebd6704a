"""API tokens and web UI sessions, kept in the blob store so that every API replica shares them.

A token is ``dft_<id>_<secret>``: a 64-bit public id (to find the record, list and revoke it)
and a 256-bit random secret. Only the SHA-256 of the whole token is stored, and it is compared
in constant time. A UI session is a random 256-bit id in an HttpOnly cookie; the store keeps
it under the SHA-256 of that id, with who logged in and until when.

Records live under ``dicomflow-auth/`` in the originals' namespace of the blob store (the
filesystem store in the embedded deployment, S3 in the scale-out one): the store that is
already shared by every replica and as well protected as the identified data itself.
"""

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field, ValidationError

from dicomflow.api.exceptions import ApiError
from dicomflow.api.principals import Role
from dicomflow.kernel.blobs.base import BlobStore
from dicomflow.kernel.events import Namespace
from dicomflow.kernel.exceptions import BlobNotFound

AUTH_NAMESPACE = Namespace.ORIGINAL
TOKENS_PREFIX = "dicomflow-auth/tokens/"
SESSIONS_PREFIX = "dicomflow-auth/sessions/"
TOKEN_PREFIX = "dft"  # noqa: S105 - the marker of our tokens, not a secret
_TOKEN = re.compile(r"^dft_([0-9a-f]{16})_[A-Za-z0-9_-]{43}$")
_NAME = re.compile(r"^[\w .@:+-]{1,80}$")
# A record read from the store is trusted this long: a revocation reaches the other replicas
# within it, and a busy client costs one blob read per interval, not one per request.
CACHE_SECONDS = 5.0
# last_used_at is written at most this often per token (a write per request would be a load).
LAST_USED_EVERY = timedelta(minutes=5)


class InvalidTokenRequest(ApiError, ValueError):
    """A token name or role list that cannot be used."""


def _now() -> datetime:
    return datetime.now(UTC)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class TokenRecord(BaseModel):
    """What the store keeps of an API token (never the token itself)."""

    id: str
    name: str
    roles: list[Role]
    sha256: str
    created_at: datetime = Field(default_factory=_now)
    last_used_at: datetime | None = None


class SessionRecord(BaseModel):
    """A web UI login: who, with which roles, how they authenticated, until when."""

    name: str
    roles: list[Role]
    method: str
    token_id: str = ""  # the API token it was opened with: revoking it ends the session
    created_at: datetime = Field(default_factory=_now)
    expires_at: datetime


def check_token_request(name: str, roles: Iterable[str]) -> tuple[str, list[Role]]:
    """A valid token name and role list; raises InvalidTokenRequest naming what is wrong."""
    name = name.strip()
    if not _NAME.match(name):
        raise InvalidTokenRequest(
            "a token name is 1-80 letters, digits, spaces or . @ : + - _ characters"
        )
    chosen: list[Role] = []
    for role in roles:
        try:
            chosen.append(Role(role))
        except ValueError:
            raise InvalidTokenRequest(
                f"unknown role {role[:40]!r}; one of {', '.join(r.value for r in Role)}"
            ) from None
    if not chosen:
        raise InvalidTokenRequest("a token needs at least one role")
    return name, sorted(set(chosen))


class _Cache:
    """Records read recently, by key, for CACHE_SECONDS."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, bytes | None]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[bool, bytes | None]:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[0] > CACHE_SECONDS:
            return False, None
        return True, entry[1]

    def put(self, key: str, value: bytes | None) -> None:
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key] = (time.monotonic(), value)

    def drop(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)


class _Records:
    """Small JSON records in the blob store, read through a short cache."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self._cache = _Cache()

    def read(self, key: str, fresh: bool = False) -> bytes | None:
        """The record under `key` (None if absent); `fresh` bypasses the cache."""
        if not fresh:
            hit, value = self._cache.get(key)
            if hit:
                return value
        try:
            value = self.blobs.get(AUTH_NAMESPACE, key)
        except BlobNotFound:
            value = None
        self._cache.put(key, value)
        return value

    def write(self, key: str, data: bytes) -> None:
        self.blobs.put(AUTH_NAMESPACE, key, data)
        self._cache.put(key, data)

    def delete(self, key: str) -> None:
        self.blobs.delete(AUTH_NAMESPACE, key)
        self._cache.put(key, None)


class TokenRegistry:
    """The API tokens: create (the token is shown once), list, revoke, verify."""

    def __init__(self, blobs: BlobStore) -> None:
        self._records = _Records(blobs)
        self._blobs = blobs

    @staticmethod
    def _key(token_id: str) -> str:
        return f"{TOKENS_PREFIX}{token_id}.json"

    def create(self, name: str, roles: Iterable[str]) -> tuple[str, TokenRecord]:
        """A new token and its record; the token is not kept anywhere, show it once."""
        name, chosen = check_token_request(name, roles)
        token_id = secrets.token_hex(8)
        token = f"{TOKEN_PREFIX}_{token_id}_{secrets.token_urlsafe(32)}"
        record = TokenRecord(id=token_id, name=name, roles=chosen, sha256=sha256_hex(token))
        self._records.write(self._key(token_id), record.model_dump_json().encode())
        return token, record

    def get(self, token_id: str, fresh: bool = False) -> TokenRecord | None:
        if not re.fullmatch(r"[0-9a-f]{16}", token_id):
            return None
        data = self._records.read(self._key(token_id), fresh)
        if data is None:
            return None
        try:
            return TokenRecord.model_validate_json(data)
        except ValidationError:
            return None

    def list(self) -> list[TokenRecord]:
        records = []
        for key in self._blobs.keys(AUTH_NAMESPACE, TOKENS_PREFIX):
            record = self.get(key.removeprefix(TOKENS_PREFIX).removesuffix(".json"))
            if record is not None:
                records.append(record)
        return sorted(records, key=lambda r: r.created_at)

    def is_empty(self) -> bool:
        return next(iter(self._blobs.keys(AUTH_NAMESPACE, TOKENS_PREFIX)), None) is None

    def revoke(self, token_id: str) -> bool:
        if self.get(token_id) is None:
            return False
        self._records.delete(self._key(token_id))
        return True

    def verify(self, token: str) -> TokenRecord | None:
        """The record of a valid token, else None (unknown, revoked, malformed)."""
        match = _TOKEN.match(token)
        if match is None:
            return None
        digest = sha256_hex(token)
        record = self.get(match.group(1))
        if record is None or not hmac.compare_digest(record.sha256, digest):
            return None
        now = _now()
        if record.last_used_at is None or now - record.last_used_at > LAST_USED_EVERY:
            # Read the store itself before writing: a record cached here may have been revoked
            # through another replica since, and writing it back would bring it back to life.
            record = self.get(record.id, fresh=True)
            if record is None or not hmac.compare_digest(record.sha256, digest):
                return None
            record.last_used_at = now
            self._records.write(self._key(record.id), record.model_dump_json().encode())
        return record


class SessionStore:
    """Web UI sessions: the cookie holds a random id, the store its hash and the login."""

    def __init__(self, blobs: BlobStore) -> None:
        self._records = _Records(blobs)

    @staticmethod
    def _key(session_id: str) -> str:
        return f"{SESSIONS_PREFIX}{sha256_hex(session_id)}.json"

    def create(self, record: SessionRecord) -> str:
        session_id = secrets.token_urlsafe(32)
        self._records.write(self._key(session_id), record.model_dump_json().encode())
        return session_id

    def get(self, session_id: str) -> SessionRecord | None:
        if not 20 <= len(session_id) <= 100:
            return None
        data = self._records.read(self._key(session_id))
        if data is None:
            return None
        try:
            record = SessionRecord.model_validate_json(data)
        except ValidationError:
            return None
        if record.expires_at <= _now():
            self.delete(session_id)
            return None
        return record

    def delete(self, session_id: str) -> None:
        if 20 <= len(session_id) <= 100:
            self._records.delete(self._key(session_id))
