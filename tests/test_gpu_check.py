"""The colzero core imports where the optional extras are absent, and ``benchmarks/gpu_check.py
--tiny`` runs there (CPU, tiny ModernBERT), so the GPU check cannot rot.

"Absent" is emulated in a subprocess by a ``sitecustomize`` that makes the path finder return
nothing for the extras' top-level packages: ``importlib.util.find_spec`` answers None and
``import`` raises ModuleNotFoundError, exactly as on a machine without them (transformers probes
optional packages with ``find_spec``, so a finder that raised instead would break it).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: the optional extras (and test-only packages) that the core must not need
ABSENT = (
    "datasets",
    "faiss",
    "fastapi",
    "uvicorn",
    "starlette",
    "ranx",
    "bm25s",
    "matplotlib",
    "pydantic",
    "sentence_transformers",
    "pylate",
    "rich",
    "tensorboard",
)
#: what the GPU machine offers and gpu_check / the core may use: torch, transformers (with its own
#: dependencies: huggingface_hub, tqdm, ...), tokenizers, safetensors, numpy, pyarrow
CORE_MODULES = (
    "colzero",
    "colzero.model",
    "colzero.scoring.maxsim",
    "colzero.losses",
    "colzero.training.trainer",
)

SITECUSTOMIZE = f"""
import importlib.machinery, sys

ABSENT = {ABSENT!r}


class _WithoutExtras(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)


sys.meta_path[:] = [_WithoutExtras if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""

PROBE = """
import importlib, importlib.util, json, sys, traceback
out = {"hook": {}, "modules": {}}
for name in sys.argv[1].split(","):
    try:
        importlib.import_module(name)
        out["hook"][name] = "importable"
    except ModuleNotFoundError:
        out["hook"][name] = "absent" if importlib.util.find_spec(name) is None else "half-absent"
for name in sys.argv[2].split(","):
    try:
        importlib.import_module(name)
        out["modules"][name] = "ok"
    except Exception as exc:
        chain = [f"{f.filename.split('src/')[-1]}:{f.lineno}" for f in traceback.extract_tb(exc.__traceback__)
                 if "colzero" in f.filename]
        out["modules"][name] = f"{type(exc).__name__}: {exc} via {chain}"
out["loaded_absent"] = sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[1].split(","))
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def without_extras(tmp_path_factory) -> dict[str, str]:
    """Environment for a subprocess in which the extras are absent (module docstring)."""
    hook = tmp_path_factory.mktemp("without_extras")
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(hook), str(REPO / "src"), env.get("PYTHONPATH", "")])
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def _result(proc: subprocess.CompletedProcess) -> dict:
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert lines, f"no result (rc {proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


def test_core_imports_without_the_extras(without_extras):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(ABSENT), ",".join(CORE_MODULES)],
        capture_output=True,
        text=True,
        env=without_extras,
        cwd=REPO,
        timeout=300,
    )
    result = _result(proc)
    installed = [name for name in ABSENT if importlib.util.find_spec(name) is not None]
    assert installed, "none of the extras is installed here: the check would prove nothing"
    assert all(result["hook"][name] == "absent" for name in ABSENT), result["hook"]
    assert result["modules"] == {name: "ok" for name in CORE_MODULES}, result["modules"]
    assert result["loaded_absent"] == []


def test_gpu_check_tiny_runs_on_cpu_without_the_extras(without_extras, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny", "--device", "cpu",
         "--warmup", "1", "--steps", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, env=without_extras, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(result["phases"]) == {"phase1", "phase2", "phase3"}
    for name, phase in result["phases"].items():
        assert "error" not in phase, (name, phase)
        assert phase["step_s"] > 0 and all(math.isfinite(x) for x in phase["losses"])
        assert len(phase["losses"]) == 2 * phase["shape"]["accumulation"]  # warm-up + 1 timed step
        split = phase["split_s"]
        assert split["encoder"] > 0 and split["loss"] > 0 and split["optimizer"] > 0
        # the categories partition the step (medians of 1 step: exact up to rounding)
        assert sum(split.values()) == pytest.approx(phase["step_s"], rel=1e-6)
        flops = phase["flops_per_step"]
        assert 0 < flops["useful"] <= flops["executed"]
        assert phase["fraction_of_gemm_executed"] > 0
    assert (
        result["phases"]["phase1"]["flops_per_step"]["executed"]
        > result["phases"]["phase1"]["flops_per_step"]["useful"]
    )
    assert result["projection"]["total_gpu_hours"] > 0
    assert result["sync_check"]["status"].startswith("skipped")
    assert "projected GPU-hours" in proc.stdout
    # padded and packed encoders, full and real lengths, in the same run; the top-level keys are
    # the primary run's (packed, full lengths)
    runs = result["runs"]
    assert set(runs) == {
        "padded/full/today", "packed/full", "packed/real", "padded/real/today", "packed/full/keep2"
    }  # fmt: skip
    # today's path (padded encoder, chunked MaxSim under autocast) beside the new one in the same run
    assert (runs["padded/full/today"]["maxsim_backend"], runs["padded/full/today"]["score_precision"]) == (
        "chunked",
        "autocast",
    )
    assert (runs["packed/full"]["maxsim_backend"], runs["packed/full"]["score_precision"]) == ("auto", "fp32")
    assert result["speedups"]["phase1 full: step, today / new"] > 0
    # one profiled step per phase of the profiled runs: the top kernels, saved
    for name in ("padded/full/today", "packed/full"):
        for phase in runs[name]["phases"].values():
            top = phase["top_kernels"]
            assert 0 < len(top) <= 10 and all(k["self_ms"] > 0 for k in top)
            assert [k["self_ms"] for k in top] == sorted((k["self_ms"] for k in top), reverse=True)
    assert "top_kernels" not in runs["packed/real"]["phases"]["phase1"]
    # the loss microbenchmark (benchmarks/maxsim_kernels.py): today's path and the fused backend
    # (Triton's interpreter here), errors against the fp32 reference; peers absent are rows that say so
    rows = result["loss_check"]["rows"]
    for name in ("today", "fused"):
        assert "error" not in rows[name], rows[name]
        assert rows[name]["loss_s"] > 0 and rows[name]["maxsim_fraction_of_gemm"] > 0
    assert rows["fused"]["errors_vs_fp32"]["grad_q"] < 1e-5
    # the record to commit under benchmarks/results/gpu/
    record = tmp_path / f"{result['date']}-cpu.json"
    assert json.loads(record.read_text())["commit"] == result["commit"] != ""
    keep = runs.pop("packed/full/keep2")  # GradCache keeping 2 chunks' graphs: phase 1 only
    assert set(keep["phases"]) == {"phase1"} and keep["phases"]["phase1"]["step_s"] > 0
    assert result["primary"] == "packed/full" and result["phases"] == runs["packed/full"]["phases"]
    assert (
        runs["padded/full/today"]["packing"] == "off" and runs["packed/full"]["packed_runner"] == "modernbert"
    )
    for name, run in runs.items():
        assert run["projection"]["total_gpu_hours"] > 0 and result["projections"][name] > 0
        for phase in run["phases"].values():
            flops = phase["flops_per_step"]
            assert 0 < flops["encoder_forward_real"] <= flops["encoder_forward"]
            assert 0 < flops["useful_real"] <= flops["useful"]
            assert 0 < phase["real_token_fraction"] <= 1 and phase["encoder_fraction_of_gemm_real"] > 0
    # real lengths: MS MARCO-like documents are far shorter than their 16 (tiny) tokens
    assert runs["packed/real"]["phases"]["phase2"]["real_token_fraction"] < 0.95
    check = result["kernel_check"]["ways"]
    assert (
        check["packed sdpa fp32"]["max_abs_err"] < 1e-5 and check["packed sdpa fp32"]["grad_rel_err"] < 1e-5
    )
    assert check["padded sdpa bf16"]["min_cos"] > 0.99 and "error" in check["packed varlen bf16"]


def _gpu_check_module():
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


def test_flop_formula_matches_spec_for_modernbert_base():
    """SPEC §3: ~110M parameters outside the embeddings, ~0.23 GFLOP per token forward."""
    import torch
    from transformers import AutoModel, ModernBertConfig

    gpu_check = _gpu_check_module()
    with torch.device("meta"):
        backbone = AutoModel.from_config(ModernBertConfig())
    n_linear = gpu_check.linear_parameters(backbone) + 768 * 128  # + the ColBERT projection
    assert 109e6 < n_linear < 112e6
    per_token = gpu_check.encoder_flops(backbone.config, n_linear, 187) / 187
    assert 0.22e9 < per_token < 0.24e9
    # sliding-window layers attend to at most local_attention + 1 keys per query
    assert gpu_check.attended_pairs(10, 4) == sum(min(i + 2, 9) - max(i - 2, 0) + 1 for i in range(10))
    assert gpu_check.attended_pairs(10, None) == 100


def test_step_split_attribution():
    """The GPU-timeline split: embed calls are encoder, gradient hooks start the encoder
    backward, GradCache's re-embedding after the forward is encoder."""
    gpu_check = _gpu_check_module()
    marks = gpu_check.Marks.__new__(gpu_check.Marks)
    marks.cuda = False
    labels_times = [
        ("data_start", 0.0), ("data_end", 1.0),
        ("fwd_start", 1.5),  # 0.5 other (copy)
        ("embed_start", 2.0), ("embed_end", 4.0),  # 0.5 loss, 2 encoder
        ("fwd_end", 5.0),  # 1 loss
        ("grad_hook", 6.0),  # 1 loss backward
        ("bwd_end", 9.0),  # 3 encoder backward
        ("opt_start", 9.0), ("opt_end", 10.0),  # 1 optimizer
    ]  # fmt: skip
    marks.items = labels_times
    split = marks.split()
    assert split == pytest.approx(
        {"data": 1.0, "other": 0.5, "loss": 2.5, "encoder": 5.0, "optimizer": 1.0, "total": 10.0}
    )
    cached = [
        ("fwd_start", 0.0), ("embed_start", 0.0), ("embed_end", 2.0),  # no-grad pass: encoder
        ("fwd_end", 3.0),  # 1 loss (scores + gradients on cached embeddings)
        ("embed_start", 3.0), ("embed_end", 5.0), ("grad_hook", 5.0), ("bwd_end", 8.0),  # re-embed + backward
    ]  # fmt: skip
    marks.items = cached
    assert marks.split() == pytest.approx({"encoder": 7.0, "loss": 1.0, "total": 8.0})
