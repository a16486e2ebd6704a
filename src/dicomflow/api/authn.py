"""Authentication of HTTP requests: who is calling, from a bearer token or a UI session cookie.

A bearer token is, in this order: DICOMFLOW_ADMIN_TOKEN, an API token of the registry
(``dft_...``), or, when DICOMFLOW_OIDC_ISSUER is set, a JWT of that issuer. Browsers cannot
send bearer headers: the UI login turns a token into a session (api.tokens.SessionStore)
whose id travels in an HttpOnly cookie.
"""

import hmac
import logging
from datetime import UTC, datetime, timedelta

from fastapi import Request

from dicomflow.api.exceptions import ApiError
from dicomflow.api.oidc import OidcError, OidcVerifier
from dicomflow.api.principals import AuthMethod, Principal, Role
from dicomflow.api.tokens import TOKEN_PREFIX, SessionRecord, SessionStore, TokenRegistry
from dicomflow.kernel.blobs.base import BlobStore
from dicomflow.kernel.settings import PLACEHOLDER_SECRET, Settings

log = logging.getLogger(__name__)

SESSION_COOKIE = "dicomflow_session"
ADMIN_TOKEN_NAME = "admin (DICOMFLOW_ADMIN_TOKEN)"  # noqa: S105 - a name, not a secret
DEV_PRINCIPAL = Principal.of("anonymous (DICOMFLOW_HTTP_AUTH=false)", [Role.ADMIN], AuthMethod.DEV)


class AuthConfigError(ApiError, ValueError):
    """Authentication settings that are refused (auth off outside dev mode, say)."""


class NotAuthenticated(ApiError):
    """No valid credentials (HTTP 401); the message says why, never echoing a secret."""


class Forbidden(ApiError):
    """Authenticated, but the role does not allow this (HTTP 403)."""


MIN_ADMIN_TOKEN_LENGTH = 24


def check_auth_settings(settings: Settings) -> None:
    """Refuse DICOMFLOW_HTTP_AUTH=false, or a short or placeholder DICOMFLOW_ADMIN_TOKEN,
    outside dev mode; warn loudly when auth is off in dev mode."""
    admin_token = settings.admin_token.get_secret_value()
    if (
        admin_token
        and not settings.dev_mode
        and (len(admin_token) < MIN_ADMIN_TOKEN_LENGTH or PLACEHOLDER_SECRET in admin_token)
    ):
        raise AuthConfigError(
            f"DICOMFLOW_ADMIN_TOKEN is a placeholder or shorter than {MIN_ADMIN_TOKEN_LENGTH} "
            "characters: set a long random value (python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')"
        )
    if settings.http_auth:
        return
    if not settings.dev_mode:
        raise AuthConfigError(
            "DICOMFLOW_HTTP_AUTH=false opens the HTTP API to anyone and is only allowed with "
            "DICOMFLOW_DEV_MODE=true; remove it (and use an API token) in production"
        )
    log.warning(
        "HTTP AUTHENTICATION IS OFF (DICOMFLOW_HTTP_AUTH=false, dev mode): anyone who reaches "
        "port %d can read identified data and administer this archive",
        settings.http_port,
    )


def bearer_of(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class Authenticator:
    """The credentials an API process accepts, shared by every route."""

    def __init__(self, settings: Settings, blobs: BlobStore) -> None:
        self.enabled = settings.http_auth
        self._admin_token = settings.admin_token.get_secret_value()
        self.tokens = TokenRegistry(blobs)
        self.sessions = SessionStore(blobs)
        self.oidc = OidcVerifier(settings) if settings.oidc_issuer else None
        self.session_lifetime = timedelta(hours=settings.http_session_hours)

    def from_token(self, token: str) -> Principal:
        """The principal of a bearer token; raises NotAuthenticated saying why not."""
        if self._admin_token and hmac.compare_digest(token.encode(), self._admin_token.encode()):
            return Principal.of(ADMIN_TOKEN_NAME, [Role.ADMIN], AuthMethod.ADMIN_TOKEN)
        if token.startswith(TOKEN_PREFIX + "_"):
            record = self.tokens.verify(token)
            if record is None:
                raise NotAuthenticated("unknown or revoked API token")
            return Principal.of(record.name, record.roles, AuthMethod.API_TOKEN, record.id)
        if self.oidc is not None and token.count(".") == 2:
            try:
                return self.oidc.verify(token)
            except OidcError as exc:
                raise NotAuthenticated(str(exc)) from None
        raise NotAuthenticated("unknown bearer token")

    def from_session(self, session_id: str) -> Principal | None:
        record = self.sessions.get(session_id)
        if record is None:
            return None
        if record.token_id:
            token = self.tokens.get(record.token_id)
            if token is None:  # revoked since the login
                self.sessions.delete(session_id)
                return None
            roles = token.roles  # a role change of the token applies at once
        else:
            roles = record.roles
        return Principal.of(
            record.name, roles, AuthMethod(record.method), record.token_id, via_session=True
        )

    def authenticate(self, request: Request) -> Principal:
        """Who is calling; raises NotAuthenticated."""
        if not self.enabled:
            return DEV_PRINCIPAL
        token = bearer_of(request)
        if token is not None:
            return self.from_token(token)
        session_id = request.cookies.get(SESSION_COOKIE)
        if session_id:
            principal = self.from_session(session_id)
            if principal is not None:
                return principal
            raise NotAuthenticated("the session has expired or was closed; log in again")
        raise NotAuthenticated("credentials are required: Authorization: Bearer <token>")

    def open_session(self, principal: Principal) -> tuple[str, datetime]:
        """A UI session for `principal` (who logged in with a token): its id and expiry (no
        later than the token's own, for an OIDC token)."""
        expires = datetime.now(UTC) + self.session_lifetime
        if principal.expires_at is not None:
            expires = min(expires, principal.expires_at)
        record = SessionRecord(
            name=principal.name,
            roles=sorted(principal.roles),
            method=principal.method.value,
            token_id=principal.token_id,
            expires_at=expires,
        )
        return self.sessions.create(record), expires


def first_start_admin_token(settings: Settings, blobs: BlobStore) -> str | None:
    """At the first start (no API token yet, no DICOMFLOW_ADMIN_TOKEN): a new admin token.

    The caller shows it once; only its hash is kept, so it is never shown again.
    """
    if not settings.http_auth or settings.admin_token.get_secret_value():
        return None
    registry = TokenRegistry(blobs)
    if not registry.is_empty():
        return None
    token, _ = registry.create("admin created at first start", [Role.ADMIN])
    return token
