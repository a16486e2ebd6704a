"""Who is calling the HTTP API: roles and the authenticated principal (docs/security.md)."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from dicomflow.kernel.events import Namespace


class Role(StrEnum):
    """What a caller may do. Higher roles imply lower ones (IMPLIED)."""

    DEID_READER = "deid-reader"  # search and retrieve the de-identified namespace
    PHI_READER = "phi-reader"  # also the identified (original) namespace
    UPLOADER = "uploader"  # STOW-RS
    ADMIN = "admin"  # everything, including tokens, destinations, reindex, dead letters


IMPLIED: dict[Role, frozenset[Role]] = {
    Role.ADMIN: frozenset(Role),
    Role.PHI_READER: frozenset({Role.PHI_READER, Role.DEID_READER}),
    Role.DEID_READER: frozenset({Role.DEID_READER}),
    Role.UPLOADER: frozenset({Role.UPLOADER}),
}


def effective_roles(roles: Iterable[Role]) -> frozenset[Role]:
    """The roles granted, with the ones they imply."""
    out: set[Role] = set()
    for role in roles:
        out |= IMPLIED[role]
    return frozenset(out)


class AuthMethod(StrEnum):
    API_TOKEN = "api-token"  # noqa: S105 - a name, not a secret
    ADMIN_TOKEN = "admin-token"  # noqa: S105 - DICOMFLOW_ADMIN_TOKEN
    OIDC = "oidc"
    DEV = "dev"  # DICOMFLOW_HTTP_AUTH=false in dev mode


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `roles` are the effective ones (implications applied)."""

    name: str
    roles: frozenset[Role]
    method: AuthMethod
    token_id: str = ""
    via_session: bool = False
    expires_at: datetime | None = None  # of the credential (an OIDC token's exp)

    @classmethod
    def of(
        cls,
        name: str,
        roles: Iterable[Role],
        method: AuthMethod,
        token_id: str = "",
        via_session: bool = False,
        expires_at: datetime | None = None,
    ) -> "Principal":
        return cls(name, effective_roles(roles), method, token_id, via_session, expires_at)

    def has(self, role: Role) -> bool:
        return role in self.roles

    @property
    def sees_phi(self) -> bool:
        return Role.PHI_READER in self.roles

    @property
    def is_admin(self) -> bool:
        return Role.ADMIN in self.roles

    def may_read(self, namespace: Namespace) -> bool:
        if namespace is Namespace.DEIDENTIFIED:
            return Role.DEID_READER in self.roles
        return Role.PHI_READER in self.roles

    @property
    def default_namespace(self) -> Namespace:
        """What the UI and /api/search show when no namespace is asked for."""
        return Namespace.ORIGINAL if self.sees_phi else Namespace.DEIDENTIFIED

    @property
    def role_names(self) -> list[str]:
        return sorted(role.value for role in self.roles)
