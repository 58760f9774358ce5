from __future__ import annotations

import hashlib
import http.client
import json

import numpy as np
import pytest
from pydantic import ValidationError

from detector_node.history import History, HistoryConfig
from detector_node.history_server import HistoryServer, HistoryServerConfig

TOKEN = "edge-line1-0123456789abcdef"
OTHER = "edge-line2-fedcba9876543210"


def image(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)


def _served(root):
    history = History(HistoryConfig(root=root))
    for i in range(5):
        history.add(image(i), ("a", "b")[i % 2], ("good", "spot")[i // 3], "OK")
    return history, HistoryServer(history, HistoryServerConfig(host="127.0.0.1", port=0, tokens=[TOKEN, OTHER]))


@pytest.fixture(scope="module")
def ro(tmp_path_factory):
    """A server shared by the tests that only read (5 samples: brands a/b, labels good x3, spot x2)."""
    history, srv = _served(tmp_path_factory.mktemp("hist"))
    with history, srv:
        yield srv, history


@pytest.fixture
def server(ro):
    return ro[0]


@pytest.fixture
def history(ro):
    return ro[1]


@pytest.fixture
def rw(tmp_path):
    """A server of its own, for tests that add samples."""
    history, srv = _served(tmp_path / "hist")
    with history, srv:
        yield srv, history


def get(server, path: str, token: str | None = TOKEN, scheme: str = "Bearer", headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"{scheme} {token}"
        conn.request("GET", path, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_binds_a_free_port(server):
    assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"


@pytest.mark.parametrize(
    ("token", "scheme"),
    [(None, "Bearer"), ("wrong-token-0123456789", "Bearer"), (TOKEN[:-1], "Bearer"), (TOKEN, "Basic"), ("", "Bearer")],
)
@pytest.mark.parametrize("path", ["/v1/samples", "/v1/samples/" + "0" * 32, "/v1/samples/../../index.db", "/nope"])
def test_token_required(server, token, scheme, path):
    status, headers, body = get(server, path, token, scheme)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert json.loads(body)["error"]


def test_every_configured_token_is_accepted(server):
    assert get(server, "/v1/samples", TOKEN)[0] == 200
    assert get(server, "/v1/samples", OTHER)[0] == 200


def test_incremental_listing_by_cursor(rw):
    server, history = rw
    status, _, body = get(server, "/v1/samples?limit=2")
    page = json.loads(body)
    assert status == 200 and len(page["samples"]) == 2
    ids, cursor = [s["id"] for s in page["samples"]], page["next_cursor"]
    while True:
        page = json.loads(get(server, f"/v1/samples?cursor={cursor}&limit=2")[2])
        if not page["samples"]:
            break
        ids += [s["id"] for s in page["samples"]]
        cursor = page["next_cursor"]
    assert ids == [s.id for s in history.list(0, 100)[0]]
    assert page == {"samples": [], "next_cursor": cursor}
    new = history.add(image(42), "a", "dent", "NG")
    page = json.loads(get(server, f"/v1/samples?cursor={cursor}")[2])
    assert page == {"samples": [new.to_json()], "next_cursor": new.cursor}
    assert set(page["samples"][0]) >= {"id", "brand", "label", "size", "sha256", "time", "cursor"}


def test_listing_filters(server):
    page = json.loads(get(server, "/v1/samples?brand=a&labels=good,dent")[2])
    assert page["samples"] and all(s["brand"] == "a" and s["label"] in ("good", "dent") for s in page["samples"])
    assert len(json.loads(get(server, "/v1/samples?labels=spot")[2])["samples"]) == 2


def test_sample_bytes_match_sha256(server, history):
    for s in history.list(0, 100)[0]:
        status, headers, body = get(server, f"/v1/samples/{s.id}")
        assert status == 200 and headers["Content-Type"] == "image/png"
        digest = hashlib.sha256(body).hexdigest()
        assert digest == s.sha256 == headers["X-Content-SHA256"]
        assert headers["ETag"] == f'"{digest}"' and int(headers["Content-Length"]) == len(body) == s.size
        status, _, body = get(server, f"/v1/samples/{s.id}", headers={"If-None-Match": f'"{digest}"'})
        assert (status, body) == (304, b"")


def test_unknown_id_is_404_and_malformed_id_400(server):
    assert get(server, "/v1/samples/" + "0" * 32)[0] == 404
    assert get(server, "/v1/samples/not-an-id")[0] == 400
    assert get(server, "/v2/samples")[0] == 404
    assert get(server, "/v1/samples/" + "0" * 32 + "/x")[0] == 404


@pytest.mark.parametrize(
    "path",
    ["/v1/samples/../index.db", "/v1/samples/..%2Findex.db", "/v1/samples/%2e%2e/%2e%2e/etc/passwd",
     "/v1/../index.db", "/v1/samples/..%5Cindex.db", "/v1/samples/./x", "/v1/samples/a%00b"],
)
def test_path_traversal_is_refused(server, path):
    status, _, body = get(server, path)
    assert status == 400
    assert b"SQLite format" not in body and b"root:" not in body
    assert json.loads(body) == {"error": "path traversal refused"}


@pytest.mark.parametrize(
    "query",
    ["cursor=-1", "cursor=x", "limit=0", "limit=1001", "limit=", "cursor=1e3", "foo=1", "limit=1&limit=2",
     "brand=../x", "brand=", "labels=a/b", "cursor=99999999999999999999"],
)
def test_bad_parameters_are_400(server, query):
    status, _, body = get(server, f"/v1/samples?{query}")
    assert status == 400, body
    assert json.loads(body)["error"]


def test_keep_alive_serves_several_requests_on_one_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/v1/samples?limit=1", headers={"Authorization": f"Bearer {TOKEN}"})
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["samples"]
    finally:
        conn.close()


def test_config_is_strict():
    with pytest.raises(ValidationError, match="16 characters"):
        HistoryServerConfig(tokens=["short"])
    with pytest.raises(ValidationError):
        HistoryServerConfig(tokens=[])
    with pytest.raises(ValidationError):
        HistoryServerConfig(tokens=[TOKEN], bind="0.0.0.0")
    assert TOKEN not in repr(HistoryServerConfig(tokens=[TOKEN]))


def test_close_frees_the_port(tmp_path):
    with History(HistoryConfig(root=tmp_path / "h")) as history:
        srv = HistoryServer(history, HistoryServerConfig(port=0, tokens=[TOKEN])).start()
        port = srv.port
        assert get(srv, "/v1/samples")[0] == 200
        srv.close()
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=2).connect()
