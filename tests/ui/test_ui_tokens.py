"""The admin page's API tokens: create (shown once), revoke, admins only."""

import re

from fastapi.testclient import TestClient

from tests.ui.conftest import Archive

HTMX = {"HX-Request": "true"}


def test_admins_create_and_revoke_tokens_on_the_admin_page(
    archive: Archive, client: TestClient
) -> None:
    page = client.get("/ui/admin")
    assert page.status_code == 200 and 'id="tokens"' in page.text
    created = client.post(
        "/ui/fragments/tokens", data={"name": "night export", "role": "deid-reader"}, headers=HTMX
    )
    assert created.status_code == 200
    match = re.search(r'id="new-token-value">(dft_[^<]+)<', created.text)
    assert match, created.text
    token = match.group(1)
    assert "night export" in created.text and "deid-reader" in created.text
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get("/dicomweb/deidentified/studies", headers=bearer).status_code == 200
    # a reader may not manage tokens
    refused = client.post(
        "/ui/fragments/tokens", data={"name": "x", "role": "admin"}, headers=HTMX | bearer
    )
    assert refused.status_code == 403
    # the token is shown once: the list does not show it again
    assert token not in client.get("/ui/admin").text
    token_id = token.split("_")[1]
    revoked = client.post(f"/ui/fragments/tokens/{token_id}/revoke", headers=HTMX)
    assert revoked.status_code == 200 and f"Revoked token {token_id}" in revoked.text
    assert client.get("/dicomweb/deidentified/studies", headers=bearer).status_code == 401
    bad = client.post("/ui/fragments/tokens", data={"name": "x", "role": "root"}, headers=HTMX)
    assert bad.status_code == 422 and "unknown role" in bad.text
    plain = client.post("/ui/fragments/tokens", data={"name": "no js", "role": "uploader"})
    assert plain.status_code == 200 and "<h1>Administration</h1>" in plain.text
    assert re.search(r'id="new-token-value">dft_', plain.text)
