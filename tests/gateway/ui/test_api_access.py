"""Who may call the dashboard's JSON API (/ui/api): every call takes a key, the operator views an admin key; and a
decision log that does not answer is a 503 in OpenAI's error shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from tests.gateway.tcp_proxy import tcp_proxy
from tests.gateway.ui.support import bearer, open_dashboard

OPERATOR_VIEWS = [
    ("GET", "/experts"),
    ("GET", "/routers"),
    ("GET", "/evaluation"),
    ("POST", "/routers/versions/1/promote"),
    ("POST", "/routers/embedding/revert"),
]
EVERY_CALL = [
    ("GET", "/me"),
    ("GET", "/decisions"),
    ("GET", "/decisions/some-id"),
    ("GET", "/feedback"),
    *OPERATOR_VIEWS,
]


# -- keys ---------------------------------------------------------------------------------------------------------
def test_every_call_takes_a_key_and_the_operator_views_an_admin_key(
    failing_stem: list[dict[str, Any]], router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> None:
    # /v1 requests need no key on this gateway: the dashboard still does.
    with open_dashboard(failing_stem, router_artifact, sqlite_url, tmp_path, moe_require_api_key=False) as dash:
        for method, path in EVERY_CALL:
            for key in (None, "sk-not-a-key"):
                refused = httpx.request(method, f"{dash.gw.base_url}/ui/api{path}", headers=bearer(key), json={})
                assert refused.status_code == 401, (method, path, key)
                assert refused.json()["error"]["type"] == "authentication_error"
                assert refused.json()["error"]["code"] == "invalid_api_key"
        for method, path in OPERATOR_VIEWS:
            forbidden = httpx.request(method, f"{dash.gw.base_url}/ui/api{path}", headers=bearer(dash.acme), json={})
            assert forbidden.status_code == 403, (method, path)
            assert forbidden.json()["error"]["code"] == "insufficient_permissions"
        acme, admin = dash.get("/me", dash.acme).json(), dash.get("/me", dash.admin).json()
    assert (acme["tenant"], acme["admin"], admin["tenant"], admin["admin"]) == ("acme", False, "ops", True)
    assert isinstance(acme["key_id"], int) and acme["name"] == "test"


# -- the database down --------------------------------------------------------------------------------------------
def test_a_database_that_does_not_answer_is_a_503_in_openais_shape(
    failing_stem: list[dict[str, Any]], router_artifact: Path, postgres_url: str, tmp_path: Path
) -> None:
    real = make_url(postgres_url)
    with tcp_proxy(real.host or "127.0.0.1", real.port or 5432) as proxy:
        url = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        with open_dashboard(failing_stem, router_artifact, url, tmp_path) as dash:
            assert dash.get("/decisions", dash.admin).status_code == 200  # the key is known from now on
            proxy.down()
            down = {
                path: dash.get(path, dash.admin)
                for path in ("/decisions", "/decisions/some-id", "/experts", "/routers", "/evaluation", "/feedback")
            }
            proxy.up()
            back = dash.get("/decisions", dash.admin)
    for path, response in down.items():
        assert response.status_code == 503, (path, response.text)
        assert response.json()["error"]["type"] == "service_unavailable"
        assert response.json()["error"]["code"] == "decision_log_unavailable"
    assert back.status_code == 200
