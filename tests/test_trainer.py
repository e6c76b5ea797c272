"""The trainer: exact resume, NaN stop, outputs (tiny model, CPU, dropout on)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from colzero.training.config import DataSource, LossConfig, OptimConfig, PhaseConfig
from colzero.training.trainer import TrainingDiverged, run_phase
from tests.conftest import WORDS, make_colbert


class InBatchLoss(nn.Module):
    """Stand-in InfoNCE on MaxSim with a learnable temperature (in the loss module)."""

    def __init__(self, model, cfg=None, nan_at_call: int | None = None):
        super().__init__()
        object.__setattr__(self, "model", model)
        self.log_t = nn.Parameter(torch.tensor(-1.0))
        self.calls = 0
        self.nan_at_call = nan_at_call

    def forward(self, batch):
        self.calls += 1
        q, qm = self.model.embed(batch.queries, "query")
        d, dm = self.model.embed(batch.positives, "document")
        sim = torch.einsum("qid,pjd->qpij", q, d).masked_fill(~dm[None, :, None, :], -1e4)
        scores = (sim.max(-1).values * qm[:, None, :]).sum(-1)
        loss = nn.functional.cross_entropy(scores / self.log_t.exp(), torch.arange(len(q)))
        if self.nan_at_call is not None and self.calls >= self.nan_at_call:
            loss = loss * float("nan")
        return loss


@pytest.fixture
def setup(tmp_path):
    model_dir = make_colbert(query_length=8, document_length=12).save(tmp_path / "start")
    rows_a = [{"q": f"{WORDS[i]} {WORDS[i + 1]}", "p": f"{WORDS[i + 1]} {WORDS[i]} model"} for i in range(20)]
    rows_b = [{"q": f"who {WORDS[i]}", "p": [f"{WORDS[i]} paper", "x"]} for i in range(30, 46)]
    for name, rows in (("a", rows_a), ("b", rows_b)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def cfg(out: str, **kw) -> PhaseConfig:
        base = dict(
            name="t",
            model=str(model_dir),
            output_dir=str(tmp_path / out),
            sources=[DataSource(n, str(tmp_path / f"{n}.jsonl"), query="q", positive="p") for n in "ab"],
            batch_size=4,
            gradient_accumulation=2,
            epochs=3,
            loss=LossConfig(temperature=0.1),
            optim=OptimConfig(learning_rate=1e-3, warmup_ratio=0.2),
            log_every=1,
            save_every=2,
            seed=7,
        )
        base.update(kw)
        return PhaseConfig(**base)

    return cfg


def weights(folder):
    out = load_file(str(folder / "model.safetensors"))
    out.update({"proj": load_file(str(folder / "1_Dense" / "model.safetensors"))["linear.weight"]})
    return out


@pytest.mark.slow
def test_killed_run_resumes_bit_identical(setup):
    # 9 batches/epoch -> 4 steps/epoch with accumulation 2 -> 12 steps over 3 epochs (resume crosses epochs)
    full = run_phase(setup("full"), loss_factory=InBatchLoss, show_progress=False)

    class Killed(Exception):
        pass

    def kill(step, metrics):
        if step == 5:  # the last checkpoint is at step 4; step 5's work is lost and redone
            raise Killed

    cfg = setup("cut")
    with pytest.raises(Killed):
        run_phase(cfg, loss_factory=InBatchLoss, step_callback=kill, show_progress=False)
    resumed = run_phase(cfg, loss_factory=InBatchLoss, show_progress=False)
    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    start = weights(full.parent.parent / "start")
    assert not torch.equal(start["proj"], a["proj"])  # it trained
    out = resumed.parent
    record = json.loads((resumed / "config_sentence_transformers.json").read_text())["colzero"]["training"]
    assert record["steps"] == 12 and record["query_length"] == 8 and record["document_length"] == 12
    cost = json.loads((out / "cost.json").read_text())
    assert (
        cost["steps"] == 12 and cost["examples"] == 12 * 8 and cost["tokens"] > 0 and cost["peak_rss_mb"] > 0
    )
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 12 and 5 in steps
    assert any((out / "tb").iterdir())
    # a finished phase returns at once
    assert run_phase(cfg, loss_factory=InBatchLoss, show_progress=False) == resumed


def test_nan_loss_stops_and_keeps_last_good_checkpoint(setup):
    cfg = setup("nan", epochs=1, max_steps=None)
    # calls 1..4 are steps 1-2 (checkpoint at step 2); the NaN comes in step 3
    with pytest.raises(TrainingDiverged, match="at step 3"):
        run_phase(cfg, loss_factory=lambda m, c: InBatchLoss(m, nan_at_call=5), show_progress=False)
    state = torch.load(f"{cfg.output_dir}/checkpoints/step-00000002/training_state.pt", weights_only=False)
    assert state["global_step"] == 2
    assert not (cfg.output_dir and __import__("pathlib").Path(cfg.output_dir, "final").exists())


@pytest.mark.slow
def test_eval_hook_and_real_contrastive_loss(setup):
    pytest.importorskip("colzero.losses")
    seen = []

    def hook(model, step):
        assert not model.training
        seen.append(step)
        return {"ndcg@10": 0.5}

    cfg = setup("real", max_steps=3, eval_every=2, save_every=None)
    final = run_phase(cfg, eval_hook=hook, show_progress=False)
    assert seen == [2, 3]
    lines = [json.loads(x) for x in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/ndcg@10" in x for x in lines)


@pytest.mark.parametrize("max_norm", [1e-6, 1e6])
def test_cost_records_pre_clip_norm_and_clipped_steps(setup, max_norm):
    """cost.json counts the steps whose pre-clip norm (metrics.jsonl's grad_norm) exceeded the clip."""
    cfg = setup(f"clip-{max_norm}", epochs=1, max_steps=3, save_every=None)
    cfg.optim = OptimConfig(learning_rate=1e-3, max_grad_norm=max_norm)
    final = run_phase(cfg, loss_factory=InBatchLoss, show_progress=False)
    cost = json.loads((final.parent / "cost.json").read_text())
    norms = [json.loads(x)["grad_norm"] for x in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert cost["grad_norm_steps"] == 3 == len(norms)
    assert cost["clipped_steps"] == sum(n > max_norm for n in norms) == (3 if max_norm < 1 else 0)
    assert cost["clipped_fraction"] == cost["clipped_steps"] / 3 and cost["max_grad_norm"] == max_norm
    assert cost["grad_norm_mean"] == pytest.approx(sum(norms) / 3)
    assert cost["grad_norm_first"] == pytest.approx(norms[0]) and cost["grad_norm_last"] == pytest.approx(
        norms[-1]
    )
    assert cost["grad_norm_min"] == pytest.approx(min(norms)) and cost["grad_norm_max"] == pytest.approx(
        max(norms)
    )
