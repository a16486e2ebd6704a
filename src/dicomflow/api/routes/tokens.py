"""Administration of API tokens: create (the token is shown once), list, revoke."""

from datetime import datetime

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, Field

from dicomflow.api.auth import AdminDep, admin, audit_change, authenticator_of
from dicomflow.api.principals import Role
from dicomflow.api.tokens import InvalidTokenRequest, TokenRecord

router = APIRouter(prefix="/api/admin/tokens", tags=["administration"], dependencies=[admin])


class TokenRequest(BaseModel):
    name: str = Field(description="Who or what uses the token (shown in the audit trail).")
    roles: list[Role] = Field(description="deid-reader, phi-reader, uploader and/or admin.")


class TokenPublic(BaseModel):
    id: str
    name: str
    roles: list[Role]
    created_at: datetime
    last_used_at: datetime | None


class CreatedTokenPublic(TokenPublic):
    token: str = Field(description="The token: shown this once, stored only as a hash.")


class TokensPublic(BaseModel):
    tokens: list[TokenPublic]


def _public(record: TokenRecord) -> TokenPublic:
    return TokenPublic(**record.model_dump(exclude={"sha256"}))


@router.post("", status_code=201, summary="Create an API token (shown once)")
def create_token(body: TokenRequest, request: Request, principal: AdminDep) -> CreatedTokenPublic:
    try:
        token, record = authenticator_of(request).tokens.create(body.name, body.roles)
    except InvalidTokenRequest as exc:
        raise HTTPException(422, str(exc)) from exc
    audit_change(
        request,
        principal,
        f"created API token {record.id} ({record.name}): roles " + ", ".join(record.roles),
    )
    return CreatedTokenPublic(**_public(record).model_dump(), token=token)


@router.get("", summary="The API tokens (never the tokens themselves)")
def list_tokens(request: Request) -> TokensPublic:
    return TokensPublic(tokens=[_public(r) for r in authenticator_of(request).tokens.list()])


@router.delete(
    "/{token_id}", status_code=204, response_class=Response, summary="Revoke an API token"
)
def revoke_token(token_id: str, request: Request, principal: AdminDep) -> Response:
    if not authenticator_of(request).tokens.revoke(token_id):
        raise HTTPException(404, f"no API token {token_id[:20]!r}")
    audit_change(request, principal, f"revoked API token {token_id}")
    return Response(status_code=204)
