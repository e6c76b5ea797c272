"""The data path at scale: one reader and one document rule everywhere, sources on memory-mapped
Arrow (multi-split datasets expand into sources, id tables without dicts), rows checked as they are
read (also in streamed sources), broken input stopping every tool the same way, and a 2-rank run
with DataLoader workers that replays the identical row ids after a kill."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from colzero.cli.main import main as cli
from colzero.data.readers import DataError, document_text, iter_documents, load_text_table
from colzero.data.sources import StreamSource, TrainingSource, expand_splits, load_sources, source_sizes
from colzero.data.tables import open_id_table
from colzero.evaluation import load_dataset
from colzero.training.config import DataSource, LossConfig, OptimConfig, PhaseConfig
from tests.conftest import WORDS, make_colbert
from tests.test_trainer_distributed import DIST_ENV, TIMEOUT_S, _free_port


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COLZERO_CACHE", str(tmp_path / "cache"))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


CORPUS = [
    {"_id": "d1", "title": "  Late interaction ", "text": " ColBERT scores with MaxSim. "},
    {"_id": "d2", "title": "", "text": "a fox  jumps"},
    {"_id": "d3", "text": "no title field"},
    {"_id": "d4", "title": "Only a title", "text": ""},
]


def test_one_document_string_everywhere(tmp_path):
    """Training (id table), evaluation, the data tools and the demo read the same text."""
    beir = tmp_path / "beir"
    write_jsonl(beir / "corpus.jsonl", CORPUS)
    write_jsonl(beir / "queries.jsonl", [{"_id": "q1", "text": "what scores?"}])
    (beir / "qrels").mkdir()
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    expected = [
        "Late interaction   ColBERT scores with MaxSim.",
        "a fox  jumps",
        "no title field",
        "Only a title",
    ]
    ids = [d["_id"] for d in CORPUS]
    training = open_id_table(str(beir / "corpus.jsonl")).texts(ids)
    evaluation = load_dataset(beir).corpus_texts
    tools = [load_text_table(beir)[i] for i in ids]
    reader = [d.text for d in iter_documents(beir)]
    assert training == evaluation == tools == reader == expected


def _split_table(split: str, n: int) -> pa.Table:
    return pa.table(
        {"query": [f"{split} q{i}" for i in range(n)], "document": [f"{split} d{i}" for i in range(n)]}
    )


@pytest.mark.parametrize("layout", ["folders", "prefixes", "save_to_disk"])
def test_multi_split_dataset_expands_into_sources(tmp_path, layout):
    sizes = {"alpha": 40, "beta": 24, "gamma": 8}
    root = tmp_path / "ds"
    if layout == "folders":  # root/<split>/*.parquet
        for split, n in sizes.items():
            (root / split).mkdir(parents=True)
            pq.write_table(_split_table(split, n)[: n // 2], root / split / "part-0.parquet")
            pq.write_table(_split_table(split, n)[n // 2 :], root / split / "part-1.parquet")
    elif layout == "prefixes":  # root/<split>-00000-of-00001.parquet, the hub's layout
        root.mkdir()
        for split, n in sizes.items():
            pq.write_table(_split_table(split, n), root / f"{split}-00000-of-00001.parquet")
    else:
        import datasets

        datasets.DatasetDict(
            {s: datasets.Dataset(_split_table(s, n)) for s, n in sizes.items()}
        ).save_to_disk(str(root))
    spec = DataSource("nomic", str(root), splits="*", query="query", positive="document")
    expanded = expand_splits(spec)
    assert [s.name for s in expanded] == ["nomic/alpha", "nomic/beta", "nomic/gamma"]
    sources = load_sources([spec], LossConfig(), 8)
    assert [len(s) for s in sources] == [40, 24, 8]
    assert sources[1].examples([3])[0].query == "beta q3"
    listed = load_sources([dataclasses.replace(spec, splits=["gamma", "alpha"])], LossConfig(), 8)
    assert [s.name for s in listed] == ["nomic/gamma", "nomic/alpha"]
    plan = {s.name: s.rows for s in source_sizes([spec])}
    assert plan == {"nomic/alpha": 40, "nomic/beta": 24, "nomic/gamma": 8}
    with pytest.raises(DataError, match="no data files of split 'delta'|no split 'delta'"):
        load_sources([dataclasses.replace(spec, splits=["delta"])], LossConfig(), 8)


def test_id_table_is_memory_mapped_and_names_duplicates(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", CORPUS + [{"_id": "d2", "text": "again"}])
    with pytest.raises(
        DataError,
        match=r"corpus\.jsonl:5: field '_id': duplicate document id 'd2' \(first at .*corpus\.jsonl:2\)",
    ):
        open_id_table(str(corpus))
    table = open_id_table(str(write_jsonl(tmp_path / "ok.jsonl", CORPUS)))
    assert isinstance(table.keys, np.memmap) and isinstance(table.rows, np.memmap)
    assert table.lookup(["d3", "nope", "d1"]).tolist() == [2, -1, 0]


def _bad_rows(tmp_path) -> list[dict]:
    rows = [{"q": f"query {i}", "p": f"doc {i}"} for i in range(12)]
    rows[9] = {"q": "query 9", "p": 7}  # a number where text belongs
    return rows


def test_bad_row_in_streamed_jsonl_source_names_file_line_field(tmp_path):
    data = write_jsonl(tmp_path / "stream.jsonl", _bad_rows(tmp_path))
    spec = DataSource("s", str(data), query="q", positive="p", streaming=True)
    [source] = load_sources([spec], LossConfig(), 4)
    assert isinstance(source, StreamSource) and len(source) == 12
    assert [e.query for e in source.examples([0, 1, 2, 3])] == [f"query {i}" for i in range(4)]
    assert source.examples([4, 5, 6, 7])[0].positive == "doc 4"
    with pytest.raises(DataError, match=r"stream\.jsonl:10: field 'p' must hold text, got int"):
        source.examples([8, 9, 10, 11])
    # a new epoch reads the stream from its start again
    assert source.examples([0, 1])[1].query == "query 1"


def test_bad_row_in_streamed_parquet_and_memory_mapped_sources(tmp_path):
    rows = _bad_rows(tmp_path)
    rows[9] = {"q": None, "p": "doc 9"}
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data.parquet")
    spec = DataSource("s", str(tmp_path / "data.parquet"), query="q", positive="p", streaming=True)
    [stream] = load_sources([spec], LossConfig(), 4)
    with pytest.raises(DataError, match=r"data\.parquet row 9: field 'q' is missing"):
        list(stream.check_all())
    [mapped] = load_sources([dataclasses.replace(spec, streaming=False)], LossConfig(), 4)
    assert isinstance(mapped, TrainingSource) and len(mapped) == 12
    with pytest.raises(DataError, match=r"data\.parquet row 9: field 'q' is missing"):
        mapped.examples([2, 9])


# ---------------------------------------------------------------------- every tool, the same way
DEFECTS = {
    "duplicate id": (
        b'{"_id": "a", "text": "one two three four"}\n{"_id": "b", "text": "x y z w"}\n'
        b'{"_id": "a", "text": "five six seven"}\n',
        r"corpus\.jsonl:3: field '_id': duplicate document id 'a' \(first at .*corpus\.jsonl:1\)",
    ),
    "undecodable bytes": (
        b'{"_id": "a", "text": "one two three four"}\n{"_id": "b", "text": "bad \xff\xfe"}\n',
        r"corpus\.jsonl:2: undecodable bytes",
    ),
    "cut-off last line": (
        b'{"_id": "a", "text": "one two three four"}\n{"_id": "b", "text": "cut',
        r"corpus\.jsonl:2: the last line is cut off",
    ),
    "empty corpus": (b"\n", r"corpus\.jsonl: the corpus is empty"),
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(make_colbert(query_length=8, document_length=12).save(tmp_path_factory.mktemp("m") / "model"))


def _tool_args(tool: str, root: Path, model: str) -> tuple[list[str], Path]:
    corpus, out = root / "corpus.jsonl", root / "out"
    train = write_jsonl(root / "train.jsonl", [{"query": "one", "pos": ["a"], "neg": ["b"]}])
    if tool == "pairs":
        return ["pairs", str(corpus), str(out)], out
    if tool == "mine":
        return ["mine", str(train), str(corpus), str(out)], out
    if tool == "score":
        return ["score", model, str(train), str(corpus), str(out), "--n-candidates", "2"], out
    if tool == "evaluate":
        write_jsonl(root / "queries.jsonl", [{"_id": "q", "text": "one"}])
        (root / "qrels").mkdir(exist_ok=True)
        (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\ta\t1\n")
        return ["evaluate", model, "--datasets", str(root), "--output", str(out), "--no-plots"], out
    if tool == "index":
        return ["index", "build", "--model", model, "--corpus", str(corpus), "--output", str(out)], out
    # train: the corpus is a phase's document table
    return [
        "train-phase",
        "--model", model, "--output", str(out), "--batch-size", "1", "--lr", "1e-4", "--max-steps", "1",
        "--data", str(train),
    ], out  # fmt: skip


@pytest.mark.parametrize("defect", list(DEFECTS))
@pytest.mark.parametrize("tool", ["pairs", "mine", "score", "evaluate", "index", "train"])
def test_every_tool_stops_on_broken_input_and_writes_nothing(
    tmp_path, tiny_model, capsys, tool, defect, monkeypatch
):
    content, pattern = DEFECTS[defect]
    (tmp_path / "corpus.jsonl").write_bytes(content)
    args, out = _tool_args(tool, tmp_path, tiny_model)
    if tool == "train":  # the corpus joins the phase's rows by id
        cfg = tmp_path / "phase.toml"
        cfg.write_text(
            f'name = "p"\nmodel = "{tiny_model}"\noutput_dir = "{out}"\nbatch_size = 1\nmax_steps = 1\n'
            f'[optim]\nlearning_rate = 1e-4\n[[sources]]\nname = "s"\npath = "{tmp_path / "train.jsonl"}"\n'
            f'documents = "{tmp_path / "corpus.jsonl"}"\n'
        )
        args = ["train-phase", "--config", str(cfg)]
    before = set(tmp_path.rglob("*"))
    assert cli(args) == 2  # bad input
    err = capsys.readouterr().err
    assert __import__("re").search(pattern, err), err
    created = {p for p in set(tmp_path.rglob("*")) - before if "cache" not in p.parts}
    if tool == "train":  # the phase folder holds its config only: no checkpoint, no model
        created = {p for p in created if p.name not in ("out", "phase_config.json")}
    assert not created, sorted(map(str, created))


def test_a_run_that_would_write_nothing_fails(tmp_path, tiny_model, capsys):
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "a", "text": "short"}, {"_id": "b", "text": "tiny"}])
    assert cli(["pairs", str(tmp_path / "corpus.jsonl"), str(tmp_path / "pairs.jsonl")]) == 2
    assert "no pairs" in capsys.readouterr().err and not (tmp_path / "pairs.jsonl").exists()
    train = write_jsonl(tmp_path / "train.jsonl", [{"query": "q", "pos": ["a"], "neg": []}])
    args = ["score", tiny_model, str(train), str(tmp_path / "corpus.jsonl"), str(tmp_path / "kd.jsonl")]
    assert cli([*args, "--n-candidates", "4"]) == 2
    assert "nothing to score" in capsys.readouterr().err and not (tmp_path / "kd.jsonl").exists()


# ---------------------------------------------------------------------- 2 ranks, workers, kill, resume
STEPS = 4


def _phase(root: Path) -> PhaseConfig:
    start = make_colbert(query_length=8, document_length=12)
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        setattr(start.backbone.config, key, 0.0)
    model = str(start.save(root / "start"))
    rng = np.random.default_rng(0)
    rows = [{"q": " ".join(rng.choice(WORDS, 3)), "p": " ".join(rng.choice(WORDS, 6))} for _ in range(40)]
    pq.write_table(pa.Table.from_pylist(rows[:24]), root / "a.parquet")
    write_jsonl(root / "b.jsonl", rows[24:])
    return PhaseConfig(
        name="p",
        model=model,
        output_dir=str(root / "out"),
        sources=[
            DataSource("a", str(root / "a.parquet"), query="q", positive="p"),
            DataSource("b", str(root / "b.jsonl"), query="q", positive="p"),
        ],
        batch_size=4,
        max_steps=STEPS,
        seed=3,
        precision="fp32",
        save_every=2,
        num_workers=2,
        loss=LossConfig(kind="contrastive", temperature=0.1),
        optim=OptimConfig(learning_rate=1e-3),
        data_cache=str(root / "cache"),
    )


class Killed(Exception):
    pass


def _recording_worker(rank: int, world: int, port: int, cfg: PhaseConfig, kill: int | None, log: str) -> None:
    from colzero.data.loader import BatchReader
    from colzero.training.trainer import run_phase

    os.environ.update(
        CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
    )  # fmt: skip
    torch.set_num_threads(1)
    read = BatchReader.__getitem__

    def recorded(self, request):  # runs in the DataLoader worker processes (forked after this patch)
        with open(f"{log}-rank{rank}.jsonl", "a") as fh:
            fh.write(
                json.dumps(
                    {"pos": [request.position.epoch, request.position.step], "rows": request.rows.tolist()}
                )
                + "\n"
            )
        return read(self, request)

    BatchReader.__getitem__ = recorded

    def stop(step, metrics):
        if step == kill:
            raise Killed

    try:
        run_phase(cfg, resume=True, show_progress=False, step_callback=stop)
    except Killed:
        pass
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run(world: int, cfg: PhaseConfig, kill: int | None, log: Path) -> None:
    ctx = mp.spawn(
        _recording_worker, args=(world, _free_port(), cfg, kill, str(log)), nprocs=world, join=False
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("2-rank run did not finish")


def _reads(log: Path, rank: int) -> dict[tuple[int, int], list[int]]:
    out: dict[tuple[int, int], list[int]] = {}
    for line in Path(f"{log}-rank{rank}.jsonl").read_text().splitlines():
        r = json.loads(line)
        key = tuple(r["pos"])
        assert out.setdefault(key, r["rows"]) == r["rows"]  # a position always reads the same rows
        out[key] = r["rows"]
    return out


def test_two_ranks_with_workers_replay_identical_rows_after_a_kill(tmp_path, monkeypatch):
    for key in DIST_ENV:
        monkeypatch.delenv(key, raising=False)
    cfg = _phase(tmp_path)
    full = dataclasses.replace(cfg, output_dir=str(tmp_path / "full"))
    _run(2, full, None, tmp_path / "full-log")
    _run(2, cfg, 3, tmp_path / "cut-log")  # killed after step 3: the last checkpoint is step 2
    state = torch.load(
        next((tmp_path / "out" / "checkpoints").glob("step-00000002")) / "training_state.pt",
        weights_only=False,
    )
    resume_at = tuple(state["position"].values())
    _run(2, cfg, None, tmp_path / "resumed-log")
    for rank in (0, 1):
        full_reads = _reads(tmp_path / "full-log", rank)
        cut, resumed = _reads(tmp_path / "cut-log", rank), _reads(tmp_path / "resumed-log", rank)
        assert min(resumed) == resume_at  # the resumed run starts where the checkpoint says
        consumed = {p: r for p, r in cut.items() if p < resume_at} | resumed
        for pos in range(STEPS):  # every consumed position reads the rows the uninterrupted run read
            key = sorted(full_reads)[pos]
            assert consumed[key] == full_reads[key], (rank, key)
    a = torch.load(
        next((tmp_path / "full" / "checkpoints").glob(f"step-{STEPS:08d}")) / "training_state.pt",
        weights_only=False,
    )
    b = torch.load(
        next((tmp_path / "out" / "checkpoints").glob(f"step-{STEPS:08d}")) / "training_state.pt",
        weights_only=False,
    )
    assert a["position"] == b["position"]


def test_texts_that_look_like_lists_stay_texts_and_kd_list_strings_parse(tmp_path):
    rows = [{"q": "x", "p": "[1] a document that cites"} for _ in range(4)]
    [source] = load_sources(
        [DataSource("s", str(write_jsonl(tmp_path / "p.jsonl", rows)), query="q", positive="p")],
        LossConfig(),
        2,
    )
    assert source.examples([0])[0].positive == "[1] a document that cites"
    kd = [{"q": "x", "ids": "['a', 'b']", "s": "[0.5, 0.25]"} for _ in range(2)]
    spec = DataSource(
        "kd", str(write_jsonl(tmp_path / "kd.jsonl", kd)), query="q", candidate_ids="ids", teacher_scores="s"
    )
    [kd_source] = load_sources([spec], LossConfig(kind="distillation", n_candidates=2), 2)
    ex = kd_source.examples([1])[0]
    assert ex.candidates == ["a", "b"] and ex.scores == [0.5, 0.25]


def _mapping_flags(path: str) -> list[list[str]]:
    """VmFlags of this process's mappings of ``path`` (Linux ``/proc/self/smaps``)."""
    flags, current = [], None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
            current = fields[5] if len(fields) > 5 else ""
        elif fields and fields[0] == "VmFlags:" and current == path:
            flags.append(fields[1:])
    return flags


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc/self/smaps")
def test_training_tables_are_advised_for_random_reads(tmp_path):
    rows = [{"q": f"query {i}", "p": f"d{i % 3 + 1}"} for i in range(40)]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", CORPUS)
    spec = DataSource(
        "s", str(write_jsonl(tmp_path / "t.jsonl", rows)), query="q", positive="p", documents=str(corpus)
    )
    source = TrainingSource(spec, LossConfig())
    arrows = sorted({str(p) for p in Path(os.environ["COLZERO_CACHE"]).rglob("*.arrow")})
    assert len(arrows) == 2  # the rows and the corpus, both memory-mapped
    for arrow in arrows:
        flags = _mapping_flags(arrow)
        assert flags and all("rr" in f for f in flags), (arrow, flags)  # VM_RAND_READ: no read-around
    got = source.examples(np.array([3, 1]))
    assert [e.query for e in got] == ["query 3", "query 1"]
    assert [e.positive for e in got] == [
        document_text(CORPUS[0]["title"], CORPUS[0]["text"]),
        document_text("", "a fox  jumps"),
    ]


@pytest.mark.parametrize("kind", ["contrastive", "distillation"])
def test_worker_batches_travel_as_one_storage_per_dtype(kind):
    from colzero.data.collate import Collator
    from colzero.data.loader import one_storage_per_dtype
    from colzero.data.sources import ContrastiveExample, DistillationExample

    model = make_colbert()
    if kind == "contrastive":
        examples = [
            ContrastiveExample(f"query {i}", " ".join(WORDS[: i + 2]), [f"neg {j} of {i}" for j in range(2)])
            for i in range(3)
        ]
    else:
        examples = [
            DistillationExample(
                f"query {i}", [" ".join(WORDS[: i + j + 1]) for j in range(3)], [0.1, 0.2, 0.3]
            )
            for i in range(3)
        ]
    batch = Collator(model)(examples)
    packed = one_storage_per_dtype(batch)
    assert type(packed) is type(batch)

    def tensors(value, path=""):
        if isinstance(value, torch.Tensor):
            yield path, value
        elif dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                yield from tensors(getattr(value, f.name), f"{path}.{f.name}")

    before, after = dict(tensors(batch)), dict(tensors(packed))
    assert before.keys() == after.keys() and len(before) >= 5
    for name, t in before.items():
        assert after[name].dtype == t.dtype and torch.equal(after[name], t), name
    storages = {}
    for t in after.values():
        storages.setdefault(t.dtype, set()).add(t.untyped_storage().data_ptr())
    assert all(len(ptrs) == 1 for ptrs in storages.values()), storages
    assert packed.queries.positions == batch.queries.positions
