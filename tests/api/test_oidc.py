"""OpenID Connect bearer tokens against a real issuer on loopback: discovery and JWKS served by
an HTTP server started here, tokens signed with keys generated here (RS256 and ES256)."""

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from dicomflow.api.app import create_app
from dicomflow.api.oidc import OidcConfigError, OidcVerifier, claim_at, parse_role_map
from dicomflow.api.principals import Role
from dicomflow.kernel.audit import AuditAction
from dicomflow.kernel.settings import Settings

AUDIENCE = "dicomflow"


@dataclass
class Issuer:
    """A minimal OpenID provider: discovery document and JWKS, keys it can sign with."""

    server: ThreadingHTTPServer
    keys: dict[str, Any] = field(default_factory=dict)  # kid -> private key
    published: list[str] = field(default_factory=list)  # kids in the JWKS
    jwks_requests: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/realms/hospital"

    def add_key(self, kid: str, kind: str = "rsa", publish: bool = True) -> None:
        self.keys[kid] = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if kind == "rsa"
            else ec.generate_private_key(ec.SECP256R1())
        )
        if publish:
            self.published.append(kid)

    def jwks(self) -> dict[str, Any]:
        entries = []
        for kid in self.published:
            key = self.keys[kid]
            if isinstance(key, rsa.RSAPrivateKey):
                jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
                jwk["alg"] = "RS256"
            else:
                jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
                jwk["alg"] = "ES256"
            entries.append(jwk | {"kid": kid, "use": "sig"})
        return {"keys": entries}

    def token(self, kid: str = "k1", signing_kid: str | None = None, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "f3a1-user",
            "preferred_username": "alice",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "roles": ["phi-reader"],
        }
        claims.update(overrides)
        key = self.keys[signing_kid or kid]
        algorithm = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    state = Issuer(server)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/realms/hospital/.well-known/openid-configuration":
                body = {"issuer": state.url, "jwks_uri": state.url + "/certs"}
            elif self.path == "/realms/hospital/certs":
                state.jwks_requests += 1
                body = state.jwks()
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.add_key("k1")
    yield state
    server.shutdown()
    server.server_close()


def oidc_settings(settings: Settings, issuer: Issuer, **extra: Any) -> Settings:
    return settings.model_copy(
        update={"oidc_issuer": issuer.url, "oidc_audience": AUDIENCE} | extra
    )


@pytest.fixture
def client(settings: Settings, issuer: Issuer) -> Iterator[TestClient]:
    with TestClient(create_app(oidc_settings(settings, issuer))) as test_client:
        yield test_client


def get(client: TestClient, token: str, path: str = "/dicomweb/studies") -> Any:
    return client.get(path, headers={"Authorization": f"Bearer {token}"})


def test_a_valid_token_of_the_issuer_is_accepted_with_its_roles(
    client: TestClient, issuer: Issuer
) -> None:
    response = get(client, issuer.token())
    assert response.status_code == 200, response.text
    assert get(client, issuer.token(), "/api/admin/tokens").status_code == 403
    assert issuer.jwks_requests == 1  # discovered, fetched once, cached
    assert get(client, issuer.token()).status_code == 200
    assert issuer.jwks_requests == 1
    audit = client.app.state.dicomflow.audit  # type: ignore[attr-defined]
    assert [e.user for e in audit.search(action=AuditAction.QUERY)][:1] == ["oidc:alice"]


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 3600}, "ExpiredSignature"),
        ({"aud": "another-client"}, "InvalidAudience"),
        ({"iss": "http://127.0.0.1:1/realms/evil"}, "InvalidIssuer"),
        ({"nbf": int(time.time()) + 3600}, "ImmatureSignature"),
    ],
)
def test_invalid_claims_are_401(
    client: TestClient, issuer: Issuer, claims: dict[str, Any], reason: str
) -> None:
    token = issuer.token(**claims)
    response = get(client, token)
    assert response.status_code == 401
    assert reason in response.json()["detail"] and token not in response.text


def test_a_token_signed_by_another_key_is_401(client: TestClient, issuer: Issuer) -> None:
    issuer.add_key("attacker", publish=False)
    forged = issuer.token(kid="k1", signing_kid="attacker")  # claims the issuer's key id
    assert get(client, forged).status_code == 401
    unknown = issuer.token(kid="attacker")
    assert get(client, unknown).status_code == 401
    assert get(client, "a.b.c").status_code == 401
    unsigned = jwt.encode({"sub": "x", "aud": AUDIENCE, "iss": issuer.url}, None, "none")
    assert get(client, unsigned).status_code == 401


def test_a_token_without_a_dicomflow_role_is_403(client: TestClient, issuer: Issuer) -> None:
    assert get(client, issuer.token(roles=[])).status_code == 403
    assert get(client, issuer.token(roles=["nurse"]), "/api/status").status_code == 403
    assert get(client, issuer.token(roles=["deid-reader"])).status_code == 403
    deid = get(client, issuer.token(roles=["deid-reader"]), "/dicomweb/deidentified/studies")
    assert deid.status_code == 200


def test_keycloak_realm_roles_through_a_role_map_es256_and_explicit_jwks(
    settings: Settings, issuer: Issuer
) -> None:
    issuer.add_key("ec1", kind="ec")
    configured = oidc_settings(
        settings,
        issuer,
        oidc_jwks_url=issuer.url + "/certs",
        oidc_roles_claim="realm_access.roles",
        oidc_role_map="pacs-admin=admin,radiologist=phi-reader,radiologist=uploader",
        oidc_user_claim="email",
    )
    with TestClient(create_app(configured)) as client:
        radiologist = issuer.token(
            kid="ec1",
            roles=None,
            realm_access={"roles": ["radiologist", "offline_access"]},
            email="dr.house@example.org",
        )
        assert get(client, radiologist).status_code == 200
        assert get(client, radiologist, "/api/admin/tokens").status_code == 403
        admin = issuer.token(realm_access={"roles": ["pacs-admin"]})
        assert get(client, admin, "/api/admin/tokens").status_code == 200
        assert get(client, issuer.token()).status_code == 403  # top-level roles: not mapped


def test_rotated_keys_are_fetched_on_an_unknown_kid_at_most_once_per_cooldown(
    settings: Settings, issuer: Issuer
) -> None:
    verifier = OidcVerifier(oidc_settings(settings, issuer), refresh_cooldown=0)
    assert verifier.verify(issuer.token()).roles >= {Role.PHI_READER, Role.DEID_READER}
    issuer.add_key("k2")  # the issuer rotates its keys
    assert verifier.verify(issuer.token(kid="k2")).name == "oidc:alice"
    assert issuer.jwks_requests == 2
    slow = OidcVerifier(oidc_settings(settings, issuer), refresh_cooldown=60)
    slow.verify(issuer.token())
    issuer.add_key("k3", publish=False)
    for _ in range(5):  # unknown key ids cannot make us hammer the issuer
        with pytest.raises(Exception, match="invalid OpenID Connect token"):
            slow.verify(issuer.token(kid="k3"))
    assert issuer.jwks_requests == 3


def test_role_map_and_claim_paths() -> None:
    assert parse_role_map("a=admin, b=deid-reader,b=uploader") == {
        "a": [Role.ADMIN],
        "b": [Role.DEID_READER, Role.UPLOADER],
    }
    with pytest.raises(OidcConfigError, match="unknown role"):
        parse_role_map("a=root")
    with pytest.raises(OidcConfigError, match="value=role"):
        parse_role_map("admin")
    assert claim_at({"realm_access": {"roles": ["x"]}}, "realm_access.roles") == ["x"]
    assert claim_at({"realm_access": ["x"]}, "realm_access.roles") is None


def test_the_issuer_needs_an_audience(settings: Settings, issuer: Issuer) -> None:
    with pytest.raises(OidcConfigError, match="AUDIENCE"):
        create_app(settings.model_copy(update={"oidc_issuer": issuer.url}))


def test_ui_login_with_an_oidc_token(client: TestClient, issuer: Issuer) -> None:
    response = client.post("/ui/login", data={"token": issuer.token()}, follow_redirects=False)
    assert response.status_code == 303
    assert client.get("/", params={"q": ""}).status_code == 200
    assert "alice" in client.get("/").text
    audit = client.app.state.dicomflow.audit  # type: ignore[attr-defined]
    [login] = audit.search(action=AuditAction.LOGIN)
    assert login.user == "oidc:alice" and login.detail == "UI login"
    refused = client.post("/ui/login", data={"token": issuer.token(aud="x")})
    assert refused.status_code == 401
    assert audit.search(action=AuditAction.LOGIN)[0].outcome != "0"
