"""Run one training phase: ``run_phase(cfg, resume=True, eval_hook=None) -> output_dir/final``.

Single process without any setup; under ``torchrun`` the process group is initialised (nccl on
CUDA, gloo otherwise) and every rank trains on its slice of the same global batch. Gradients are
averaged across ranks explicitly after the (accumulated) backward passes, which is what DDP does
and works with any loss, including GradCache's chunked backward.

Outputs under ``cfg.output_dir``: ``checkpoint/`` (atomic; model + optimizer, scheduler, loss,
sampler and RNG state), ``final/`` (atomic; the model with a ``training`` record in its config),
``metrics.jsonl``, ``tb/`` (TensorBoard), ``cost.json``, ``phase_config.json``.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import random
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from colzero.data.collate import Collator, batch_to, count_tokens
from colzero.data.sampler import SameSourceBatchSampler
from colzero.data.sources import load_sources
from colzero.model.precision import autocast, resolve_precision
from colzero.training.checkpoint import load_state, rng_state, save_checkpoint, set_rng_state
from colzero.training.config import LossConfig, PhaseConfig

logger = logging.getLogger(__name__)

EvalHook = Callable[[nn.Module, int], dict[str, float]]
LossFactory = Callable[[nn.Module, LossConfig], nn.Module]


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


# ---------------------------------------------------------------------- helpers
def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def _init_distributed(world: int, local: int) -> torch.device:
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_start_model(path: str, model_type: str, settings: dict[str, Any], seed: int):
    from colzero import ColBERT, DenseModel

    torch.manual_seed(seed)  # a new projection is initialised from this seed
    cls = ColBERT if model_type == "colbert" else DenseModel
    return cls.from_pretrained(path, **settings)


def build_loss(model: nn.Module, cfg: LossConfig) -> nn.Module:
    """The loss module for ``cfg.kind`` from :mod:`colzero.losses` (kwargs it does not take are dropped)."""
    from colzero import losses

    name = {
        "contrastive": "Contrastive",
        "cached_contrastive": "CachedContrastive",
        "distillation": "Distillation",
    }[cfg.kind]
    cls = getattr(losses, name, None)
    if cls is None:
        raise ImportError(f"colzero.losses.{name} is not available")
    wanted = {
        "temperature": cfg.temperature,
        "learnable_temperature": cfg.learnable_temperature,
        "mini_batch_size": cfg.mini_batch_size,
        "normalize_scores": cfg.normalize_scores,
    }
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in wanted.items() if takes_any or k in params}
    if cfg.kind != "distillation":
        kwargs.pop("normalize_scores", None)
    if cfg.kind != "cached_contrastive":
        kwargs.pop("mini_batch_size", None)
    return cls(model, **kwargs)


def _linear_schedule(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------- run
def run_phase(
    cfg: PhaseConfig,
    resume: bool = True,
    eval_hook: EvalHook | None = None,
    *,
    loss_factory: LossFactory | None = None,
    step_callback: Callable[[int, dict[str, float]], None] | None = None,
    show_progress: bool = True,
) -> Path:
    """Train one phase and return ``output_dir/final``.

    ``resume=True`` continues from ``output_dir/checkpoint`` when present (exactly: same weights,
    optimizer, scheduler, sampler position and RNG states); ``resume=False`` starts over and
    removes a previous checkpoint and metrics. ``eval_hook(model, step) -> dict`` runs on rank 0
    every ``cfg.eval_every`` optimizer steps (and at the end) and its numbers are logged.
    ``loss_factory(model, loss_cfg)`` replaces :func:`build_loss` (tests, custom losses);
    ``step_callback(step, metrics)`` runs after each optimizer step (after checkpointing).
    """
    rank, world, local = _dist_info()
    device = _init_distributed(world, local)
    out = Path(cfg.output_dir)
    ckpt_dir, final_dir = out / "checkpoint", out / "final"
    is_main = rank == 0
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the world size {world}")

    # ---- data first: every input error is raised before the model is loaded or any step runs
    data = load_sources(cfg.sources, cfg.loss, cfg.batch_size)
    weights = None
    if any(s.weight is not None for s in cfg.sources):
        if not all(s.weight is not None for s in cfg.sources):
            raise ValueError(f"phase {cfg.name!r}: give a weight to every source or to none")
        weights = [float(s.weight) for s in cfg.sources]
    sampler = SameSourceBatchSampler(
        [len(d) for d in data],
        cfg.batch_size,
        weights=weights,
        seed=cfg.seed,
        rank=rank,
        world_size=world,
        drop_last=cfg.drop_last,
    )
    steps_per_epoch = len(sampler) // cfg.gradient_accumulation
    total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    if total_steps < 1:
        raise ValueError(
            f"phase {cfg.name!r}: {len(sampler)} batches per epoch give no optimizer step with "
            f"gradient_accumulation={cfg.gradient_accumulation}"
        )

    # ---- state
    state = load_state(ckpt_dir) if resume else None
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            for p in (ckpt_dir, final_dir, out / "tb"):
                shutil.rmtree(p, ignore_errors=True)
            for p in (out / "metrics.jsonl", out / "cost.json"):
                p.unlink(missing_ok=True)
        _write_json_atomic(out / "phase_config.json", cfg.to_dict())
    if world > 1:
        dist.barrier()
    if state is not None and state["global_step"] >= total_steps and (final_dir / "modules.json").exists():
        logger.info("phase %s already complete at step %d: %s", cfg.name, state["global_step"], final_dir)
        return final_dir

    seed_everything(cfg.seed)
    start = str(ckpt_dir / "model") if state is not None else cfg.model
    model = load_start_model(start, cfg.model_type, cfg.model_settings, cfg.seed).to(device)
    model.train()
    loss_fn = (loss_factory or build_loss)(model, cfg.loss).to(device)
    model_ids = {id(p) for p in model.parameters()}
    extra = [p for p in loss_fn.parameters() if id(p) not in model_ids]
    params = [p for p in model.parameters() if p.requires_grad] + [p for p in extra if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        params, lr=o.learning_rate, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
    )
    warmup = int(math.ceil(o.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(total_steps, warmup))
    collate = Collator(model)
    precision = resolve_precision(cfg.precision, device)  # "auto": bf16 only where it is fast

    global_step = 0
    cost = {"examples": 0, "tokens": 0, "wall_s": 0.0, "steps": 0}
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("loss"):
            loss_fn.load_state_dict(state["loss"], strict=False)
        sampler.load_state_dict(state["sampler"])
        global_step = int(state["global_step"])
        cost.update(state.get("cost", {}))
        rng = state["rng"][rank] if isinstance(state["rng"], list) else state["rng"]
        set_rng_state(rng)
        logger.info("resumed phase %s at step %d (%s)", cfg.name, global_step, sampler.state_dict())

    def loss_state() -> dict[str, torch.Tensor]:
        named = dict(loss_fn.named_parameters())
        named.update(dict(loss_fn.named_buffers()))
        return {k: v.detach().cpu().clone() for k, v in named.items() if id(v) not in model_ids}

    def checkpoint() -> None:
        rngs: Any = rng_state()
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, rngs)
            rngs = gathered
        if is_main:
            save_checkpoint(
                ckpt_dir,
                model,
                {
                    "global_step": global_step,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "loss": loss_state(),
                    "sampler": sampler.state_dict(),
                    "rng": rngs,
                    "cost": cost,
                    "phase": cfg.name,
                },
            )
        if world > 1:
            dist.barrier()

    def micro_batches():
        while True:
            yield from sampler.iter_epoch()
            sampler.next_epoch()

    writer = None
    if is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tb"), purge_step=global_step + 1 if global_step else None)
        except ImportError:  # pragma: no cover
            logger.warning("tensorboard is not installed; metrics go to metrics.jsonl only")
    metrics_file = open(out / "metrics.jsonl", "a", encoding="utf-8") if is_main else None  # noqa: SIM115

    def log(record: dict[str, Any]) -> None:
        if not is_main:
            return
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
        if writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    writer.add_scalar(k, v, record["step"])

    def run_eval() -> None:
        if eval_hook is None:
            return
        if is_main:
            saved_rng = rng_state()
            model.eval()
            try:
                with torch.no_grad():
                    result = eval_hook(model, global_step) or {}
            finally:
                model.train()
                set_rng_state(saved_rng)
            log({"step": global_step, **{f"eval/{k}": v for k, v in result.items()}})
        if world > 1:
            dist.barrier()

    def write_cost() -> None:
        if not is_main:
            return
        record = dict(cost)
        record.update(
            phase=cfg.name,
            world_size=world,
            device=str(device),
            precision=precision,
            peak_rss_mb=round(_peak_rss_mb(), 1),
        )
        if device.type == "cuda":
            record["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        _write_json_atomic(out / "cost.json", record)

    it = micro_batches()
    bar = tqdm(
        total=total_steps,
        initial=global_step,
        desc=f"train {cfg.name}",
        disable=not (is_main and show_progress),
    )
    t_last = time.perf_counter()
    try:
        while global_step < total_steps:
            losses_sum, n_examples, n_tokens = 0.0, 0, 0
            for _ in range(cfg.gradient_accumulation):
                planned = next(it)
                source = data[planned.source]
                batch = collate([source[int(i)] for i in planned.rows])
                n_examples += len(batch)
                n_tokens += count_tokens(batch)
                batch = batch_to(batch, device)
                with autocast(device, precision):
                    loss = loss_fn(batch)
                value = loss.detach().float().reshape(())
                if world > 1:
                    dist.all_reduce(value)
                    value = value / world
                if not torch.isfinite(value):
                    raise TrainingDiverged(
                        f"phase {cfg.name!r}: loss is {value.item()} at step {global_step + 1} "
                        f"(source {source.name!r}); the last good checkpoint is kept in {ckpt_dir}"
                    )
                (loss / cfg.gradient_accumulation).backward()
                losses_sum += value.item()
            if world > 1:
                # each rank counted the tokens of its own slice only
                tokens = torch.tensor([n_tokens], dtype=torch.int64, device=device)
                dist.all_reduce(tokens)
                n_tokens = int(tokens.item())
                # a parameter no rank has a gradient for (e.g. BERT's unused pooler) keeps grad None,
                # as in one process: a zero gradient would still get AdamW's weight decay
                has_grad = torch.tensor(
                    [p.grad is not None for p in params], dtype=torch.int32, device=device
                )
                dist.all_reduce(has_grad)
                for p, used in zip(params, has_grad.tolist(), strict=True):
                    if not used:
                        continue
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad)
                    p.grad.div_(world)
            grad_norm = None
            if o.max_grad_norm is not None:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, o.max_grad_norm))
            optimizer.step()
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            now = time.perf_counter()
            cost["wall_s"] += now - t_last
            t_last = now
            cost["examples"] += n_examples * world
            cost["tokens"] += n_tokens
            cost["steps"] = global_step
            metrics = {"loss": losses_sum / cfg.gradient_accumulation, "lr": lr}
            if grad_norm is not None:
                metrics["grad_norm"] = grad_norm
            temp = getattr(loss_fn, "temperature", None)
            if isinstance(temp, torch.Tensor) and temp.numel() == 1:
                metrics["temperature"] = float(temp.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if global_step % cfg.log_every == 0 or global_step == total_steps:
                log({"step": global_step, "epoch": sampler.epoch, **metrics, **cost})
            if cfg.eval_every and global_step % cfg.eval_every == 0 and global_step < total_steps:
                run_eval()
            if cfg.save_every and global_step % cfg.save_every == 0 and global_step < total_steps:
                checkpoint()
                write_cost()
                t_last = time.perf_counter()
            if step_callback is not None:
                step_callback(global_step, metrics)
        run_eval()
        model.training_record = {
            "training": {
                "phase": cfg.name,
                "steps": global_step,
                "batch_size": cfg.batch_size,
                "gradient_accumulation": cfg.gradient_accumulation,
                "loss": cfg.loss.to_dict(),
                "learning_rate": o.learning_rate,
                "sources": [s.name for s in cfg.sources],
                "prompts": dict(getattr(model.config, "prompts", {}) or {}),
                "query_length": getattr(model.config, "query_length", None),
                "document_length": getattr(model.config, "document_length", None),
                "max_length": getattr(model.config, "max_length", None),
                "precision": precision,
            }
        }
        checkpoint()  # marks the phase complete for resume
        if is_main:
            model.save(final_dir)
        write_cost()
        if world > 1:
            dist.barrier()
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
        if writer is not None:
            writer.close()
    return final_dir
