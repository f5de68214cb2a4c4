"""One training step of TRM (docs/paper.md#deep-supervision), plain torch.distributed: the Ray Train worker
loop calls it, and so does a single process.

    state = create_train_state(config, shape, total_steps, device)
    for batch in loader:
        metrics = train_step(state, batch)   # {"train/lm_loss": ..., "train/lr": ...}

One step is one ACT step for the whole batch: the carry persists, and a row that halted
picks up a new example from this batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.distributed as dist

from trm_ray.config import DataShape, TrainConfig
from trm_ray.ema import EMA
from trm_ray.host_memory import keep_large_allocations_in_heap
from trm_ray.model import ACTCarry, TRMWithLoss, build_model
from trm_ray.optim import AdamATan2, SparseSignSGD, cosine_schedule_lr

# Metric names: one place, so the trainer, Tune (ASHA) and the tracker agree.
METRIC_PREFIX = "train/"
LR_METRIC = "train/lr"


@dataclass
class TrainState:
    model: torch.nn.Module  # TRMWithLoss, possibly torch.compile'd
    optimizers: list[torch.optim.Optimizer]
    base_lrs: list[float]
    total_steps: int
    global_batch_size: int
    lr_warmup_steps: int
    lr_min_ratio: float
    ema: EMA | None = None
    step: int = 0
    carry: ACTCarry | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def module(self) -> TRMWithLoss:
        """The uncompiled model (what checkpoints and evaluators use)."""
        return getattr(self.model, "_orig_mod", self.model)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[TRMWithLoss]:
        """Inside the block the module holds the EMA weights (its own when there is no EMA):
        what is evaluated and what model.pt holds."""
        with self.ema.swapped(self.module) if self.ema is not None else contextlib.nullcontext():
            yield self.module

    def restart_ema(self) -> None:
        """The average starts again at the live weights (after they were loaded from elsewhere)."""
        if self.ema is not None:
            self.ema.reset(self.module)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue the same curve: step (so the lr schedule), live
        weights (a CPU copy), EMA shadow (None without EMA) and both optimizers. The EMA and
        optimizer entries are their live tensors, as torch's own state_dicts are: save or copy
        them before the next step. The ACT carry is not in it: a resumed run starts new rows."""
        return {
            "step": self.step,
            "model": {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizers": [optimizer.state_dict() for optimizer in self.optimizers],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.module.load_state_dict(state_dict["model"])
        for optimizer, saved in zip(self.optimizers, state_dict["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        if self.ema is not None:
            if state_dict["ema"] is not None:
                self.ema.load_state_dict(state_dict["ema"])
            else:  # saved by a run without EMA: the average starts at the loaded weights
                self.restart_ema()
        self.step = int(state_dict["step"])


def distributed_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def should_compile(config: TrainConfig, device: torch.device) -> bool:
    """torch.compile on CUDA by default (the reference's speed path); never needed on CPU."""
    return config.compile if config.compile is not None else device.type == "cuda"


def create_train_state(config: TrainConfig, shape: DataShape, total_steps: int,
                       device: torch.device | str = "cpu", batch_size_per_worker: int | None = None) -> TrainState:
    """Model, optimizers and EMA for this worker; every worker starts from rank 0's weights."""
    device = torch.device(device)
    if device.type == "cpu":
        keep_large_allocations_in_heap()  # CPU activations are allocated and freed every step
    rank, world = distributed_world()
    batch_size = batch_size_per_worker or config.global_batch_size // world
    torch.manual_seed(config.seed)  # same init everywhere; the broadcast below makes it certain
    with torch.device(device):
        model = build_model(config.arch, shape, batch_size=batch_size)
    model.model.generator = torch.Generator(device).manual_seed(config.seed + rank)  # ACT exploration
    if world > 1:
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)
    model.train()

    optimizers: list[torch.optim.Optimizer] = []
    base_lrs: list[float] = []
    if hasattr(model.model.inner, "puzzle_emb"):
        optimizers.append(SparseSignSGD(model.model.inner.puzzle_emb, lr=0.0,
                                        weight_decay=config.puzzle_emb_weight_decay))
        base_lrs.append(config.puzzle_emb_lr)
    if config.freeze_weights:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    else:
        optimizers.append(AdamATan2(model.parameters(), lr=0.0, betas=(config.beta1, config.beta2),
                                    weight_decay=config.weight_decay))
        base_lrs.append(config.lr)
    ema = EMA(model, config.ema_rate) if config.ema else None
    if should_compile(config, device):
        # Compile the recursion only, in place: it holds all the FLOPs, while the ACT
        # bookkeeping (seeded exploration draws, carry dataclasses) would only cause graph
        # breaks; in place keeps state-dict keys free of `_orig_mod.`.
        model.model.inner.compile()
    return TrainState(model=model, optimizers=optimizers, base_lrs=base_lrs, total_steps=total_steps,
                      global_batch_size=config.global_batch_size, lr_warmup_steps=config.lr_warmup_steps,
                      lr_min_ratio=config.lr_min_ratio, ema=ema)


def all_reduce_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Sum gradients over workers in one flat all-reduce (the loss is already / global batch)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def reduce_metrics(metrics: dict[str, torch.Tensor], global_batch_size: int) -> dict[str, float]:
    """Sums over all workers, normalised as the reference reports them: losses by the global
    batch size, the per-row metrics by the number of rows that halted this step. `count`
    itself stays that number (the reference divides it by itself, always reporting 1)."""
    keys = sorted(metrics)
    values = torch.stack([metrics[k].to(torch.float64) for k in keys])
    _, world = distributed_world()
    if world > 1:
        dist.all_reduce(values)
    sums = dict(zip(keys, values.tolist()))
    count = max(sums["count"], 1.0)
    divisors = {k: global_batch_size if k.endswith("loss") else (1.0 if k == "count" else count) for k in sums}
    return {METRIC_PREFIX + k: v / divisors[k] for k, v in sums.items()}


def train_step(state: TrainState, batch: dict[str, torch.Tensor]) -> dict[str, float] | None:
    """One ACT step with backward and both optimizers; returns reduced metrics, or None once
    the schedule's total steps are done."""
    if state.step >= state.total_steps:
        return None
    state.step += 1
    device = next(state.module.parameters()).device
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if state.carry is None:
        state.carry = state.module.initial_carry(batch)

    state.carry, loss, metrics, _, _ = state.model(state.carry, batch)
    (loss / state.global_batch_size).backward()

    _, world = distributed_world()
    if world > 1:
        all_reduce_gradients([p for p in state.module.parameters() if p.requires_grad])
    lr = 0.0
    for optimizer, base_lr in zip(state.optimizers, state.base_lrs):
        lr = cosine_schedule_lr(state.step, base_lr, state.lr_warmup_steps, state.total_steps, state.lr_min_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if state.ema is not None:
        state.ema.update(state.module)

    reduced = reduce_metrics(metrics, state.global_batch_size)
    reduced[LR_METRIC] = lr  # the last optimizer's: AdamATan2's, as the reference logs
    return reduced
