"""Cost in every plan: device-hours projected from the committed gpu_check records and a CPU
calibration, per phase and in total; a card without a record is not measured."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO, make_colbert

from colzero.training.projection import (
    CpuCalibration,
    PhaseWork,
    RecordError,
    calibrate_cpu,
    load_records,
    phase_steps,
    project_cpu,
    project_gpu,
    read_record,
    records_folder,
    records_for,
)
from colzero.training.recipe import load_recipe

RECORD = REPO / "benchmarks" / "results" / "gpu" / "2026-11-26-H200.json"


def cli(capsys, *argv: str) -> str:
    from colzero.cli.main import main

    assert main(list(argv)) == 0
    return capsys.readouterr().out


def fmt(hours: float) -> str:
    return f"{hours:,.1f}" if hours >= 10 else f"{hours:,.3g}"


def row(out: str, first: str, after: str = "projected cost") -> list[str]:
    """The cells of the first table row that starts with ``first`` after the line ``after``."""
    for line in out[out.index(after) :].splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)]
        if len(cells) > 2 and cells[1] == first:
            return cells[1:-1]
    raise AssertionError(f"no row {first!r} in\n{out}")


# ---------------------------------------------------------------------- records
def test_the_committed_h200_record_reads_as_a_gpu_check_record():
    assert records_folder() == RECORD.parent  # a source checkout finds its own records
    record = read_record(RECORD)
    data = json.loads(RECORD.read_text())
    assert record.device == data["device"]["name"] == "NVIDIA H200"
    assert record.rates == {
        "phase1": data["phases"]["phase1"]["pairs_per_s"],
        "phase2": data["phases"]["phase2"]["queries_per_s"],
        "phase3": data["phases"]["phase3"]["queries_per_s"],
    }
    assert record.date == "2026-11-26" and "transcribed" in data["source"].lower()
    assert records_for([record], "h200") == [record] and records_for([record], "H100") == []
    assert records_for([record], "NVIDIA H200") == [record] and records_for([record], "H20") == []


def write_record(folder: Path, name: str, device: str, rate: float, **extra) -> Path:
    data = {
        "device": {"type": "cuda", "name": device},
        "torch": "2.13.0",
        "phases": {
            "phase1": {"pairs_per_s": rate},
            "phase2": {"queries_per_s": rate / 10},
            "phase3": {"error": "out of memory: ..."},
        },
        **extra,
    }
    path = folder / name
    path.write_text(json.dumps(data))
    return path


def test_the_newest_record_of_a_card_wins_and_failed_phases_are_not_measured(tmp_path, monkeypatch):
    write_record(tmp_path, "2026-01-01-H100.json", "NVIDIA H100 80GB HBM3", 100.0)
    write_record(tmp_path, "gpu_check.json", "NVIDIA H100 80GB HBM3", 200.0, date="2026-03-01")
    write_record(tmp_path, "2026-02-01-H100.json", "NVIDIA H100 80GB HBM3", 150.0)
    monkeypatch.setenv("COLZERO_GPU_RECORDS", str(tmp_path))
    records = load_records(records_folder())
    newest = records_for(records, "H100")[0]
    assert newest.rates["phase1"] == 200.0 and "phase3" not in newest.rates
    work = PhaseWork("p3", "distillation", "colbert", "m", global_batch=128, steps=10)
    assert project_gpu(work, newest, 8).device_hours is None
    assert "not measured" in project_gpu(work, newest, 8).note


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a JSON gpu_check record"),
        (json.dumps({"phases": {}}), "device.name: missing"),
        (json.dumps({"device": {"name": "X"}}), "phases: missing"),
        (
            json.dumps({"device": {"name": "X"}, "phases": {"phase1": {"pairs_per_s": -1}}}),
            "phases.phase1.pairs_per_s",
        ),
    ],
)
def test_a_bad_record_names_its_file_and_key(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(RecordError, match=re.escape(message)) as info:
        read_record(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------- the work of a phase
def test_steps_follow_the_sampler(tmp_path):
    """Batches per epoch as the trainer's sampler counts them (one source per batch, drop_last)."""
    from colzero.data.sampler import SameSourceBatchSampler

    sizes = {"a": 37, "b": 50, "c": 9}
    sources = []
    for name, n in sizes.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"query": f"q{i}", "document": f"d{i}"}) + "\n" for i in range(n)))
        sources.append({"name": name, "path": str(path), "query": "query", "positive": "document"})
    overrides = {"phases": [{"sources": sources, "batch_size": 8, "epochs": 3, "max_steps": None}, {}, {}]}
    recipe = load_recipe("quickstart", run_dir=tmp_path / "run", overrides=overrides)
    steps, lower, unknown = phase_steps(recipe, 0, tmp_path / "run")
    expected = 3 * len(SameSourceBatchSampler([37, 50, 9], 8, drop_last=True))
    assert (steps, lower, unknown) == (expected, False, None) and expected == 3 * (4 + 6 + 1)


def test_gpu_projection_is_examples_over_the_measured_rate():
    record = read_record(RECORD)
    recipe = load_recipe("colbert-zero")
    from colzero.training.projection import recipe_work

    works = recipe_work(recipe, Path("/nonexistent-run"))
    kd = works[2]
    assert (kd.steps, kd.examples, kd.unit) == (5000, 640_000, "queries")  # SPEC: 5,000 steps x 128
    proj = project_gpu(kd, record, 8)
    assert proj.device_hours == pytest.approx(640_000 / record.rates["phase3"] / 3600)
    assert proj.wall_hours == pytest.approx(proj.device_hours / 8) and proj.note == ""
    with pytest.raises(ValueError, match="--gpus"):
        project_gpu(kd, record, 0)
    # phase 1 reads 29 hub splits, 15 of unknown size offline: at least the 14 known ones
    assert works[0].lower_bound or works[0].unknown is None


def test_cpu_projection_formula_per_loss():
    fb, f = {(8, 2): 1.0, (32, 4): 4.0}, {(8, 2): 0.25, (32, 4): 1.0}  # (length, sequences per call)
    cal = CpuCalibration("m", 2, fb=fb, f=f, optimizer_s=10.0)

    def work(loss: str, docs: int) -> PhaseWork:
        return PhaseWork(
            "p",
            loss,
            "colbert",
            "m",
            2,
            steps=3,
            query_length=8,
            document_length=32,
            documents_per_example=docs,
            query_batch=2,
            document_batch=4,
        )

    # GradCache embeds every sequence twice: (fb + f)(q) + D (fb + f)(d)
    assert cal.per_example(work("cached_contrastive", 1)) == pytest.approx(1.25 + 5.0)
    assert cal.per_example(work("contrastive", 4)) == pytest.approx(1.0 + 4 * 4.0)
    assert cal.per_example(work("distillation", 16)) == pytest.approx(1.0 + 16 * 4.0)
    proj = project_cpu(work("contrastive", 4), cal)
    assert proj.device_hours == pytest.approx((6 * 17.0 + 3 * 10.0) / 3600)
    assert "not measured" in project_cpu(work("contrastive", 4), None, "offline").note


def test_cpu_calibration_times_the_architecture(tmp_path):
    folder = make_colbert().save(tmp_path / "m")
    cal = calibrate_cpu(str(folder), [(8, 4), (24, 16)], budget_s=0.2)
    assert set(cal.fb) == set(cal.f) == {(8, 4), (24, 16)}
    assert all(v > 0 for v in [*cal.fb.values(), *cal.f.values(), cal.optimizer_s])
    from colzero.training.projection import CalibrationUnavailable

    with pytest.raises(CalibrationUnavailable, match="not available"):
        calibrate_cpu(str(tmp_path / "absent"), [(8, 1)])
    with pytest.raises(CalibrationUnavailable, match="does not run 600 tokens"):  # beyond its positions
        calibrate_cpu(str(folder), [(600, 1)], budget_s=0.1)


# ---------------------------------------------------------------------- the dry runs
def test_train_dry_run_prints_the_projection_per_phase_and_in_total(capsys):
    out = cli(
        capsys, "train", "colbert-zero", "--dry-run", "--gpus", "8", "--gpu-kind", "H200", "--no-calibrate"
    )
    record = read_record(RECORD)
    recipe = load_recipe("colbert-zero")
    for i, name in enumerate(("phase-1-unsupervised", "phase-2-supervised", "phase-3-distillation")):
        cells = row(out, name)
        rate = record.rates[f"phase{i + 1}"]
        p = recipe.phases[i]
        assert f"{rate:,.1f}" in cells[3]
        if p.max_steps is None and i > 0:  # the sizes of phases 2-3 are all known (data card)
            hours = int(cells[1].replace(",", "")) * recipe.global_batch(i) / rate / 3600
            assert cells[4] == fmt(hours) and cells[5] == fmt(hours / 8)
    total = row(out, "total")
    assert total[4].startswith("≥") and float(total[4].lstrip("≥ ").replace(",", "")) > 250
    assert "NVIDIA H200" in out and "2026-11-26-H200.json" in out
    assert "~408 GH200-h" in out  # the paper's cost beside the projection
    assert "assumptions:" in out and "8-GPU shape" in out


def test_an_unrecorded_card_is_not_measured(capsys):
    out = cli(capsys, "train", "colbert-zero", "--dry-run", "--gpu-kind", "B200", "--no-calibrate")
    assert "B200: not measured" in out and "recorded cards: NVIDIA H200" in out
    assert row(out, "total")[4] == "not measured"
    assert row(out, "phase-3-distillation")[4] == "-"


def test_no_records_folder_is_not_measured(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("COLZERO_GPU_RECORDS", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    out = cli(capsys, "train", "colbert-zero", "--dry-run", "--no-calibrate")
    assert "GPU: not measured" in out and str(tmp_path / "empty") in out


def test_experiment_dry_run_prints_the_projection(capsys, tmp_path):
    out = cli(
        capsys,
        "experiment",
        "paper-routes",
        "--dry-run",
        "-o",
        str(tmp_path / "e"),
        "--gpu-kind",
        "H200",
        "--no-calibrate",
    )
    assert "projected cost: paper-routes" in out and "projected cost per route" in out
    kd = [line for line in out.splitlines() if line.startswith("│ kd-only:distillation seed 42")]
    record = read_record(RECORD)
    assert kd and fmt(640_000 / record.rates["phase3"] / 3600) in kd[0]
    assert row(out, "total")[4].startswith("≥")
    assert "~408 GH200-h" in row(out, "colbert-zero@42", after="projected cost per route")[-1]
    assert not (tmp_path / "e").exists()


def test_cpu_projection_in_a_dry_run(capsys, tmp_path):
    """A recipe whose start model is here gets a CPU column measured now."""
    folder = make_colbert().save(tmp_path / "m")
    out = cli(
        capsys,
        "train",
        "quickstart",
        "--dry-run",
        "-o",
        str(tmp_path / "run"),
        "--set",
        f"model.base={json.dumps(str(folder))}",
        "--set",
        "allow_prompt_mismatch=true",
        "--set",
        'phases=[{"model_settings": {"document_length": 64}}, {"model_settings": {"document_length": 64}}, {"model_settings": {"document_length": 64}}]',
    )
    assert f"this CPU: {folder} calibrated now" in out
    cells = row(out, "phase-1-unsupervised")
    assert float(cells[-2].replace(",", "")) > 0  # 60 steps x 128 pairs at the measured rate


def test_projection_flags_go_with_dry_run_only():
    from colzero.cli.main import main

    assert main(["train", "quickstart", "--gpus", "8"]) == 1


def test_calibration_runs_at_the_phases_own_batches(tmp_path):
    """Per-sequence time falls with the sequences per call: each pass is timed at its phase's."""
    from colzero.training.projection import recipe_work

    recipe = load_recipe("quickstart", run_dir=tmp_path)
    unsup, sup, kd = recipe_work(recipe, tmp_path)
    assert unsup.passes() == ((39, 64), (128, 64))  # GradCache chunks of 64 rows per role
    assert sup.passes() == ((39, 32), (192, 32 * 4))  # 32 queries, each with 1 positive + 3 negatives
    assert kd.passes() == ((39, 16), (192, 16 * 16))  # 16 queries x 16 candidates per micro-step
