"""What a person sees: the quickstart's first steps in a subprocess (quiet at the default level,
complete with -vv, a summary table that holds summary.json's nDCG@10), a small index build
without faiss clustering warnings, and the live view's lines."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, make_colbert, minilm_path, quickstart_prepare, shared_path

#: third-party noise the default level must not print (issue 22)
NOISE = ("LOAD REPORT", "Writing model shards", "vocab-expansion", "WARNING clustering")


def tiny_beir(root: Path, n_queries: int = 8, n_extra: int = 40) -> Path:
    """A slice of ../shared's SciFact-mini: a few test queries, their documents and some others."""
    src = shared_path("data", "beir", "scifact-mini")
    qrels = [line.split("\t") for line in (src / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    queries = list(dict.fromkeys(q for q, _, _ in qrels))[:n_queries]
    keep = [(q, d, s.strip()) for q, d, s in qrels if q in queries]
    wanted = {d for _, d, _ in keep}
    docs = [json.loads(line) for line in (src / "corpus.jsonl").read_text().splitlines()]
    docs = [d for d in docs if d["_id"] in wanted] + [d for d in docs if d["_id"] not in wanted][:n_extra]
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    texts = {json.loads(line)["_id"]: line for line in (src / "queries.jsonl").read_text().splitlines()}
    (root / "queries.jsonl").write_text("".join(texts[q] + "\n" for q in queries))
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in keep)
    )
    return root


def quickstart_overrides(evaluation: Path | None) -> list[str]:
    """The quickstart recipe with its first steps only: small preparation, 2 steps per phase."""
    prepare = quickstart_prepare((200, 100), kd_queries=8, kd_max_length=48)
    phases = [
        {"max_steps": 2, "batch_size": 8, "loss": {"mini_batch_size": 4}, "save_every": 1},
        {"max_steps": 2, "batch_size": 4, "save_every": 1},
        {"max_steps": 2, "batch_size": 4, "loss": {"n_candidates": 4}, "save_every": 1},
    ]
    sets = ["--set", f"prepare={json.dumps(prepare)}", "--set", f"phases={json.dumps(phases)}"]
    if evaluation is not None:
        ev = {"datasets": [str(evaluation)], "intermediate_datasets": [str(evaluation)], "batch_size": 16}
        sets += ["--set", f"evaluation={json.dumps(ev)}"]
    return sets


def colzero(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    env.pop("CI", None)  # transformers propagates its logs under CI=1; the default must not matter
    return subprocess.run(
        [sys.executable, "-m", "colzero.cli.main", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def table_rows(text: str, title: str) -> dict[str, list[str]]:
    """First cell -> other cells of the rich table titled ``title``."""
    rows: dict[str, list[str]] = {}
    lines = text[text.index(title) :].splitlines()[1:]
    for line in lines:
        if line.startswith(("└", "╰")):
            break
        cells = [c.strip() for c in re.split(r"[│┃]", line)]
        if len(cells) > 2 and line.startswith("│"):
            rows[cells[1]] = cells[2:-1]
    return rows


@pytest.fixture(scope="module")
def quickstart_assets():
    shared_path("models", "splade-tiny-bert")
    shared_path("data", "train", "scifact-train-hn", "train.jsonl")
    shared_path("data", "beir", "scifact", "corpus.jsonl")
    minilm_path()


def test_quickstart_is_quiet_and_ends_with_its_summary(tmp_path, quickstart_assets):
    beir = tiny_beir(tmp_path / "scifact-slice")
    run = tmp_path / "run"
    done = colzero("train", "quickstart", "-o", str(run), *quickstart_overrides(beir), cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    for noise in NOISE:
        assert noise not in output, f"{noise!r} at the default level:\n{output[-4000:]}"
    assert "DEBUG" not in output and "INFO" not in output  # no library (or colzero) chatter
    assert done.stderr.strip() == "", done.stderr[-2000:]
    # stdout is no terminal here: plain lines, one per phase and one per evaluation
    lines = done.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines if ln.startswith("phase ")] == [
        "phase unsupervised",
        "phase supervised",
        "phase distillation",
    ]
    assert sum(ln.startswith("evaluated ") for ln in lines) == 3  # start, phase 2, final on one set
    # the summary table at the end holds summary.json's nDCG@10 values
    summary = json.loads((run / "summary.json").read_text())
    table = table_rows(done.stdout, "nDCG@10 (x100)")
    stages = list(summary["evaluation"])
    assert stages == ["start", "phase-2-supervised", "phase-3-distillation"]
    for stage, scores in summary["evaluation"].items():
        label = f"final ({stage})" if stage == stages[-1] else stage
        assert table[label] == [f"{100 * scores['scifact-slice']['ndcg@10']:.2f}"]
    costs = table_rows(done.stdout, "colzero run: quickstart")
    assert [costs[p][0] for p in ("phase-1-unsupervised", "phase-2-supervised", "phase-3-distillation")] == [
        "2"
    ] * 3
    assert f"final model: {run / 'final'}" in done.stdout and str(run / "summary.json") in done.stdout


def test_the_noise_comes_back_with_vv(tmp_path, quickstart_assets):
    done = colzero(
        "-vv",
        "train",
        "quickstart",
        "-o",
        str(tmp_path / "run"),
        "--no-eval",
        *quickstart_overrides(None),
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    for noise in NOISE[:3]:  # no index is built here (see the index test for faiss)
        assert noise in output, f"{noise!r} missing with -vv"
    assert " DEBUG " in output and "INFO colzero.training.pipeline" in output


def test_a_small_index_build_prints_no_clustering_warning(tmp_path, capfd):
    import faiss
    import numpy as np

    from colzero.index import Index

    # the check can fail: faiss itself prints this warning (from C++, on the process's stderr)
    faiss.Kmeans(8, 16, niter=1, verbose=False).train(
        np.random.default_rng(0).random((64, 8), dtype=np.float32)
    )
    assert "WARNING clustering" in capfd.readouterr().err
    words = [
        "late",
        "interaction",
        "retrieval",
        "model",
        "scores",
        "every",
        "query",
        "token",
        "against",
        "document",
        "tokens",
    ]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"_id": f"d{i}", "text": " ".join(words[i % 7 : i % 7 + 5])}) + "\n" for i in range(60)
        )
    )
    Index.build(make_colbert(embedding_dim=32), corpus, tmp_path / "idx")
    captured = capfd.readouterr()
    assert "WARNING clustering" not in captured.err + captured.out


def test_index_build_cli_is_quiet(tmp_path):
    model = make_colbert(embedding_dim=32).save(tmp_path / "m")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"_id": f"d{i}", "text": f"document {i} about fox {i % 5}"}) + "\n" for i in range(80)
        )
    )
    done = colzero(
        "index",
        "build",
        "--model",
        str(model),
        "--corpus",
        str(corpus),
        "--output",
        str(tmp_path / "idx"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for noise in NOISE:
        assert noise not in done.stdout + done.stderr


# ---------------------------------------------------------------------- the live view
def test_live_view_shows_phase_progress_and_results():
    from rich.console import Console

    from colzero.cli.live import LiveView

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=140, color_system=None)
    with LiveView(console, "colzero train demo") as view:
        view.run_started("demo", ["unsupervised", "supervised"])
        view.evaluation_started("start", "scifact")
        view.evaluation_finished("start", "scifact", {"ndcg@10": 0.3586}, 12.0)
        view.phase_started("unsupervised", 60, 0)
        for step in range(1, 31):
            view.phase_step(
                "unsupervised", step, {"loss": 2.5, "examples": 128.0 * step, "wall_s": 0.5 * step}
            )
        view.progress.refresh()
        middle = out.getvalue()
        view.phase_step("unsupervised", 60, {"loss": 2.25, "examples": 7680.0, "wall_s": 30.0})
        view.phase_finished("unsupervised", {"steps": 60, "wall_s": 30.0, "examples": 7680, "skipped": False})
        view.phase_finished("supervised", {"skipped": True})
    final = out.getvalue()
    assert "phase unsupervised" in middle and "30/60" in middle and "ETA" in middle
    assert "loss 2.5000" in middle and "256 ex/s" in middle  # 128 examples per 0.5 s of training
    assert "nDCG@10 35.86" in final and "60/60" in final and "loss 2.2500" in final
    assert "done earlier, skipped" in final and "phases 2/2" in final


def test_plain_view_prints_one_line_per_phase_and_evaluation():
    from rich.console import Console

    from colzero.cli.live import PlainView

    out = io.StringIO()
    view = PlainView(Console(file=out, width=160))
    view.phase_started("supervised", 4, 0)
    for step in range(1, 5):
        view.phase_step(
            "supervised", step, {"loss": 1.0 / step, "examples": 32.0 * step, "wall_s": 2.0 * step}
        )
    view.phase_finished("supervised", {"steps": 4, "wall_s": 8.0, "examples": 128})
    view.evaluation_finished("phase-2-supervised", "scifact", {"ndcg@10": 0.6376}, 61.0)
    assert out.getvalue().splitlines() == [
        "phase supervised: 4 steps, loss 0.2500, 16.0 examples/s, 8.0 s training",
        "evaluated phase-2-supervised on scifact: nDCG@10 63.76 (1:01)",
    ]


def test_live_view_keeps_the_newest_rows_on_screen():
    from rich.console import Console

    from colzero.cli import live

    view = live.LiveView(Console(file=io.StringIO(), force_terminal=True, width=120), "many")
    with view:
        for i in range(live.MAX_ROWS + 5):
            view.evaluation_started(f"m{i}", "d")
            view.evaluation_finished(f"m{i}", "d", {"ndcg@10": 0.5}, 1.0)
        view.evaluation_started("running", "d")
        shown = [t.description for t in view.progress.tasks if t.visible and t.id != view.header]
    assert len(shown) == live.MAX_ROWS and shown[-1] == "evaluate running on d"
    assert shown[0] == f"evaluate m{5 + 1} on d"  # the oldest finished rows went first
