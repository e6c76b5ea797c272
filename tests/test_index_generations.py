"""Index generations: readers follow the folder consistently, one writer at a time, a kill at any
rename leaves an index that opens whole, leftovers of dead processes are removed (never a live
one's), folders of earlier versions open and convert."""

from __future__ import annotations

import gc
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, WORDS, make_colbert

from colzero.index import Index, IndexBusyError
from colzero.index import generations as gens


def rows(n: int, seed: int = 0, prefix: str = "d", **extra) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "_id": f"{prefix}{i}",
            "text": " ".join(rng.choice(WORDS, rng.integers(4, 14))),
            "group": i % 3,
            "own": f"{prefix}{i}",
            **extra,
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 60-document index (built in chunks of 25) that every test copies, and its model."""
    model = make_colbert()
    path = tmp_path_factory.mktemp("gen") / "idx"
    Index.build(model, rows(60), path, chunk_size=25)
    return path, model


def copy_of(built: Path, tmp_path: Path) -> Path:
    path = tmp_path / "idx"
    shutil.copytree(built, path)
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def all_ids(idx: Index) -> set[str]:
    return {d for d, _ in idx.search(["the fox"], k=1000)[0]}


def own_fields_ok(idx: Index, hits) -> bool:
    return all(f["own"] == d for (d, _), f in zip(hits, idx.fields([d for d, _ in hits]), strict=True))


def same_state(a: Index, b: Index) -> None:
    x, y = a.state, b.state
    assert (x.generation, x.doc_ids, x.pid_of, x.has_texts) == (
        y.generation,
        y.doc_ids,
        y.pid_of,
        y.has_texts,
    )
    for name in (
        "codes",
        "doclens",
        "doc_starts",
        "doc_segment",
        "seg_token_base",
        "ivf_pids",
        "ivf_offsets",
        "deleted",
    ):
        np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=name)
    assert [s.name for s in x.segments] == [s.name for s in y.segments]


def test_readers_follow_generations_and_keep_a_consistent_snapshot(source, tmp_path):
    built, model = source
    path = copy_of(built, tmp_path)
    reader, stale, writer = (Index.load(path, model) for _ in range(3))
    assert reader.generation == 1 and len(reader) == 60
    assert not reader.refresh()  # nothing published: one stat, no reload

    assert writer.delete(["d0", "d1"]) == 2 and writer.generation == 2
    assert reader.refresh() and reader.generation == 2 and len(reader) == 58
    same_state(reader, Index.load(path))
    assert not {"d0", "d1"} & all_ids(reader)
    assert {"d0", "d1"} <= all_ids(stale)  # not refreshed: still generation 1, whole
    assert stale.fields(["d0"]) == [{"text": stale.fields(["d0"])[0]["text"], "group": 0, "own": "d0"}]

    added = rows(5, seed=9, prefix="n", group=7)
    assert writer.add(added) == 5 and writer.generation == 3
    assert reader.refresh() and len(reader) == 63
    hits = reader.search(["quick brown fox"], k=10, filter={"group": 7})[0]
    assert {d for d, _ in hits} == {f"n{i}" for i in range(5)} and own_fields_ok(reader, hits)
    same_state(reader, Index.load(path))  # what refresh read incrementally is what a fresh load reads

    # a rebuild over the folder: a new base, published as generation 4
    new_rows = rows(30, seed=3, prefix="r", source="new")
    Index.build(model, new_rows, path, chunk_size=25)
    old_base = stale.base
    hits = stale.search(["quick brown fox"], k=60, filter={"group": 1})[0]
    assert hits and own_fields_ok(stale, hits)  # still generation 1: its base is held, not removed
    assert old_base.is_dir()
    assert reader.refresh() and reader.generation == 4 and reader.base != old_base
    assert all_ids(reader) == {r["_id"] for r in new_rows}
    hits = reader.search(["fox"], k=50, filter={"source": "new"})[0]
    assert len(hits) == 30 and own_fields_ok(reader, hits)
    for idx in (stale, writer):
        idx.refresh()
    del hits
    gc.collect()
    # no reader holds the old base any more: the next writer removes it
    assert reader.delete(["r0"]) == 1 and reader.generation == 5
    assert not old_base.exists()
    assert sorted(p.name for p in path.iterdir() if p.name.startswith("base-")) == [reader.base.name]


def test_a_second_writer_stops_naming_the_first_or_queues_with_wait(source, tmp_path):
    built, model = source
    path = copy_of(built, tmp_path)
    idx = Index.load(path, model)
    live = idx.base / f".seg-inprogress.tmp-{os.getpid()}"  # the lock holder's in-progress segment
    live.mkdir()
    with gens.writer_lock(path):
        with pytest.raises(IndexBusyError, match=rf"process {os.getpid()} is writing to this index"):
            idx.add(rows(3, prefix="x"))
        with pytest.raises(IndexBusyError, match=r"waited 0\.2 s"):
            idx.delete(["d3"], wait=0.2)
    assert live.is_dir() and len(Index.load(path)) == 60  # nothing of the first writer's touched

    released = threading.Event()

    def hold_then_release():
        with gens.writer_lock(path):
            released.wait(10)
            time.sleep(0.5)

    holder = threading.Thread(target=hold_then_release)
    holder.start()
    time.sleep(0.2)
    released.set()
    t0 = time.monotonic()
    assert idx.add(rows(3, prefix="x"), wait=30) == 3  # queued behind the holder, then done
    assert time.monotonic() - t0 >= 0.3
    holder.join()
    assert len(Index.load(path)) == 63 and Index.load(path).generation == 2


ADD = [sys.executable, "-m", "colzero.cli.main", "index", "add"]


def test_two_concurrent_cli_adds_succeed_in_turn_and_one_without_wait_stops_cleanly(tmp_path, capsys):
    from colzero import load_model
    from colzero.cli.main import main

    model_dir = make_colbert().save(tmp_path / "model")
    path = tmp_path / "idx"
    Index.build(load_model(str(model_dir)), rows(40), path, model_name=str(model_dir))
    files = {}
    for name in ("a", "b", "c"):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows(4, seed=5, prefix=f"{name}-")))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    with gens.writer_lock(path):  # a writer that is slow to finish: every add meets it
        procs = {
            name: subprocess.Popen(
                [*ADD, str(path), "--corpus", str(files[name]), "--wait", "300"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in ("a", "b")
        }
        capsys.readouterr()
        assert main(["index", "add", str(path), "--corpus", str(files["c"])]) == 75  # no --wait: stops
        assert capsys.readouterr().err.splitlines() == [
            f"colzero index: error: {path}: process {os.getpid()} is writing to this index; it was left "
            "untouched. Run again when it is done, or pass --wait SECONDS to queue behind it"
        ]
        time.sleep(1.0)
        assert procs["a"].poll() is None and procs["b"].poll() is None  # both queued
        assert len(Index.load(path)) == 40
    outs = {name: procs[name].communicate(timeout=300) for name in ("a", "b")}
    for name, (_, err) in outs.items():
        assert procs[name].returncode == 0, err
    generations = sorted(json.loads(out)["generation"] for out, _ in outs.values())
    assert generations == [2, 3]  # one after the other
    idx = Index.load(path)
    assert len(idx) == 48 and idx.generation == 3
    assert {f"{n}-{i}" for n in "ab" for i in range(4)} <= set(idx.doc_ids)
    assert not any(d.startswith("c-") for d in idx.doc_ids)


def replace_snapshots(monkeypatch, path: Path, out: Path) -> list[tuple[str, Path]]:
    """Copy the index folder as it is on disk just before each ``os.replace`` (what a process
    killed at that instant leaves), then do the rename."""
    real = os.replace
    taken: list[tuple[str, Path]] = []

    def replace(src, dst, *args, **kwargs):
        snap = out / f"kill-{len(taken)}"
        shutil.copytree(path, snap)
        taken.append((f"{Path(src).name} -> {Path(dst).name}", snap))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return taken


def as_dead(snapshot: Path, pid: int) -> None:
    """Rename this process's temporary entries in a snapshot to a dead process's."""
    for entry in list(snapshot.rglob(f"*.tmp-{os.getpid()}")):
        entry.rename(entry.with_name(entry.name.replace(f".tmp-{os.getpid()}", f".tmp-{pid}")))


@pytest.mark.parametrize("change", ["build", "add", "delete"])
def test_a_kill_at_each_rename_leaves_an_index_that_opens_whole(source, tmp_path, monkeypatch, change):
    built, model = source
    path = copy_of(built, tmp_path)
    idx = Index.load(path, model)
    before = (all_ids(idx), idx.search(["quick brown fox"], k=5))
    with monkeypatch.context() as m:
        snaps = replace_snapshots(m, path, tmp_path)
        if change == "build":
            Index.build(model, rows(20, prefix="r"), path)
            after = {f"r{i}" for i in range(20)}
        elif change == "add":
            idx.add(rows(4, prefix="n"))
            after = before[0] | {f"n{i}" for i in range(4)}
        else:
            idx.delete(["d5", "d6"])
            after = before[0] - {"d5", "d6"}
    renames = [name for name, _ in snaps]
    expected = {
        "build": [r".base-", r".CURRENT.tmp-"],
        "add": [r".seg-", r".CURRENT.tmp-"],
        "delete": [r".CURRENT.tmp-"],
    }[change]
    assert [r.split(" ")[0][: len(e)] for r, e in zip(renames, expected, strict=True)] == expected, renames
    dead = dead_pid()
    for name, snap in snaps:
        as_dead(snap, dead)
        reopened = Index.load(snap, model)
        assert all_ids(reopened) == before[0], name  # killed before the publishing rename: unchanged
        assert reopened.search(["quick brown fox"], k=5) == before[1]
        hits = reopened.search(["fox"], k=60, filter={"group": 2})[0]
        assert hits and own_fields_ok(reopened, hits)
        # the next writer rolls back and removes what the killed one left, then works
        assert reopened.delete(["d9"]) == 1
        assert all_ids(reopened) == before[0] - {"d9"}
        leftovers = [p for p in snap.rglob("*") if ".tmp-" in p.name]
        assert not leftovers, leftovers
        assert [p.name for p in snap.iterdir() if p.name.startswith("base-")] == [reopened.base.name]
        with sqlite3.connect(reopened.base / "docs.sqlite") as con:
            segs = {r[0] for r in con.execute("SELECT name FROM segments")}
        assert {p.name for p in reopened.base.iterdir() if p.name.startswith("seg-")} == segs
    assert all_ids(Index.load(path, model)) == after  # the change itself went through


def test_stale_leftovers_of_dead_processes_are_removed_and_a_live_ones_kept(source, tmp_path):
    built, model = source
    from colzero.data.readers import write_jsonl

    path = copy_of(built, tmp_path)
    idx = Index.load(path, model)
    dead = dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        made = {
            "dead_base": path / f".base-0123456789ab.tmp-{dead}",
            "live_base": path / f".base-ba9876543210.tmp-{live.pid}",
            "dead_seg": idx.base / f".seg-0123456789ab.tmp-{dead}",
            "orphan_seg": idx.base
            / "seg-000000000000",  # renamed, never registered: an add killed before commit
        }
        for p in made.values():
            p.mkdir()
            (p / "codes.npy").write_bytes(b"x" * 100)
        (path / f".CURRENT.tmp-{dead}").write_text("{}")
        assert idx.add(rows(2, prefix="z")) == 2
        assert made["live_base"].is_dir()  # a live process's, never touched
        assert not made["dead_base"].exists() and not made["dead_seg"].exists()
        assert not made["orphan_seg"].exists() and not (path / f".CURRENT.tmp-{dead}").exists()

        out = tmp_path / "kd.jsonl"  # the data tools' outputs: pairs, mine, score
        (tmp_path / f".kd.jsonl.tmp-{dead}").write_text("half")
        (tmp_path / f".kd.jsonl.tmp-{live.pid}").write_text("in progress")
        assert write_jsonl(out, [{"a": 1}]) == 1
        assert not (tmp_path / f".kd.jsonl.tmp-{dead}").exists()
        assert (tmp_path / f".kd.jsonl.tmp-{live.pid}").read_text() == "in progress"
    finally:
        live.kill()
        live.wait()


def make_legacy(source: Path, target: Path) -> None:
    """A format-2 folder (as colzero wrote before generations) with the same documents."""
    base = Index.load(source).base
    shutil.copytree(base, target, ignore=shutil.ignore_patterns(".readers"))
    con = sqlite3.connect(target / "docs.sqlite")
    con.executescript(
        """
        PRAGMA journal_mode=DELETE;
        CREATE TABLE old (pid INTEGER PRIMARY KEY, doc_id TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,
                          text TEXT, fields TEXT, origin TEXT);
        INSERT INTO old SELECT pid, doc_id, deleted_gen IS NOT NULL, text, fields, origin FROM docs;
        DROP TABLE docs;
        ALTER TABLE old RENAME TO docs;
        CREATE UNIQUE INDEX docs_live_id ON docs(doc_id) WHERE deleted = 0;
        CREATE TABLE segs2 (name TEXT PRIMARY KEY, first_pid INTEGER NOT NULL, n_docs INTEGER NOT NULL,
                            n_tokens INTEGER NOT NULL, files TEXT NOT NULL);
        INSERT INTO segs2 SELECT name, first_pid, n_docs, n_tokens, files FROM segments;
        DROP TABLE segments;
        ALTER TABLE segs2 RENAME TO segments;
        UPDATE docs SET deleted = 1 WHERE doc_id = 'd2';
        """
    )
    con.close()
    meta = json.loads((target / "metadata.json").read_text())
    (target / "metadata.json").write_text(json.dumps({**meta, "format_version": 2}))


def test_a_format_2_folder_opens_converts_on_write_and_is_replaced_by_a_rebuild(source, tmp_path):
    built, model = source
    legacy = tmp_path / "legacy"
    make_legacy(built, legacy)
    idx = Index.load(legacy, model)
    assert idx.generation == 0 and len(idx) == 59 and "d2" not in idx
    reference = Index.load(built, model)
    # same documents and order; scores to float32 rounding (the two indexes score different
    # document counts, so the CPU GEMM may block the sums differently)
    got = idx.search(["quick brown fox"], k=5)[0]
    expected = [h for h in reference.search(["quick brown fox"], k=6)[0] if h[0] != "d2"][:5]
    assert [h[0] for h in got] == [h[0] for h in expected]
    assert [h[1] for h in got] == pytest.approx([h[1] for h in expected], rel=1e-6)
    assert idx.add(rows(2, prefix="n")) == 2 and idx.generation == 1
    assert gens.read_pointer(legacy) == gens.Pointer(".", 1) and idx.base == legacy
    assert idx.delete(["d3"]) == 1 and len(Index.load(legacy, model)) == 60
    Index.build(model, rows(10, prefix="r"), legacy)
    fresh = Index.load(legacy, model)
    assert fresh.generation == 3 and all_ids(fresh) == {f"r{i}" for i in range(10)}
    del idx
    gc.collect()
    fresh.delete(["r0"])  # the next writer removes the old format's files
    left = sorted(p.name for p in legacy.iterdir())
    assert left == sorted([".lock", ".readers", "CURRENT", fresh.base.name]), left


def test_an_earlier_versions_interrupted_replace_is_finished_or_rolled_back(source, tmp_path):
    built, model = source
    old, new = tmp_path / "old-src", tmp_path / "new-src"
    make_legacy(built, old)
    make_legacy(built, new)
    Index.load(new, model).delete(["d7"])  # tell the two apart
    target = tmp_path / "idx"
    # killed between its two renames: the index moved aside, the new one complete next to it
    shutil.copytree(old, tmp_path / ".idx.old-1a2b3c4d")
    shutil.copytree(new, tmp_path / ".idx.tmp-5e6f7a8b")
    idx = Index.load(target, model)  # finished on open
    assert "d7" not in idx and not list(tmp_path.glob(".idx.*"))
    shutil.rmtree(target)
    # killed while the new one was still being written (no metadata.json yet): rolled back
    shutil.copytree(old, tmp_path / ".idx.old-1a2b3c4d")
    shutil.copytree(new, tmp_path / ".idx.tmp-5e6f7a8b")
    (tmp_path / ".idx.tmp-5e6f7a8b" / "metadata.json").unlink()
    idx = Index.load(target, model)
    assert "d7" in idx and len(idx) == 59
