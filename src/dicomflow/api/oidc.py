"""OpenID Connect bearer tokens: JWTs signed by a configured issuer, checked against its JWKS.

The signature (RS256 or ES256), ``iss``, ``aud``, ``exp`` and ``nbf`` are verified with PyJWT.
The JWKS URL is configured or discovered from ``<issuer>/.well-known/openid-configuration``;
its keys are cached and fetched again when a token names a key id that is not in the cache
(key rotation), at most once per cooldown. Roles come from a claim (a dotted path reaches into
objects, e.g. Keycloak's ``realm_access.roles``) through DICOMFLOW_OIDC_ROLE_MAP.
"""

import json
import logging
import threading
import urllib.request
from datetime import UTC, datetime
from typing import Any

import jwt

from dicomflow.api.exceptions import ApiError
from dicomflow.api.principals import AuthMethod, Principal, Role
from dicomflow.kernel.settings import Settings

log = logging.getLogger(__name__)

ALGORITHMS = ["RS256", "ES256"]
LEEWAY_SECONDS = 30
DISCOVERY_PATH = "/.well-known/openid-configuration"


class OidcError(ApiError):
    """A bearer token that is not a valid token of the configured issuer (HTTP 401)."""


class OidcConfigError(ApiError, ValueError):
    """OIDC settings that cannot work (a role map naming an unknown role, say)."""


def parse_role_map(text: str) -> dict[str, list[Role]]:
    """``claim-value=role`` pairs, comma-separated; a value may map to several roles."""
    mapping: dict[str, list[Role]] = {}
    for pair in text.split(","):
        if not pair.strip():
            continue
        value, separator, role = pair.partition("=")
        if not separator or not value.strip():
            raise OidcConfigError(f"DICOMFLOW_OIDC_ROLE_MAP: {pair.strip()!r} is not value=role")
        try:
            mapping.setdefault(value.strip(), []).append(Role(role.strip()))
        except ValueError:
            raise OidcConfigError(
                f"DICOMFLOW_OIDC_ROLE_MAP: unknown role {role.strip()!r}; one of "
                f"{', '.join(r.value for r in Role)}"
            ) from None
    return mapping


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of the claims (None where a step is missing)."""
    value: Any = claims
    for step in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(step)
    return value


def _fetch_json(url: str, timeout: float = 10) -> Any:
    if not url.startswith(("https://", "http://")):
        raise OidcConfigError(f"{url[:100]!r} is not an http(s) URL")
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - checked above
        return json.loads(response.read(1_000_000))


class OidcVerifier:
    """Turns an issuer's bearer tokens into principals."""

    def __init__(self, settings: Settings, refresh_cooldown: float = 10.0) -> None:
        self.issuer = settings.oidc_issuer.rstrip("/")
        self.audience = settings.oidc_audience
        self.roles_claim = settings.oidc_roles_claim
        self.user_claim = settings.oidc_user_claim
        self.role_map = parse_role_map(settings.oidc_role_map)
        self._jwks_url = settings.oidc_jwks_url
        self._refresh_cooldown = refresh_cooldown
        self._client: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()
        if not self.audience:
            raise OidcConfigError("DICOMFLOW_OIDC_AUDIENCE is required with DICOMFLOW_OIDC_ISSUER")

    def _jwks(self) -> jwt.PyJWKClient:
        with self._lock:
            if self._client is None:
                url = self._jwks_url
                if not url:
                    discovery = _fetch_json(self.issuer + DISCOVERY_PATH)
                    url = str(discovery.get("jwks_uri", "")) if isinstance(discovery, dict) else ""
                    if not url:
                        raise OidcError("the issuer's discovery document names no jwks_uri")
                self._client = jwt.PyJWKClient(
                    url, cache_jwk_set=True, lifespan=3600, cooldown_duration=self._refresh_cooldown
                )
            return self._client

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; raises OidcError saying what is wrong."""
        try:
            key = self._jwks().get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except (jwt.PyJWTError, OSError, ValueError) as exc:
            # The reason (expired, wrong audience, unknown key) helps the caller; the token
            # itself is never part of it.
            raise OidcError(f"invalid OpenID Connect token: {type(exc).__name__}: {exc}") from None
        expires = datetime.fromtimestamp(int(claims["exp"]), UTC)
        return Principal.of(
            self._name(claims), self.roles_of(claims), AuthMethod.OIDC, expires_at=expires
        )

    def _name(self, claims: dict[str, Any]) -> str:
        name = claims.get(self.user_claim) or claims.get("sub")
        return f"oidc:{str(name)[:200]}"

    def roles_of(self, claims: dict[str, Any]) -> list[Role]:
        value = claim_at(claims, self.roles_claim)
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        roles: list[Role] = []
        for item in values:
            if not isinstance(item, str):
                continue
            if self.role_map:
                roles.extend(self.role_map.get(item, []))
            elif item in Role._value2member_map_:
                roles.append(Role(item))
        return roles
