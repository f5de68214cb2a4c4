"""Optimisers and learning-rate schedule of TRM (docs/paper.md#optimizers-and-schedule).

- `AdamATan2`: the exact imoneoi/adam-atan2 update TRM was trained with, for the parameters.
- `SparseSignSGD`: distributed sign-SGD on the rows of the puzzle-embedding table that the
  batch looked up (the table is a buffer, not a parameter).
- `fused_kernel_problem(device)`: whether AdamATan2 runs adam-atan2's fused CUDA kernel on a
  device (the `cuda` extra), or why it runs its own torch update there.
- `cosine_schedule_lr` / `total_train_steps`: the reference warmup + cosine schedule; the
  training loop writes its value into `param_groups[i]["lr"]` of both optimisers each step.

    opt = AdamATan2(model.parameters(), lr=0.0, betas=(0.9, 0.95), weight_decay=0.1)
    emb_opt = SparseSignSGD(model.inner.puzzle_emb, lr=0.0, weight_decay=0.1)
    for step in range(1, total + 1):
        for o, base in ((opt, cfg.lr), (emb_opt, cfg.puzzle_emb_lr)):
            for g in o.param_groups:
                g["lr"] = cosine_schedule_lr(step, base, cfg.lr_warmup_steps, total, cfg.lr_min_ratio)
        ...backward...; opt.step(); emb_opt.step(); opt.zero_grad(); emb_opt.zero_grad()
"""

from __future__ import annotations

import importlib
import math
import warnings
from typing import Any, Iterable

import torch
import torch.distributed as dist

# The fused CUDA kernel of imoneoi/adam-atan2 (pip package `adam-atan2`, the `cuda` extra) is the
# extension module below; the package's `adam_atan2` is only a Python wrapper around it. It is
# imported on the first step that could use it and checked against the torch update once per
# device, so a missing or broken build costs one warning, never a crash nor a different update.
KERNEL_MODULE = "adam_atan2_backend"
KERNEL_PACKAGE = "adam-atan2"
_NOT_LOADED = object()
_fused_backend: Any = _NOT_LOADED  # the kernel module once imported; None when the import failed
_import_error: str | None = None  # why it failed
_kernel_problems: dict[torch.device, str | None] = {}  # per device: None (the kernel runs) or why not
_fallback_warned = False


# --------------------------------------------------------------------------------------------
# AdamATan2
# --------------------------------------------------------------------------------------------
class AdamATan2(torch.optim.Optimizer):
    """Adam with atan2 instead of the epsilon division, exactly as imoneoi/adam-atan2 (a = b = 1).

    Per parameter, with t its own step count (state["step"]):

        t += 1;  p *= 1 - lr*wd
        m = lerp(m, g, 1-beta1);  v = lerp(v, g*g, 1-beta2)
        p -= (lr / (1 - beta1^t)) * atan2(m, sqrt(v) / sqrt(1 - beta2^t))

    The beta1 bias correction is outside atan2 (lucidrains' variant puts it inside and scales
    by a = 1.27: not the same optimizer). Math runs in fp32 whatever the parameter dtype; the
    moments are always fp32. lr = 0 is valid: warmup starts there.

    `fused`: None (default) runs adam-atan2's fused CUDA kernel for fp32 CUDA parameters when it
    is installed and agrees with the torch update on that device, else the torch update (one
    warning per process saying why and what to install); False always runs the torch update;
    True always runs the kernel and raises when it cannot (for benchmarks and checks).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.1,
        fused: bool | None = None,
    ):
        if not lr >= 0.0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for index, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"betas[{index}] (beta{index + 1}) must be in [0, 1), got {beta}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))
        # Not a param-group default: state dicts stay what they were (and what checkpoints hold).
        self.fused = fused

    def _state_of(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.state[p]
        if not state:
            # step lives on the parameter's device as a float32 scalar: the fused kernel reads it
            # there, and the torch path reads all of a group's steps with one host transfer.
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = float(group["lr"])
            if lr < 0.0:
                raise ValueError(f"lr must be >= 0, got {lr} (check the schedule that sets it)")
            beta1, beta2 = group["betas"]
            weight_decay = group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("AdamATan2 does not support sparse gradients")
            states = [self._state_of(p) for p in params]
            steps = [s["step"] for s in states]
            exp_avgs = [s["exp_avg"] for s in states]
            exp_avg_sqs = [s["exp_avg_sq"] for s in states]
            grads = [p.grad for p in params]
            torch._foreach_add_(steps, 1.0)

            args = (params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, weight_decay)
            if not self._fused_step(args):
                _adam_atan2_torch(*args)
        return loss

    def _fused_step(self, args: tuple) -> bool:
        """Run one group's update with the fused kernel if this optimizer uses it there; False: not run."""
        params = args[0]
        if self.fused is False:
            return False
        if self.fused:
            if not _fused_applies(params):
                raise ValueError("AdamATan2(fused=True) needs fp32 CUDA parameters on one device")
            backend = _import_kernel()
            if backend is None:
                raise RuntimeError(f"AdamATan2(fused=True): {_import_problem()}")
            _call_kernel(backend, *args)
            return True
        device = params[0].device
        if not _fused_applies(params) or _kernel_problem(device) is not None:
            return False
        try:
            _call_kernel(_fused_backend, *args)
        except Exception as error:  # noqa: BLE001 - any kernel failure means: use the torch update
            # The kernel checks its arguments before it writes anything, and a launch failure
            # would have shown on the probe, so nothing is updated yet: the torch update runs now.
            _kernel_problems[device] = f"is installed but its kernel raised {_describe(error)}"
            _warn_fallback(device)
            return False
        return True

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # torch casts loaded state to the parameter dtype (bf16 moments for a bf16 parameter) and
        # leaves "step" wherever it was saved; restore our invariants: fp32 moments and a float32
        # step on the parameter's device, copied so that no tensor is shared with the source.
        super().load_state_dict(state_dict)
        saved_state = state_dict["state"]
        for saved_group, group in zip(state_dict["param_groups"], self.param_groups):
            for index, p in zip(saved_group["params"], group["params"]):
                if index not in saved_state:
                    continue
                saved, state = saved_state[index], self.state[p]
                for key in ("step", "exp_avg", "exp_avg_sq"):
                    if key not in saved:
                        raise ValueError(f"optimizer state of parameter {index} lacks {key!r}: not an AdamATan2 state")
                    state[key] = torch.as_tensor(saved[key]).to(device=p.device, dtype=torch.float32, copy=True)


def _fused_applies(params: list[torch.Tensor]) -> bool:
    # The kernel keeps moments in the parameter dtype; only fp32 parameters keep our fp32-moment
    # guarantee, and TRM stores every parameter in fp32 anyway (CastedLinear casts at use).
    device = params[0].device
    return all(p.is_cuda and p.device == device and p.dtype == torch.float32 for p in params)


def _call_kernel(backend: Any, params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, weight_decay) -> None:
    # Called as adam_atan2.AdamATan2.step calls it (csrc/adam_atan2.cu): lists of params, grads,
    # exp_avgs, exp_avg_sqs (one dtype and device; fp32 here), float32 step tensors on that device,
    # already incremented; then lr, beta1, beta2, wd.
    backend.adam_atan2_cuda_impl_(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, weight_decay)


def _describe(error: BaseException) -> str:
    """'RuntimeError: first line of the message'."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _import_kernel() -> Any:
    """The kernel module, imported once per process; None when it cannot be imported."""
    global _fused_backend, _import_error
    if _fused_backend is _NOT_LOADED:
        try:
            _fused_backend = importlib.import_module(KERNEL_MODULE)
        except Exception as error:  # noqa: BLE001 - ImportError, OSError (built for another torch), ...
            _fused_backend = None
            missing = isinstance(error, ModuleNotFoundError) and error.name == KERNEL_MODULE
            reason = "is not installed" if missing else f"is installed but {KERNEL_MODULE} cannot be imported"
            _import_error = f"{KERNEL_PACKAGE} {reason} ({_describe(error)})"
    return _fused_backend


def _import_problem() -> str:
    return _import_error or f"{KERNEL_PACKAGE} is not installed"


def fused_kernel_problem(device: torch.device | str) -> str | None:
    """None when AdamATan2 (fused=None) runs adam-atan2's fused kernel for fp32 parameters on
    `device`; else why it runs the torch update there. The first call per process imports the
    kernel, the first per device runs it on a small test update next to the torch update."""
    device = torch.device(device)
    if device.type != "cuda":
        return "the fused kernel runs on CUDA devices only"
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _kernel_problem(device)


def _kernel_problem(device: torch.device) -> str | None:
    if device not in _kernel_problems:
        backend = _import_kernel()
        _kernel_problems[device] = _import_problem() if backend is None else _probe_kernel(backend, device)
        if _kernel_problems[device] is not None:
            _warn_fallback(device)
    return _kernel_problems[device]


PROBE_TOLERANCE = 1e-5  # fp32 rounding moves ~1e-7 here; the beta1 correction inside atan2 ~1e-3


def _probe_kernel(backend: Any, device: torch.device) -> str | None:
    """Three kernel steps next to three torch steps on the same random fp32 tensors on `device`:
    None when they agree, else what went wrong (an install that raises, or another update)."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(37,), (4, 33)]  # numels that are and are not multiples of the kernel's 4-wide loads
    start = [torch.randn(shape, generator=gen) for shape in shapes]
    grads = [[torch.randn(shape, generator=gen).to(device) for shape in shapes] for _ in range(3)]
    results = []
    for use_kernel in (True, False):
        params = [p.to(device, copy=True) for p in start]
        exp_avgs, exp_avg_sqs = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
        steps = [torch.zeros((), dtype=torch.float32, device=device) for _ in params]
        for step_grads, lr in zip(grads, (0.01, 0.02, 0.005)):
            torch._foreach_add_(steps, 1.0)
            args = (params, step_grads, exp_avgs, exp_avg_sqs, steps, lr, 0.9, 0.95, 0.1)
            if not use_kernel:
                _adam_atan2_torch(*args)
                continue
            try:
                _call_kernel(backend, *args)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)  # a failed launch surfaces here, not later
            except Exception as error:  # noqa: BLE001 - a broken build: say so, use the torch update
                return f"is installed but its kernel raised {_describe(error)}"
        results.append(params + exp_avgs + exp_avg_sqs)
    diff = max(float((a - b).abs().max()) for a, b in zip(*results))
    if not diff <= PROBE_TOLERANCE:  # NaN too
        return (f"is installed but computes another update than AdamATan2 (by {diff:.1e} > "
                f"{PROBE_TOLERANCE:.0e} on a test step: a build of another adam-atan2 variant?)")
    return None


def _warn_fallback(device: torch.device) -> None:
    """The one warning per process: which package, what is wrong with it, what to do."""
    global _fallback_warned
    if _fallback_warned:
        return
    _fallback_warned = True
    problem = _kernel_problems[device]
    if not problem.startswith(KERNEL_PACKAGE):  # "is installed but ..." from the probe or a step
        problem = f"{KERNEL_PACKAGE}'s fused kernel ({KERNEL_MODULE}) {problem}"
    if problem.startswith(f"{KERNEL_PACKAGE} is not installed"):
        todo = f"pip install --no-build-isolation {KERNEL_PACKAGE} (the `cuda` extra; it builds with nvcc)"
    else:
        todo = (f"rebuild it for this torch and GPU (pip install --force-reinstall --no-cache-dir "
                f"--no-build-isolation {KERNEL_PACKAGE}), or uninstall it to silence this warning")
    warnings.warn(f"AdamATan2 on {device}: {problem}; it runs its pure-torch update instead (the same update, "
                  f"a slower optimizer step). To use the fused kernel: {todo}.", RuntimeWarning, stacklevel=2)


def _adam_atan2_torch(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
) -> None:
    """The update on lists of tensors; moments are fp32, params/grads of any float dtype."""
    params32 = [p if p.dtype == torch.float32 else p.float() for p in params]
    grads32 = [g if g.dtype == torch.float32 else g.float() for g in grads]

    if lr * weight_decay != 0.0:
        torch._foreach_mul_(params32, 1.0 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads32, 1.0 - beta1)
    torch._foreach_lerp_(exp_avg_sqs, torch._foreach_mul(grads32, grads32), 1.0 - beta2)

    step_counts = torch.stack(steps).tolist()  # one host transfer for the whole group
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, [math.sqrt(1.0 - beta2**t) for t in step_counts])
    # No foreach atan2 in torch: one in-place kernel per tensor.
    for p32, m, denom, t in zip(params32, exp_avgs, denoms, step_counts):
        p32.add_(torch.atan2(m, denom, out=denom), alpha=-lr / (1.0 - beta1**t))

    for p, p32 in zip(params, params32):
        if p32 is not p:
            p.copy_(p32)


# --------------------------------------------------------------------------------------------
# Sign-SGD on the puzzle-embedding table
# --------------------------------------------------------------------------------------------
class SparseSignSGD(torch.optim.Optimizer):
    """Distributed sign-SGD on the puzzle-embedding rows looked up this step (docs/paper.md#puzzle-embedding).

    `emb` is the puzzle-embedding module: `emb.weights` (num_ids, D) is the table (a persistent
    buffer), `emb.local_weights` (B, D) the rows this worker looked up, a buffer that requires
    grad, and `emb.local_ids` (B,) their ids. step() gathers every worker's gradient and ids,
    sums gradients per id, and updates only those rows:

        w = w * (1 - lr*wd) - lr * sign(sum of grads of that id over all workers)

    The world size is read from torch.distributed at each step (1 when it is not initialised),
    so the optimiser may be built before the process group. The buffers are read from `emb` at
    each step, so moving the module after building the optimiser is fine. param_groups[0]["lr"]
    is what the schedule sets, as for AdamATan2; there is no other state.
    """

    def __init__(self, emb: torch.nn.Module, lr: float = 1e-2, weight_decay: float = 0.1):
        if not lr >= 0.0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        for name in ("weights", "local_weights", "local_ids"):
            if not isinstance(getattr(emb, name, None), torch.Tensor):
                raise ValueError(f"SparseSignSGD needs a puzzle-embedding module with a tensor `{name}`")
        self.emb = emb
        super().__init__([emb.local_weights], dict(lr=lr, weight_decay=weight_decay))

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.emb.local_weights.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad = self.emb.local_weights.grad
        if grad is None:
            return loss
        group = self.param_groups[0]
        lr, weight_decay = float(group["lr"]), float(group["weight_decay"])
        if lr < 0.0:
            raise ValueError(f"lr must be >= 0, got {lr} (check the schedule that sets it)")
        table = self.emb.weights
        ids = self.emb.local_ids.to(torch.int64)
        grad = grad.to(torch.float32)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ids, grad = _all_gather(ids), _all_gather(grad)

        unique_ids, inverse = torch.unique(ids, return_inverse=True)
        grad_sum = torch.zeros((unique_ids.numel(), grad.shape[-1]), dtype=torch.float32, device=grad.device)
        grad_sum.index_add_(0, inverse, grad)
        rows = table[unique_ids]
        rows.mul_(1.0 - lr * weight_decay).add_(torch.sign(grad_sum).to(rows.dtype), alpha=-lr)
        table[unique_ids] = rows
        return loss


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` (first dim) over all ranks, in rank order."""
    tensor = tensor.contiguous()
    world_size = dist.get_world_size()
    if dist.get_backend() == "gloo":
        # gloo lacks all_gather_into_tensor in some torch versions; the list form works in all.
        chunks = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(chunks, tensor)
        return torch.cat(chunks)
    out = torch.empty((world_size * tensor.shape[0], *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    dist.all_gather_into_tensor(out, tensor)
    return out


# --------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------
def cosine_schedule_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """lr at optimizer step `step` (counted from 1): linear warmup, then cosine to min_ratio*base.

    Past total_steps the cosine rises again, as in the reference; training never goes there.
    """
    if step < warmup_steps:
        return base_lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * (min_ratio + max(0.0, (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))))


def total_train_steps(epochs: int, total_groups: int, mean_puzzle_examples: float, global_batch_size: int) -> int:
    """Optimizer steps of a run, as the reference counts them: examples over all epochs / global batch."""
    return int(epochs * total_groups * mean_puzzle_examples / global_batch_size)
