"""Run one training phase: ``run_phase(cfg, resume=True, eval_hook=None) -> output_dir/final``.

One process needs no setup. Under ``torchrun`` (one or several nodes) every rank trains on its
slice of the same global batch, the model wrapped in ``torch.nn.parallel.DistributedDataParallel``
(rank 0's weights broadcast at the start, gradients all-reduced in buckets overlapped with the
backward pass). Gradient-accumulation micro-steps, and GradCache's chunks, run under
``no_sync()`` except the last, so gradients cross the network once per optimizer step. Parameters
the forward never uses (BERT's pooler) are frozen before wrapping, as DDP requires and so that
weight decay never touches them.

Only rank 0 writes (metrics, TensorBoard, cost, checkpoints, the final model) and evaluates; the
other ranks wait. Checkpoints are step-numbered folders (:mod:`colzero.training.checkpoint`) that
every rank must be able to read; a resumed run continues the same global batch sequence even on
another number of ranks.

Outputs under ``cfg.output_dir``: ``checkpoints/step-N/`` (model + optimizer, scheduler, loss,
data position and RNG state), ``final/`` (the model with a ``training`` record in its config),
``metrics.jsonl``, ``tb/`` (TensorBoard), ``cost.json``, ``phase_config.json``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import random
import resource
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from colzero.data.collate import Collator, batch_to, count_tokens
from colzero.data.loader import Position, input_pipeline
from colzero.data.sampler import SameSourceBatchSampler
from colzero.data.sources import StreamSource, load_sources
from colzero.losses import Contrastive, Loss, build_loss
from colzero.model.colbert import ColBERT
from colzero.model.config import ColBERTConfig, Role
from colzero.model.dense import DenseModel
from colzero.model.encoder import Encoder
from colzero.model.precision import autocast, resolve_precision
from colzero.progress import Progress
from colzero.training import checkpoint as ckpt
from colzero.training.cost import PhaseCost
from colzero.training.distributed import Dist, setup

if TYPE_CHECKING:  # the phase is built (and validated, with pydantic) by the caller
    from colzero.losses.config import LossConfig
    from colzero.training.config import ModelType, PhaseConfig

logger = logging.getLogger(__name__)

#: ``hook(model, step) -> {metric: value}`` (rank 0, every ``eval_every`` steps and at the end)
EvalHook = Callable[[Encoder, int], dict[str, float]]
#: ``factory(model, loss_config) -> loss module``; ``model`` is DDP-wrapped under torchrun
LossFactory = Callable[[nn.Module, "LossConfig"], nn.Module]
StepCallback = Callable[[int, dict[str, float]], None]


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


class CheckpointNotVisible(RuntimeError):
    """A rank cannot read the checkpoint rank 0 wrote (output_dir is not on a shared file system)."""


# ---------------------------------------------------------------------- building blocks
def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_start_model(
    path: str, model_type: ModelType, settings: dict[str, Any], seed: int
) -> ColBERT | DenseModel:
    """A phase's start model as ``model_type`` with ``settings`` (a new ColBERT projection is
    initialised from ``seed``)."""
    torch.manual_seed(seed)
    cls = ColBERT if model_type == "colbert" else DenseModel
    return cls.from_pretrained(path, **settings)


def freeze_unused_parameters(model: Encoder) -> list[str]:
    """Freeze the parameters no forward of either role reaches (e.g. BERT's pooler).

    DDP must know every trainable parameter gets a gradient; AdamW's weight decay must not shrink
    a parameter that never learns. Found with one tiny forward/backward per role (RNG untouched).
    """
    was_training = model.training
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        model.train()
        probe = torch.zeros(())
        roles: tuple[Role, Role] = ("query", "document")
        for role in roles:
            batch = model.tokenize(["a b"], role).to(model.device)
            vectors, _ = model.embed(batch, role)
            probe = probe + vectors.float().sum()
        probe.backward()
    frozen = []
    for name, p in model.named_parameters():
        if p.requires_grad and p.grad is None:
            p.requires_grad_(False)
            frozen.append(name)
        p.grad = None
    model.train(was_training)
    if frozen:
        logger.info("frozen (no forward uses them): %s", ", ".join(frozen))
    return frozen


def _no_buffer_sync() -> dict[str, Any]:
    """DDP must not broadcast buffers at every forward (the models' buffers are constants); the
    keyword was renamed in torch 2.13 (``forward_sync_buffers``)."""
    params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    return (
        {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    )


def linear_schedule(total: int, warmup: int) -> Callable[[int], float]:
    """LambdaLR factor: linear warmup over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------- the phase
class PhaseTrainer:
    """One phase on this rank: ``run()`` = restore, then ``step`` / ``log`` / ``evaluate`` /
    ``checkpoint`` until ``total_steps``, then the final model."""

    def __init__(
        self,
        cfg: PhaseConfig,
        *,
        resume: bool = True,
        eval_hook: EvalHook | None = None,
        loss_factory: LossFactory | None = None,
        step_callback: StepCallback | None = None,
        show_progress: bool = True,
        progress: Progress | None = None,
    ) -> None:
        if not cfg.model or not cfg.output_dir:
            raise ValueError(
                f"phase {cfg.name!r}: model (the start model) and output_dir are required to train"
            )
        self.cfg = cfg
        self.dist: Dist = setup()
        self.out = Path(cfg.output_dir)
        self.final_dir = self.out / "final"
        self.eval_hook, self.step_callback, self.show_progress = eval_hook, step_callback, show_progress
        self.progress = progress
        self.loss_factory = loss_factory or build_loss
        if cfg.batch_size % self.dist.world:
            raise ValueError(
                f"batch_size {cfg.batch_size} is not divisible by the world size {self.dist.world}"
            )
        # data first: input errors are raised before the model is loaded or any step runs
        self.sources = load_sources(cfg.sources, cfg.loss, cfg.batch_size, cache_dir=cfg.data_cache)
        self.sampler = SameSourceBatchSampler(
            [len(s) for s in self.sources],
            cfg.batch_size,
            weights=self._weights(),
            seed=cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world,
            drop_last=cfg.drop_last,
            ordered=[isinstance(s, StreamSource) for s in self.sources],
        )
        per_epoch = len(self.sampler) // cfg.gradient_accumulation
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * per_epoch
        if self.total_steps < 1:
            raise ValueError(
                f"phase {cfg.name!r}: {len(self.sampler)} batches per epoch give no optimizer step with "
                f"gradient_accumulation={cfg.gradient_accumulation}"
            )
        self.state = self._find_state(resume)
        self.global_step = int(self.state["global_step"]) if self.state else 0
        self.position = Position.from_dict(self.state["position"]) if self.state else Position()
        self.epoch = self.position.epoch  # of the last batch consumed (logged)
        self.cost = PhaseCost.from_dict(self.state["cost"], cfg.name) if self.state else PhaseCost(cfg.name)

    def _weights(self) -> list[float] | None:
        given = [s.source.weight for s in self.sources]
        if all(w is None for w in given):
            return None
        if any(w is None for w in given):
            raise ValueError(f"phase {self.cfg.name!r}: give a weight to every source or to none")
        return [float(w) for w in given if w is not None]

    # ------------------------------------------------------------------ restore
    def _find_state(self, resume: bool) -> dict[str, Any] | None:
        d = self.dist
        if d.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if not resume:
                for p in (
                    self.out / ckpt.CHECKPOINTS,
                    self.out / "checkpoint",
                    self.final_dir,
                    self.out / "tb",
                ):
                    shutil.rmtree(p, ignore_errors=True)
                for p in (self.out / "metrics.jsonl", self.out / "cost.json"):
                    p.unlink(missing_ok=True)
            write_json_atomic(self.out / "phase_config.json", self.cfg.to_dict())
        found = ckpt.latest_checkpoint(self.out) if (resume and d.is_main) else None
        found = d.broadcast(None if found is None else (found[0], str(found[1])))
        if found is None:
            d.barrier()
            return None
        step, folder = found
        mine = ckpt.step_dir(self.out, step)  # this rank's view of output_dir, not rank 0's path
        if not d.all_ok((mine / ckpt.STATE_FILE).is_file()):
            raise CheckpointNotVisible(
                f"rank {d.rank}: checkpoint {folder} (step {step}) written by rank 0 is not visible on every "
                f"rank (this rank looked for {mine}); put output_dir on a file system all nodes share"
            )
        state = ckpt.load_state(mine)
        state["folder"] = str(mine)
        return state

    # ------------------------------------------------------------------ setup
    def _build(self) -> None:
        cfg, d = self.cfg, self.dist
        seed_everything(cfg.seed)
        start = str(Path(self.state["folder"]) / "model") if self.state else str(cfg.model)
        model = load_start_model(start, cfg.model_type, cfg.model_settings, cfg.seed).to(d.device)
        model.train()
        freeze_unused_parameters(model)
        self.model = model
        self.ddp: nn.Module = model
        if d.active:
            self.ddp = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[d.device.index] if d.device.type == "cuda" else None,
                **_no_buffer_sync(),
                gradient_as_bucket_view=True,
            )
        self.loss_fn = self.loss_factory(self.ddp, cfg.loss).to(d.device)
        own = {id(p) for p in model.parameters()}
        self.params = [p for p in model.parameters() if p.requires_grad] + [
            p for p in self.loss_fn.parameters() if p.requires_grad and id(p) not in own
        ]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            self.params, lr=o.learning_rate, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
        )
        warmup = math.ceil(o.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_schedule(self.total_steps, warmup)
        )
        self.precision = resolve_precision(cfg.precision, d.device)
        if self.state:
            self._load(self.state)

    def _load(self, state: dict[str, Any]) -> None:
        d = self.dist
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("loss"):
            self.loss_fn.load_state_dict(state["loss"], strict=False)
        rngs = state["rng"]
        if isinstance(rngs, list) and len(rngs) == d.world:
            ckpt.set_rng_state(rngs[d.rank])
        else:  # another number of ranks: the batch sequence is the same, dropout streams are new
            logger.warning(
                "resuming on %d ranks a run saved on %d: dropout RNG re-seeded per rank",
                d.world,
                len(rngs) if isinstance(rngs, list) else 1,
            )
            seed_everything(self.cfg.seed + 7919 * self.global_step + d.rank)
        logger.info("resumed phase %s at step %d (%s)", self.cfg.name, self.global_step, self.position)

    def _loss_state(self) -> dict[str, torch.Tensor]:
        own = {id(p) for p in self.model.parameters()}
        named: dict[str, torch.Tensor] = dict(self.loss_fn.named_parameters())
        named.update(dict(self.loss_fn.named_buffers()))
        return {k: v.detach().cpu().clone() for k, v in named.items() if id(v) not in own}

    # ------------------------------------------------------------------ the loop
    def run(self) -> Path:
        """Train to ``total_steps`` (resuming when a checkpoint exists); returns ``output_dir/final``."""
        if self.state and self.global_step >= self.total_steps and (self.final_dir / "modules.json").exists():
            logger.info(
                "phase %s already complete at step %d: %s", self.cfg.name, self.global_step, self.final_dir
            )
            return self.final_dir
        self._build()
        self._open_outputs()
        batches = iter(self._loader())
        progress = self.progress if self.dist.is_main else None
        bar = tqdm(
            total=self.total_steps,
            initial=self.global_step,
            desc=f"train {self.cfg.name}",
            disable=not (self.dist.is_main and self.show_progress) or progress is not None,
        )
        if progress is not None:
            progress.phase_started(self.cfg.name, self.total_steps, self.global_step)
        try:
            while self.global_step < self.total_steps:
                metrics = self.step(batches)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                if progress is not None:
                    progress.phase_step(self.cfg.name, self.global_step, {**metrics, **self.cost.counters()})
                self.log(metrics)
                if self._due(self.cfg.eval_every):
                    self.evaluate()
                if self._due(self.cfg.save_every):
                    self.checkpoint()
                if self.step_callback is not None:
                    self.step_callback(self.global_step, metrics)
            self.evaluate()
            return self.finish()
        finally:
            bar.close()
            self._close_outputs()

    def _due(self, every: int | None) -> bool:
        return every is not None and self.global_step % every == 0 and self.global_step < self.total_steps

    def _loader(self) -> Iterable[tuple[Position, Any]]:
        cfg = self.cfg
        remaining = (self.total_steps - self.global_step) * cfg.gradient_accumulation
        return input_pipeline(
            self.sources,
            self.sampler,
            Collator(self.model),
            self.position,
            count=remaining,
            num_workers=cfg.num_workers,
            pin_memory=self.dist.device.type == "cuda",
        )

    def step(self, batches: Iterator[tuple[Position, Any]]) -> dict[str, float]:
        """One optimizer step: ``gradient_accumulation`` micro-batches, synced once, then AdamW."""
        cfg, d = self.cfg, self.dist
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float32, device=d.device)
        counts = torch.zeros(2, dtype=torch.float64)  # examples, tokens of this rank
        wait = 0.0
        for micro in range(cfg.gradient_accumulation):
            t_wait = time.perf_counter()
            position, batch = next(batches)
            wait += time.perf_counter() - t_wait
            counts += torch.tensor([len(batch), count_tokens(batch)], dtype=torch.float64)
            batch = batch_to(batch, d.device, non_blocking=True)
            last = micro == cfg.gradient_accumulation - 1
            sync = contextlib.nullcontext() if last or not isinstance(self.ddp, DDP) else self.ddp.no_sync()
            with sync:
                with autocast(d.device, self.precision):
                    loss = self.loss_fn(batch)
                (loss / cfg.gradient_accumulation).backward()
            loss_sum += loss.detach().float()
            self.position = position.after(len(self.sampler))
            self.epoch = position.epoch
        totals = d.sum_(torch.cat([loss_sum.reshape(1).cpu().double(), counts]).to(d.device)).cpu()
        mean_loss = float(totals[0]) / (cfg.gradient_accumulation * d.world)
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(
                f"phase {cfg.name!r}: loss is {mean_loss} at step {self.global_step + 1}; the last good "
                f"checkpoint is kept in {self.out / ckpt.CHECKPOINTS}"
            )
        grad_norm = None
        if cfg.optim.max_grad_norm is not None:  # the norm before clipping
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.max_grad_norm))
            self.cost.record_grad_norm(grad_norm, cfg.optim.max_grad_norm)
        self.optimizer.step()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        cost = self.cost
        cost.examples += int(totals[1])
        cost.tokens += int(totals[2])
        cost.wall_s += time.perf_counter() - t0
        cost.data_wait_s += wait
        cost.steps = self.global_step
        if cost.first_step_unix is None:
            cost.first_step_unix = time.time()
        metrics: dict[str, float] = {"loss": mean_loss, "lr": float(lr)}
        if grad_norm is not None:
            metrics["grad_norm"] = grad_norm  # pre-clip
        if isinstance(self.loss_fn, Contrastive):
            metrics["temperature"] = float(self.loss_fn.temperature.detach())
        return metrics

    # ------------------------------------------------------------------ outputs (rank 0)
    def _open_outputs(self) -> None:
        self.metrics_file: TextIO | None = None
        self.writer: Any = None
        if not self.dist.is_main:
            return
        metrics = self.out / "metrics.jsonl"
        if metrics.exists():  # resumed: what the lost steps logged is logged again (see purge_step)
            kept = [
                line for line in metrics.read_text(encoding="utf-8").splitlines() if self._logged_before(line)
            ]
            tmp = metrics.with_name(f".{metrics.name}.tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(tmp, metrics)
        self.metrics_file = open(metrics, "a", encoding="utf-8")  # noqa: SIM115
        try:
            from torch.utils.tensorboard import SummaryWriter

            purge = self.global_step + 1 if self.global_step else None
            self.writer = SummaryWriter(str(self.out / "tb"), purge_step=purge)
        except ImportError:  # pragma: no cover
            logger.warning("tensorboard is not installed; metrics go to metrics.jsonl only")

    def _logged_before(self, line: str) -> bool:
        """True for a line logged at or before the step this run resumes from (False for a line
        that a kill cut short)."""
        try:
            return int(json.loads(line)["step"]) <= self.global_step
        except (ValueError, KeyError, TypeError):
            return False

    def _close_outputs(self) -> None:
        for handle in (self.metrics_file, self.writer):
            if handle is not None:
                handle.close()

    def log(self, metrics: dict[str, float], *, force: bool = False) -> None:
        """Append a ``metrics.jsonl`` line (and TensorBoard scalars) on rank 0 every ``log_every`` steps."""
        due = force or self.global_step % self.cfg.log_every == 0 or self.global_step == self.total_steps
        if not due or self.metrics_file is None:  # only rank 0 has the file
            return
        record: dict[str, Any] = {"step": self.global_step, "epoch": self.epoch, **metrics}
        if not force:
            record.update(self.cost.counters())
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        if self.writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, self.global_step)

    def evaluate(self) -> None:
        """Rank 0 runs ``eval_hook`` on its device; the other ranks wait."""
        if self.eval_hook is None:
            return
        if self.dist.is_main:
            saved = ckpt.rng_state()
            self.model.eval()
            try:
                with torch.no_grad():
                    result = self.eval_hook(self.model, self.global_step) or {}
            finally:
                self.model.train()
                ckpt.set_rng_state(saved)
            self.log({f"eval/{k}": v for k, v in result.items()}, force=True)
        self.dist.barrier()

    def checkpoint(self) -> Path:
        """Rank 0 writes ``checkpoints/step-N``; every rank must then see it."""
        d = self.dist
        rngs = d.gather(ckpt.rng_state())
        rss = d.gather(round(peak_rss_mb(), 1))
        folder = ckpt.step_dir(self.out, self.global_step)
        if d.is_main:
            state = {
                "global_step": self.global_step,
                "position": self.position.to_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "loss": self._loss_state(),
                "rng": rngs,
                "world_size": d.world,
                "cost": self.cost.to_dict(),
                "phase": self.cfg.name,
            }
            ckpt.save_checkpoint(
                self.out, self.global_step, self.model, state, keep=self.cfg.keep_checkpoints
            )
            self.write_cost(rss)
        d.barrier()
        if not d.all_ok((folder / ckpt.STATE_FILE).is_file()):
            raise CheckpointNotVisible(
                f"rank {d.rank}: checkpoint {folder} written by rank 0 is not visible on every rank; "
                "put output_dir on a file system all nodes share"
            )
        return folder

    def write_cost(self, rss_per_rank: list[float]) -> None:
        """``cost.json`` (rank 0): counters, time waiting for data, peak memory of every rank."""
        if not self.dist.is_main:
            return
        d, cost = self.dist, self.cost
        cost.world_size, cost.device, cost.precision = d.world, str(d.device), self.precision
        cost.peak_rss_mb, cost.peak_rss_mb_per_rank = max(rss_per_rank), list(rss_per_rank)
        if d.device.type == "cuda":
            cost.peak_cuda_mb = round(torch.cuda.max_memory_allocated(d.device) / 2**20, 1)
        cost.write(self.out)

    def training_record(self) -> dict[str, Any]:
        """How the final model was trained (saved in its config's ``colzero.training`` block)."""
        cfg, config = self.cfg, self.model.config
        loss: dict[str, Any] = cfg.loss.to_dict()
        if isinstance(self.loss_fn, Loss):
            loss.update(self.loss_fn.get_config_dict(), citation=self.loss_fn.citation)
        lengths = (
            {
                "query_length": config.query_length,
                "document_length": config.document_length,
                "max_length": None,
            }
            if isinstance(config, ColBERTConfig)
            else {"query_length": None, "document_length": None, "max_length": config.max_length}
        )
        return {
            "training": {
                "phase": cfg.name,
                "steps": self.global_step,
                "batch_size": cfg.batch_size,
                "gradient_accumulation": cfg.gradient_accumulation,
                "loss": loss,
                "learning_rate": cfg.optim.learning_rate,
                "sources": [s.name for s in self.sources],
                "prompts": dict(config.prompts or {}),
                **lengths,
                "precision": self.precision,
            }
        }

    def finish(self) -> Path:
        """The phase's last checkpoint, then the final model (rank 0) with its training record."""
        self.checkpoint()  # the phase's last state: a rerun finds it complete
        rss = self.dist.gather(round(peak_rss_mb(), 1))
        if self.dist.is_main:
            self.model.save(self.final_dir, training_record=self.training_record())
        self.write_cost(rss)
        self.dist.barrier()
        return self.final_dir


def run_phase(
    cfg: PhaseConfig,
    resume: bool = True,
    eval_hook: EvalHook | None = None,
    *,
    loss_factory: LossFactory | None = None,
    step_callback: StepCallback | None = None,
    show_progress: bool = True,
    progress: Progress | None = None,
) -> Path:
    """Train one phase and return ``output_dir/final``.

    ``resume=True`` continues from the newest complete checkpoint (same weights, optimizer,
    scheduler, data position and, on the same number of ranks, RNG states); ``resume=False``
    starts over and removes previous checkpoints and metrics. ``eval_hook(model, step) -> dict``
    runs on rank 0 every ``cfg.eval_every`` optimizer steps and at the end.
    ``loss_factory(model, loss_cfg)`` replaces :func:`build_loss` (tests, custom losses; ``model``
    is the DDP-wrapped model under torchrun); ``step_callback(step, metrics)`` runs after each step.
    ``progress`` (:class:`colzero.progress.Progress`, rank 0) receives the phase's start and every
    step in place of the tqdm bar that ``show_progress`` draws otherwise.
    """
    trainer = PhaseTrainer(
        cfg,
        resume=resume,
        eval_hook=eval_hook,
        loss_factory=loss_factory,
        step_callback=step_callback,
        show_progress=show_progress,
        progress=progress,
    )
    return trainer.run()
