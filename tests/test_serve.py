"""HTTP server: a real uvicorn on 127.0.0.1 (free port, in a thread), queried with httpx."""

from __future__ import annotations

import concurrent.futures
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
