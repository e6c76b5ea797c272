"""HTTP server: a real uvicorn on 127.0.0.1 (free port, in a thread), queried with httpx."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
import time

import httpx
import pytest
from conftest import WORDS, make_colbert

from colzero.index import Index
from colzero.serve import ServeLimits, create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import numpy as np
    import uvicorn

    model = make_colbert()
    rng = np.random.default_rng(0)
    docs = [
        {"_id": f"d{i}", "text": " ".join(rng.choice(WORDS, rng.integers(4, 16))), "group": i % 10}
        for i in range(150)
    ]
    idx = Index.build(model, docs, tmp_path_factory.mktemp("srv") / "idx", chunk_size=100)
    limits = ServeLimits(max_k=50, max_queries=4, max_chars=200, max_body_bytes=4096, batch_wait_ms=5)
    app = create_app(idx, limits=limits)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield client, idx, app
    srv.should_exit = True
    thread.join(10)


def test_health_and_openapi(server):
    client, idx, _ = server
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["documents"] == 150
    assert r.json()["model_fingerprint"] == idx.fingerprint
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/encode", "/health"} <= set(paths)


def test_search_matches_index(server):
    client, idx, _ = server
    r = client.post("/search", json={"query": "quick brown fox", "k": 5})
    assert r.status_code == 200
    hits = r.json()["results"][0]
    expected = idx.search(["quick brown fox"], k=5)[0]
    assert [h["id"] for h in hits] == [d for d, _ in expected]
    r = client.post("/search", json={"queries": ["fox", "protein paper"], "k": 3})
    assert [len(x) for x in r.json()["results"]] == [3, 3]


def test_encode(server):
    client, _, _ = server
    r = client.post("/encode", json={"texts": ["quick brown fox"], "role": "document"})
    assert r.status_code == 200
    emb = r.json()["embeddings"][0]
    assert len(emb[0]) == 16 and abs(sum(x * x for x in emb[0]) - 1) < 1e-4


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"query": "   "}, 422, "empty"),
        ({"query": "fox", "k": 0}, 422, "greater than or equal"),
        ({"query": "fox", "k": 51}, 422, "less than or equal"),
        ({"queries": ["a"] * 5}, 422, "at most 4"),
        ({"query": "x" * 201}, 422, "limit is 200"),
        ({}, 422, "exactly one"),
        ({"query": "fox", "queries": ["dog"]}, 422, "exactly one"),
        ({"queries": []}, 422, "empty"),
        ({"query": "y" * 5000}, 413, "exceeds the limit"),
    ],
)
def test_bad_requests(server, body, status, needle):
    client, _, _ = server
    r = client.post("/search", json=body)
    assert r.status_code == status, r.text
    assert needle in r.text


def test_encode_bad_role(server):
    client, _, _ = server
    assert client.post("/encode", json={"texts": ["a"], "role": "x"}).status_code == 422
    assert client.post("/encode", json={"texts": []}).status_code == 422


def test_concurrent_requests_are_batched(server):
    client, idx, app = server
    before = dict(app.state.stats)
    queries = [f"{WORDS[i % len(WORDS)]} {WORDS[(3 * i) % len(WORDS)]}" for i in range(40)]

    def one(q):
        return q, client.post("/search", json={"query": q, "k": 4})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, queries))
    assert all(r.status_code == 200 for _, r in results)
    q, r = results[7]
    assert [h["id"] for h in r.json()["results"][0]] == [d for d, _ in idx.search([q], k=4)[0]]
    stats = app.state.stats
    batches = stats["batches"] - before["batches"]
    assert stats["queries"] - before["queries"] == 40
    assert batches < 40  # some requests shared a batch


def test_search_filter_and_fields(server):
    """A filter keeping 10% of the documents still gives k hits, all matching, as Index.search."""
    client, idx, _ = server
    body = {
        "queries": ["quick brown fox", "protein paper"],
        "k": 8,
        "filter": {"group": 3},
        "fields": ["group"],
    }
    r = client.post("/search", json=body)
    assert r.status_code == 200, r.text
    expected = idx.search(body["queries"], k=8, filter={"group": 3})
    for hits, exp in zip(r.json()["results"], expected, strict=True):
        assert [h["id"] for h in hits] == [d for d, _ in exp] and len(hits) == 8
        assert all(h["fields"] == {"group": 3} for h in hits)
    plain = client.post("/search", json={"query": "fox", "k": 2}).json()["results"][0]
    assert all("fields" not in h for h in plain)
    bad = client.post("/search", json={"query": "fox", "filter": {"group": {"$gt": 1}}})
    assert bad.status_code == 422 and "filter" in bad.text


def test_concurrent_requests_with_different_filters(server):
    client, idx, _ = server

    def one(i):
        flt = {"group": i % 3}
        return flt, client.post("/search", json={"query": "late interaction", "k": 3, "filter": flt})

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(12)))
    for flt, r in results:
        assert r.status_code == 200
        assert [h["id"] for h in r.json()["results"][0]] == [
            d for d, _ in idx.search(["late interaction"], k=3, filter=flt)[0]
        ]


DEEP = "[" * 1500 + "]" * 1500


@pytest.mark.parametrize(
    ("body", "loc", "needle"),
    [
        (
            '{"query": "protein", "filter": {"group": 9223372036854775808}}',
            ["body", "filter", "group"],
            "64-bit",
        ),
        (
            json.dumps({"query": "fox", "filter": {f"f{i}": 1 for i in range(120)}}),
            ["body", "filter"],
            "at most 64 fields",
        ),
        ('{"query": "prot\\ud800ein"}', ["body", "query"], "lone surrogate '\\ud800' at position 4"),
        ('{"query": "fox", "filter": {"group": "\\udc00"}}', ["body", "filter", "group"], "lone surrogate"),
        ('{"query": "fox", "fields": ["a\\ud800"]}', ["body", "fields", 0], "valid Unicode"),
        (
            '{"query": "fox", "filters": {"group": 1}}',
            ["body", "filters"],
            "unknown key 'filters'; did you mean 'filter'?",
        ),
        ('{"query": "fox", "k": true}', ["body", "k"], "valid integer"),
        ('{"query": "fox", "k": 3.0}', ["body", "k"], "valid integer"),
        ('{"query": "fox", "k": "3"}', ["body", "k"], "valid integer"),
        ('{"query": "fox", "filter": {"group": NaN}}', ["body"], "NaN is not allowed"),
        ('{"query": "fox", "filter": {"group": -Infinity}}', ["body"], "-Infinity is not allowed"),
        ('{"query": "fox", "filter": {"group": [1, [2]]}}', ["body", "filter", "group", 1], "nested list"),
        ('{"query": "fox", "filter": ' + DEEP + "}", ["body"], "nested too deeply"),
        ('{"query": "fox", "k": 3', ["body"], "invalid JSON"),
        ("[1, 2]", ["body"], "valid dictionary"),
        (b'{"query": "fox \xff"}', ["body"], "not UTF-8"),
    ],
)
def test_hostile_requests_get_their_own_422_naming_the_key(server, body, loc, needle):
    client, _, _ = server
    r = client.post("/search", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(needle in d["msg"] and d["loc"] == loc for d in detail), detail


def test_encode_requests_are_strict_too(server):
    client, _, _ = server
    r = client.post("/encode", json={"text": ["a"]})
    assert r.status_code == 422 and "did you mean 'texts'?" in r.text
    r = client.post("/encode", content='{"texts": ["a\\ud800"]}')
    assert r.status_code == 422 and "lone surrogate" in r.text


def test_the_connection_stays_usable_after_every_kind_of_error(server, monkeypatch):
    """One keep-alive socket: a 422, a 413 (body sent, not read), a 500 and a 200 in turn."""
    import http.client

    client, idx, _ = server
    port = int(str(client.base_url).rsplit(":", 1)[1].rstrip("/"))
    real = idx.search

    def failing(texts, **kw):
        if any("BOOM" in t for t in texts):
            raise RuntimeError("injected fault (test)")
        return real(texts, **kw)

    monkeypatch.setattr(idx, "search", failing)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"content-type": "application/json"}
    sent = [
        ('{"query": "fox", "k": true}', 422),
        ('{"query": "' + "y" * 5000 + '"}', 413),
        ('{"query": "BOOM"}', 500),
        ('{"query": "quick brown fox", "k": 2}', 200),
    ]
    sock = None
    for body, status in sent:
        conn.request("POST", "/search", body=body, headers=headers)
        r = conn.getresponse()
        payload = json.loads(r.read())
        assert r.status == status, payload
        assert sock is None or conn.sock is sock  # the same socket, never reset
        sock = conn.sock
        if status == 500:
            assert payload["detail"] == "internal error" and len(payload["error_id"]) == 12
    conn.close()


def test_a_request_that_fails_inside_a_batch_fails_alone(server, monkeypatch):
    client, idx, app = server
    real = idx.search

    def failing(texts, **kw):
        if any("BOOM" in t for t in texts):
            raise RuntimeError("injected fault (test)")
        if any("BADVAL" in t for t in texts):
            raise ValueError("injected bad value (test)")
        return real(texts, **kw)

    monkeypatch.setattr(idx, "search", failing)
    before = dict(app.state.stats)
    queries = [f"{WORDS[i % len(WORDS)]} fox" for i in range(24)]
    queries[5], queries[17] = "BOOM fox", "BADVAL fox"

    def one(q):
        return q, client.post("/search", json={"query": q, "k": 3})

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, queries))
    for q, r in results:
        if q.startswith("BOOM"):
            assert r.status_code == 500 and len(r.json()["error_id"]) == 12
        elif q.startswith("BADVAL"):
            assert r.status_code == 422 and "injected bad value" in r.text
        else:
            assert r.status_code == 200, r.text
            assert [h["id"] for h in r.json()["results"][0]] == [d for d, _ in real([q], k=3)[0]]
    assert app.state.stats["batches"] - before["batches"] < len(queries)  # they did share batches
