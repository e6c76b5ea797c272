"""``colzero serve`` in its own process on 127.0.0.1, under load and faults.

- Load and faults: concurrent searches (filtered and not, with fields) while this process deletes,
  adds and rebuilds the served folder, with bad requests of every kind mixed in. Every
  well-formed request gets 200; no result holds a document deleted by a change reported done
  before the request was sent; every hit's fields are its own document's; new documents are
  found; each bad request gets its own 4xx.
- A 50 MB chunked body is answered 413 (before it is all sent) and the server's memory stays
  within a few MB of its baseline (read from /proc).
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import REPO, WORDS, make_colbert

from colzero.index import Index

sys.path.insert(0, str(REPO / "benchmarks"))
from serve_load import start_server

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")


def rows(ids: list[str], seed: int, **extra) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "_id": d,
            "text": " ".join(rng.choice(WORDS, rng.integers(4, 14))),
            "group": i % 5,
            "own": d,
            **extra,
        }
        for i, d in enumerate(ids)
    ]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from colzero import load_model

    tmp = tmp_path_factory.mktemp("served")
    model_dir = make_colbert().save(tmp / "model")
    model = load_model(str(model_dir))
    path = tmp / "idx"
    Index.build(model, rows([f"d{i}" for i in range(200)], 0, batch="first"), path, model_name=str(model_dir))
    log = open(tmp / "server.log", "w")  # noqa: SIM115 (closed below)
    try:
        proc, base = start_server(path, "--max-k", "50", output=log, timeout=300)
    except RuntimeError as exc:
        log.close()
        raise AssertionError(f"{exc}:\n{(tmp / 'server.log').read_text()}") from None
    yield base, proc, path, model
    proc.terminate()
    proc.wait(30)
    log.close()


GOOD = [
    ("plain", None, ["own"]),
    ("group", {"group": 2}, ["own", "group"]),
    ("added", {"batch": "added"}, ["own", "batch"]),
    ("new", {"source": "new"}, ["own", "source"]),
]

BAD = [  # (body, status, what the answer must say): each kind the service once failed on
    ('{"query": "protein", "filter": {"year": 9223372036854775808}}', 422, "64-bit"),
    (json.dumps({"query": "protein", "filter": {f"f{i}": i for i in range(1200)}}), 422, "at most 64 fields"),
    ('{"query": "prot\\ud800ein"}', 422, "lone surrogate"),
    ('{"query": "protein", "filter": {"source": "\\ud800"}}', 422, "lone surrogate"),
    ('{"query": "protein", "filters": {"group": 1}}', 422, "did you mean 'filter'?"),
    ('{"query": "protein", "k": true}', 422, "valid integer"),
    ('{"query": "protein", "filter": {"group": NaN}}', 422, "NaN is not allowed"),
    ('{"query": "protein", "filter": ' + "[" * 3000 + "]" * 3000 + "}", 422, "nested too deeply"),
    ('{"query": "' + "x" * (2 << 20) + '"}', 413, "exceeds the limit"),
]


def test_load_with_concurrent_changes_and_bad_requests(served):
    base, _, path, model = served
    log: list[dict] = []  # every request: kind, sent (monotonic), status, payload
    lock = threading.Lock()
    changes: list[tuple[str, float, set[str], int]] = []  # (kind, done at, ids, generation)
    writer_done = threading.Event()
    start = time.monotonic()

    def seen_after(t: float) -> set[str]:
        with lock:
            return {r["kind"] for r in log if r["sent"] > t and r["status"] is not None}

    def change(kind: str, fn, ids: set[str]) -> None:
        idx = fn()
        changes.append((kind, time.monotonic(), ids, idx.generation))
        deadline = time.monotonic() + 60  # let every kind of request meet this generation
        while seen_after(changes[-1][1]) < {k for k, _, _ in GOOD} | {"bad"} and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)

    def writer() -> None:
        try:
            time.sleep(0.5)
            idx = Index.load(path, model)
            d1 = {f"d{i}" for i in range(0, 60, 3)}
            change("delete", lambda: (idx.delete(sorted(d1)), idx)[1], d1)
            added = rows([f"n{i}" for i in range(20)], 1, batch="added")
            change("add", lambda: (idx.add(added), idx)[1], {r["_id"] for r in added})
            d2 = {f"n{i}" for i in range(5)} | {f"d{i}" for i in range(100, 120)}
            change("delete", lambda: (idx.delete(sorted(d2)), idx)[1], d2)
            rebuilt = rows([f"d{i}" for i in range(150, 260)], 2, source="new")
            change("rebuild", lambda: Index.build(model, rebuilt, path), {r["_id"] for r in rebuilt})
        finally:
            writer_done.set()

    def client(cid: int) -> int:
        """Send requests until the writer is done and 6 more after it (at least 50 in all);
        return how many were sent after. A time limit, not a count, bounds the loop: how many
        requests fit while the folder changes depends on the machine."""
        rng = np.random.default_rng(cid)
        with httpx.Client(base_url=base, timeout=60) as c:
            n = after = 0
            while (n < 50 or after < 6) and time.monotonic() - start < 200:
                n += 1
                after += writer_done.is_set()
                q = " ".join(rng.choice(WORDS, 3))
                if (n + cid) % 5 == 4:
                    body, status, needle = BAD[(n + cid) % len(BAD)]
                    entry = {"kind": "bad", "expect": (status, needle), "body": body[:80]}
                    sent = time.monotonic()
                    r = c.post("/search", content=body, headers={"content-type": "application/json"})
                else:
                    kind, flt, fields = GOOD[(n + cid) % len(GOOD)]
                    entry = {"kind": kind, "filter": flt}
                    sent = time.monotonic()
                    r = c.post("/search", json={"query": q, "k": 10, "filter": flt, "fields": fields})
                entry.update(sent=sent, status=r.status_code, payload=r.json())
                with lock:
                    log.append(entry)
        return after

    writer_thread = threading.Thread(target=writer)
    writer_thread.start()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        after_writer = list(pool.map(client, range(6)))
    writer_thread.join()
    elapsed = time.monotonic() - start
    assert [c[0] for c in changes] == ["delete", "add", "delete", "rebuild"]

    good = [r for r in log if r["kind"] != "bad"]
    bad = [r for r in log if r["kind"] == "bad"]
    assert min(after_writer) >= 6, after_writer  # every client met the final generation
    assert len(log) >= 300 and len(bad) >= 2 * len(BAD), (len(log), len(bad))
    for r in bad:
        status, needle = r["expect"]
        assert r["status"] == status and needle in json.dumps(r["payload"]), (r["body"], r["payload"])
    found_added = 0
    for r in good:
        assert r["status"] == 200, r["payload"]
        hits = r["payload"]["results"][0]
        for h in hits:
            assert h["fields"]["own"] == h["id"]  # fields are the hit's own document's
            for name, value in (r["filter"] or {}).items():
                assert h["fields"][name] == value
        ids = {h["id"] for h in hits}
        for kind, done, changed, generation in changes:
            if r["sent"] <= done:
                continue
            assert r["payload"]["generation"] >= generation
            if kind == "delete":
                assert not ids & changed, (kind, ids & changed)
            if kind == "rebuild":
                assert ids <= changed
        if r["kind"] == "added" and changes[1][1] < r["sent"] and r["payload"]["generation"] < changes[3][3]:
            assert ids and ids <= changes[1][2]  # the new documents, found by filter
            found_added += 1
        if r["kind"] == "new" and r["sent"] > changes[3][1]:
            assert len(ids) == 10
    assert found_added >= 1
    assert elapsed < 240
    during = sum(1 for r in log if changes[0][1] - 1 < r["sent"] < changes[-1][1])
    print(f"\n{len(log)} requests ({len(bad)} bad, {during} while the folder changed) in {elapsed:.1f} s")


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class PeakRSS:
    """The peak resident memory of a process from now on, in bytes: the kernel's high-water mark
    once reset (``/proc/PID/clear_refs``), else VmRSS sampled every millisecond."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sampled = 0
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            self.kernel = True
        except OSError:
            self.kernel = False
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._sample)
            self.thread.start()

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.sampled = max(self.sampled, _status_kb(self.pid, "VmRSS"))
            time.sleep(0.001)

    def peak(self) -> int:
        if self.kernel:
            return 1024 * _status_kb(self.pid, "VmHWM")
        self.stop.set()
        self.thread.join()
        return 1024 * self.sampled


def test_a_50mb_chunked_body_is_refused_early_with_bounded_memory(served):
    base, proc, _, _ = served
    url = base + "/search"
    chunk = b" " * 65536
    with httpx.Client(timeout=120) as c:  # warm every path once
        assert c.post(url, json={"query": "fox"}).status_code == 200
        assert c.post(url, content=(chunk for _ in range(40))).status_code == 413
    # 413 as soon as the limit passes: the answer is there while most of the body is unsent
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(40):  # 2.5 MiB of a body that never ends
            s.sendall(b"10000\r\n" + chunk + b"\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 413")
    time.sleep(0.5)
    baseline = 1024 * _status_kb(proc.pid, "VmRSS")
    peak = PeakRSS(proc.pid)
    n_chunks = 50_000_000 // len(chunk) + 1
    with httpx.Client(timeout=120) as c:
        r = c.post(
            url, content=(chunk for _ in range(n_chunks)), headers={"content-type": "application/json"}
        )
    assert r.status_code == 413 and "exceeds the limit of 1,048,576 bytes" in r.text
    grown = peak.peak() - baseline
    print(
        f"\nbaseline {baseline:,} B, peak {baseline + grown:,} B (+{grown:,} B; kernel high-water mark: {peak.kernel})"
    )
    assert grown < 4 * 2**20, (
        f"server memory grew by {grown:,} bytes for a {n_chunks * len(chunk):,}-byte body"
    )
    assert httpx.get(base + "/health").status_code == 200
