"""Proves trm-ray's GPU path on one CUDA device: numerics against the CPU, bf16, torch.compile,
adam-atan2's fused optimizer kernel, and the training step's throughput (MFU) at the paper's configs.

    PYTHONPATH=. python benchmarks/gpu_check.py                   # every check, ~6 min on one H200
    PYTHONPATH=. python benchmarks/gpu_check.py --quick           # small configs, no torch.compile: seconds
    PYTHONPATH=. python benchmarks/gpu_check.py --only throughput --steps 10 --json gpu_check.json
    python benchmarks/gpu_check.py --cpu-selftest                 # no GPU: runs this script's logic on the CPU

Needs torch, pydantic and pyyaml (trm_ray.config) and this checkout; no Ray, numpy or anything
else (adam-atan2 is optional: the fused_adam check reports whether it is there and works). Every
measurement is a row: PASS/FAIL against its stated tolerance (exit status 1 if any FAIL), SKIP
where it cannot run here, INFO, and MET/MISSED for the throughput goal (>= 40% MFU, compiled bf16),
which does not change the exit status.

Checks (--only NAME[,NAME]):
  cuda_vs_cpu  fp32 on the GPU (TF32 off) vs fp32 on the CPU, same weights and batch: a full ACT
               rollout's logits, then one train_step's loss, gradients and updated parameters;
               attention and MLP-T variants at a small config.
  bf16         forward_dtype bfloat16 vs float32 on the GPU, the same quantities.
  compile      torch.compile'd vs eager, fp32 on the GPU (TF32 off), the same quantities.
  fused_adam   adam-atan2's fused kernel vs AdamATan2's torch update over 5 steps; the torch update
               vs the formula in float64; the fallback when the kernel is missing, raises, or
               computes another update (one warning, exactly the torch update).
  throughput   samples/s, TFLOP/s (FLOPs of one step counted by FlopCounterMode) and MFU at the
               Sudoku MLP-T recipe (experiments/sudoku-mlp.yaml: batch 768 on one GPU) and the ARC
               attention recipe (experiments/arc1.yaml: 768 over 4 GPUs, 192 per GPU), eager and
               compiled, bf16; plus the compiled step's loss against the eager one's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
import traceback
import types
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `python benchmarks/gpu_check.py` works from anywhere, PYTHONPATH or not

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

try:
    from trm_ray import optim
    from trm_ray.config import DataShape, TrainConfig, load_train_config
    from trm_ray.model import IGNORE_LABEL_ID, ACTCarry
    from trm_ray.train.step import TrainState, create_train_state, train_step
except ModuleNotFoundError as error:
    sys.exit(f"gpu_check: cannot import trm_ray ({error}); it needs torch, pydantic and pyyaml: "
             "pip install pydantic pyyaml, then run it from the repository root")

CHECKS = ("cuda_vs_cpu", "bf16", "compile", "fused_adam", "throughput")
MFU_GOAL = 0.40

# Dense bf16 tensor-core peak (TFLOP/s, no sparsity) by device name; the first match wins, so
# the more specific names come first. --peak-tflops overrides it.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L4", 121.0),
)

# --------------------------------------------------------------------------------------------
# Tolerances. Every comparison is a relative max error, max|a - b| / max|b| over the tensor
# (per parameter for gradients, the worst one reported), except the updated parameters: their
# first AdamATan2 step is lr * 0.997 * sign(g), so they are compared as max|a - b| / lr over the
# elements whose two gradients agree in sign (where they do not, the gradient is at the noise
# floor, within the gradient bound of zero, and either sign is right).
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tolerance:
    logits: float  # the rollout's logits, all ACT steps
    q_halt: float  # the rollout's halting logits
    loss: float  # train_step's lm_loss
    grads: float  # per parameter (and the puzzle-embedding rows), the worst one
    update: float  # |delta param| / lr where the gradient sign is certain
    why: str


# Measured on the CPU at GPU_SMALL, each ACT step from the same carry (run_model): fp32 weights
# perturbed by 1 ulp (what rounding in another order does to each op) move the logits by 1e-6 to
# 4e-6, q_halt 4e-6, the loss 5e-8, gradients 9e-6 and updates 6e-6 of lr; weights rounded to
# TF32's 10 mantissa bits move them 2e-3 to 5e-3, 5e-3, 1e-4, 1e-2. The fp32 bounds sit ~50x
# above the first and 3-10x below the second: a GPU (or compiled) run with TF32 on fails the
# logits, q_halt and gradient bounds.
FP32 = Tolerance(logits=2e-4, q_halt=2e-4, loss=1e-5, grads=1e-3, update=1e-3,
                 why="fp32 in another rounding order: ~50x the error of 1-ulp weight noise, 3-10x below "
                     "TF32's (a run with TF32 on fails)")
# bf16 keeps 8 mantissa bits: measured 2e-2 to 7e-2 on logits, 1.2e-1 on q_halt, 5e-4 on the
# loss and 1.7e-1 on the worst gradient tensor; the bounds are ~3x that (the loss's 10x, one
# bf16 rounding). Master weights and the optimizer stay fp32, so updates agree as in fp32.
BF16 = Tolerance(logits=0.25, q_halt=0.4, loss=5e-3, grads=0.5, update=1e-3,
                 why="~3x the bf16-vs-fp32 error measured on the CPU (2^-8 per rounding); "
                     "fp32 master weights, so the update bound is fp32's")
# At the paper's recipes one step recurses 30-42 block applications deep: bf16 vs fp32 moved the
# first step's lm_loss by 7e-3 (Sudoku MLP-T, batch 8) and 4e-2 (ARC, batch 1) on the CPU. The
# compiled bf16 step keeps more intermediates in fp32 than eager bf16, so it differs from it by up
# to that much; this bound only catches a compiled step that computes something else.
PAPER_BF16_LOSS = 0.1
ADAM_FORMULA_TOL = 2e-6  # fp32 update vs float64, 5 steps of lr <= 0.05 on params ~1
FUSED_TOL = 1e-6  # relative to the largest element: ~8 ulps; kernel and torch update are both fp32


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------
@dataclass
class Row:
    check: str
    case: str
    quantity: str
    measured: float | None
    shown: str  # measured as printed
    bound: str
    status: str  # PASS FAIL SKIP INFO MET MISSED
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Report:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.start = time.perf_counter()

    def progress(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.start:6.1f}s] {text}", flush=True)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        note = f"  ({row.note})" if row.note else ""
        self.progress(f"  {row.status:<6} {row.check} / {row.case} / {row.quantity}: {row.shown} {row.bound}{note}")
        return row

    def within(self, check: str, case: str, quantity: str, value: float, bound: float, note: str = "") -> Row:
        ok = math.isfinite(value) and value <= bound
        shown_bound = f"<= {bound:.0e}" if bound < 0.01 else f"<= {bound:g}"
        return self.add(Row(check, case, quantity, value, f"{value:.1e}", shown_bound, "PASS" if ok else "FAIL", note))

    def verdict(self, check: str, case: str, quantity: str, ok: bool, shown: str, bound: str, note: str = "") -> Row:
        return self.add(Row(check, case, quantity, None, shown, bound, "PASS" if ok else "FAIL", note))

    def skip(self, check: str, case: str, quantity: str, why: str) -> Row:
        return self.add(Row(check, case, quantity, None, "-", "", "SKIP", why))

    def info(self, check: str, case: str, quantity: str, shown: str, note: str = "", **extra: Any) -> Row:
        return self.add(Row(check, case, quantity, None, shown, "", "INFO", note, extra))

    def failed(self) -> bool:
        return any(row.status == "FAIL" for row in self.rows)

    def table(self) -> str:
        header = ("check", "case", "quantity", "measured", "tolerance", "status")
        lines = [[row.check, row.case, row.quantity, row.shown, row.bound, row.status] for row in self.rows]
        widths = [max(len(str(cells[i])) for cells in [header, *lines]) for i in range(len(header))]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
        out += [fmt.format(*cells) + (f"  {row.note}" if row.note else "") for cells, row in zip(lines, self.rows)]
        return "\n".join(out)

    def summary(self) -> str:
        counts = {s: sum(r.status == s for r in self.rows) for s in ("PASS", "FAIL", "SKIP", "INFO", "MET", "MISSED")}
        text = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        goals = [f"{r.case} {r.shown} {r.status}" for r in self.rows if r.status in ("MET", "MISSED")]
        goal = f"; MFU goal >= {MFU_GOAL:.0%} compiled bf16: " + ", ".join(goals) if goals else ""
        elapsed = time.perf_counter() - self.start
        return f"{text}{goal}; {elapsed:.0f} s in all; exit status {1 if self.failed() else 0}"


def guarded(report: Report, check: str, body: Callable[[], None]) -> None:
    """Run one check; an exception is a FAIL row (with the traceback printed), the others go on."""
    report.progress(f"{check} ...")
    try:
        body()
    except Exception as error:  # noqa: BLE001 - report, keep checking
        traceback.print_exc()
        report.add(Row(check, "-", "check ran to the end", None, f"{type(error).__name__}", "no exception", "FAIL",
                       str(error).splitlines()[0][:200] if str(error) else ""))


# --------------------------------------------------------------------------------------------
# Setup: configs, batches, devices
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Env:
    device: torch.device  # where the checks run (cpu in the self-test)
    selftest: bool
    quick: bool
    steps: int
    peak_tflops: float | None
    cpu_compile: bool  # compile in the self-test (minutes on a small CPU)


@dataclass(frozen=True)
class Small:
    """The config of the numerics checks: every code path of the paper's configs, smaller."""

    arch: dict[str, Any]
    shape: DataShape
    batch_size: int


GPU_SMALL = Small(
    arch=dict(hidden_size=128, num_heads=4, L_layers=2, H_cycles=2, L_cycles=3, halt_max_steps=16, puzzle_emb_len=4),
    shape=DataShape(seq_len=24, vocab_size=12, num_puzzle_identifiers=32), batch_size=8)
CPU_TINY = Small(
    arch=dict(hidden_size=32, num_heads=2, L_layers=1, H_cycles=2, L_cycles=2, halt_max_steps=4, puzzle_emb_len=2),
    shape=DataShape(seq_len=8, vocab_size=6, num_puzzle_identifiers=10), batch_size=4)
LR = 1e-2  # large enough that one step's update stands far above fp32 rounding of the weights


def small_config(small: Small, mlp_t: bool, dtype: str, compiled: bool) -> TrainConfig:
    arch = dict(small.arch, mlp_t=mlp_t, pos_encodings="none" if mlp_t else "rope", forward_dtype=dtype,
                halt_exploration_prob=0.0)  # exploration draws differ between CPU and CUDA generators
    return TrainConfig(arch=arch, compile=compiled, global_batch_size=small.batch_size, lr=LR, puzzle_emb_lr=LR,
                       lr_warmup_steps=0, weight_decay=0.1, puzzle_emb_weight_decay=0.1, seed=0)


def make_batch(batch_size: int, shape: DataShape, seed: int) -> dict[str, torch.Tensor]:
    """Random tokens and labels (the last quarter of each row ignored, as padding is) on the CPU."""
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(1, shape.vocab_size, (batch_size, shape.seq_len), generator=g, dtype=torch.int32)
    labels = torch.randint(1, shape.vocab_size, (batch_size, shape.seq_len), generator=g, dtype=torch.int32)
    labels[:, shape.seq_len - shape.seq_len // 4:] = IGNORE_LABEL_ID
    low = 1 if shape.num_puzzle_identifiers > 1 else 0  # id 0 is the blank puzzle
    ids = torch.randint(low, max(low + 1, shape.num_puzzle_identifiers), (batch_size,), generator=g, dtype=torch.int32)
    return {"inputs": inputs, "labels": labels, "puzzle_identifiers": ids}


def reference_weights(config: TrainConfig, shape: DataShape, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights and buffers built on the CPU in fp32: every run of a comparison loads these.

    The halting head starts at "never halt" (zero weights, bias -5); here it gets random weights
    and the bias that puts the batch's first q_halt at a median of 0, so rows halt (and restart
    from the init states on a fresh example) at different ACT steps: the rollout exercises the
    carry reset next to carried rows."""
    fp32 = config.model_copy(update={"arch": config.arch.model_copy(update={"forward_dtype": "float32"}),
                                     "compile": False})
    state = create_train_state(fp32, shape, total_steps=10**6, device="cpu")
    q_head = state.module.model.inner.q_head
    with torch.no_grad():
        gen = torch.Generator().manual_seed(config.seed + 1)
        q_head.weight.copy_(torch.randn(q_head.weight.shape, generator=gen) / math.sqrt(q_head.weight.shape[1]))
        _, outputs = state.module.model(state.module.initial_carry(batch), batch)
        q_head.bias[0] -= outputs["q_halt_logits"].median()
    return {k: v.detach().clone() for k, v in state.module.state_dict().items()}


def compile_counts() -> tuple[int, int]:
    """Dynamo's running totals of compiled graphs and graph breaks ((-1, -1): unknown)."""
    try:
        from torch._dynamo.utils import counters  # private; its absence is no failure

        return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    except Exception:  # noqa: BLE001
        return -1, -1


def compile_summary(before: tuple[int, int]) -> str:
    """Graphs and graph breaks since `before`: 1 graph (its backward compiled with it) and no
    break mean the whole recursion runs compiled."""
    after = compile_counts()
    if -1 in before + after:
        return "graph count unknown"
    return f"{after[0] - before[0]} graph(s), {after[1] - before[1]} graph break(s)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def disable_tf32() -> str:
    """fp32 matmuls in full fp32 (TF32 rounds their inputs to 10 mantissa bits).

    Through the legacy flags on purpose: torch >= 2.9 maps them onto its fp32_precision settings
    consistently, while setting cudnn's conv/rnn fp32_precision directly makes every later read of
    torch.backends.cudnn.allow_tf32 raise ("mix of the legacy and new APIs")."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch >= 2.9 says the flags will be deprecated
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        state = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if any(state):
        raise RuntimeError(f"TF32 is still on after turning it off (matmul, cudnn = {state})")
    return "TF32 off (torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False)"


@contextlib.contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# One run of the model: the ACT rollout, then one train_step
# --------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    carries: list[ACTCarry]  # the carry before each ACT step of the rollout, on the CPU
    logits: torch.Tensor  # (halt_max_steps, B, S, V) fp32, CPU
    q_halt: torch.Tensor  # (halt_max_steps, B)
    halts: int  # rows that halted during the rollout
    lm_loss: float
    grads: dict[str, torch.Tensor]  # per parameter, and the puzzle table's rows ("puzzle_emb.weights")
    after: dict[str, torch.Tensor]  # parameters and the puzzle table after the step


def carry_to(carry: ACTCarry, device: torch.device, dtype: torch.dtype) -> ACTCarry:
    """A copy of `carry` on `device`, its states in `dtype` (the model's forward dtype)."""
    return ACTCarry(inner={k: v.to(device, dtype, copy=True) for k, v in carry.inner.items()},
                    steps=carry.steps.to(device, copy=True), halted=carry.halted.to(device, copy=True),
                    current_data={k: v.to(device, copy=True) for k, v in carry.current_data.items()})


def trained_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    tensors = {name.removeprefix("model.inner."): p for name, p in module.named_parameters()}
    inner = module.model.inner
    if hasattr(inner, "puzzle_emb"):
        tensors["puzzle_emb.weights"] = inner.puzzle_emb.weights
    return tensors


def grads_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {name.removeprefix("model.inner."): p.grad.detach().float().cpu().clone()
             for name, p in module.named_parameters() if p.grad is not None}
    inner = module.model.inner
    if hasattr(inner, "puzzle_emb") and inner.puzzle_emb.local_weights.grad is not None:
        emb = inner.puzzle_emb  # the table's gradient: each looked-up row's, summed per id
        table = torch.zeros(emb.weights.shape, dtype=torch.float32)
        ids, rows = emb.local_ids.long().cpu(), emb.local_weights.grad.float().cpu()
        grads["puzzle_emb.weights"] = table.index_add_(0, ids, rows)
    return grads


def run_model(config: TrainConfig, shape: DataShape, batch: dict[str, torch.Tensor], device: torch.device,
              weights: dict[str, torch.Tensor], reference: Outcome | None = None) -> Outcome:
    """A rollout of halt_max_steps ACT steps from a fresh carry, then one train_step.

    With a `reference`, every ACT step starts from the reference run's carry before that step
    (teacher forcing): at random init the recursion is chaotic (a 1-ulp change of the weights
    grows ~3x per ACT step for attention and ~10x for MLP-T, to O(1) over 16 steps), so two
    free-running rollouts part ways whatever their precision; step by step from the same carry,
    each output shows the error of one step. The rollout runs in training mode with autograd on,
    as training runs the network, so the compiled graph it checks is the one train_step uses."""
    if config.compile:
        torch._dynamo.reset()  # a fresh compile cache: no recompile limit reached by earlier runs
    state = create_train_state(config, shape, total_steps=10**6, device=device)
    state.module.load_state_dict(weights)
    forward_dtype = state.module.model.inner.forward_dtype
    on_device = {k: v.to(device) for k, v in batch.items()}
    carry = state.module.initial_carry(on_device)
    carries, logits, q_halt, halts = [], [], [], 0
    for step in range(config.arch.halt_max_steps):
        if reference is not None:
            carry = carry_to(reference.carries[step], device, forward_dtype)
        carries.append(carry_to(carry, torch.device("cpu"), torch.float32))
        carry, _, _, outputs, _ = state.model(carry, on_device)
        halts += int(carry.halted.sum())
        logits.append(outputs["logits"].float().cpu())
        q_halt.append(outputs["q_halt_logits"].float().cpu())

    grads: dict[str, torch.Tensor] = {}
    # The first optimizer to step sees every gradient (the puzzle rows' included) before any zero_grad.
    hook = state.optimizers[0].register_step_pre_hook(lambda *_: grads.update(grads_of(state.module)))
    try:
        metrics = train_step(state, batch)
    finally:
        hook.remove()
    after = {name: t.detach().float().cpu().clone() for name, t in trained_tensors(state.module).items()}
    return Outcome(carries, torch.stack(logits), torch.stack(q_halt), halts, metrics["train/lm_loss"], grads, after)


def rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b| in float64 (max|a - b| where b is all zero)."""
    a, b = a.double(), b.double()
    scale = float(b.abs().max()) if b.numel() else 0.0
    diff = float((a - b).abs().max()) if b.numel() else 0.0
    return diff / scale if scale > 0 else diff


def compare(report: Report, check: str, case: str, got: Outcome, ref: Outcome, tol: Tolerance) -> None:
    steps = ref.logits.shape[0]
    report.within(check, case, f"rollout logits, {steps} ACT steps", rel_max(got.logits, ref.logits), tol.logits,
                  f"each step from the reference's carry; {ref.halts} halts and restarts")
    report.within(check, case, "rollout q_halt logits", rel_max(got.q_halt, ref.q_halt), tol.q_halt)
    report.within(check, case, "train_step lm_loss", abs(got.lm_loss - ref.lm_loss) / abs(ref.lm_loss), tol.loss,
                  f"{got.lm_loss:.6f} vs {ref.lm_loss:.6f}")
    missing = sorted(set(ref.grads) ^ set(got.grads))
    errors = {name: rel_max(got.grads[name], g) for name, g in ref.grads.items() if name in got.grads}
    worst_name = max(errors, key=lambda name: math.inf if math.isnan(errors[name]) else errors[name])
    worst = math.inf if missing or math.isnan(errors[worst_name]) else errors[worst_name]
    report.within(check, case, "train_step gradients (worst tensor)", worst, tol.grads,
                  f"gradients on one side only: {missing[:3]}" if missing else worst_name)
    # The first AdamATan2 step is lr * 0.997 * sign(g) and sign-SGD's lr * sign(g): where the two
    # gradients agree in sign the updates must agree to rounding; where they do not, the gradient
    # is within the gradient tolerance of zero (else the row above fails) and either sign is right.
    worst_update, flipped, total = 0.0, 0, 0
    for name, g in ref.grads.items():
        if name not in got.grads:
            continue
        agree = torch.sign(got.grads[name]) == torch.sign(g)
        flipped += int((~agree).sum())
        total += g.numel()
        if agree.any():
            diff = float((got.after[name] - ref.after[name]).abs()[agree].max()) / LR
            worst_update = math.inf if math.isnan(diff) else max(worst_update, diff)
    report.within(check, case, "train_step updated params, |dp|/lr", worst_update, tol.update,
                  f"where gradient signs agree; {flipped} of {total} elements have opposite signs")


# --------------------------------------------------------------------------------------------
# Checks 1-3: numerics
# --------------------------------------------------------------------------------------------
VARIANTS = (("attention", False), ("mlp_t", True))


def check_cuda_vs_cpu(report: Report, env: Env) -> None:
    small = CPU_TINY if env.selftest else GPU_SMALL
    batch = make_batch(small.batch_size, small.shape, seed=1)
    for name, mlp_t in VARIANTS:
        config = small_config(small, mlp_t, "float32", compiled=False)
        weights = reference_weights(config, small.shape, batch)
        ref = run_model(config, small.shape, batch, torch.device("cpu"), weights)
        if env.selftest:  # no GPU: a CPU run with one thread (another reduction order) stands in for it
            with cpu_threads(1):
                got = run_model(config, small.shape, batch, torch.device("cpu"), weights, ref)
            case = f"{name} [self-test: cpu 1 thread vs cpu {torch.get_num_threads()}]"
        else:
            got = run_model(config, small.shape, batch, env.device, weights, ref)
            case = f"{name} fp32"
        compare(report, "cuda_vs_cpu", case, got, ref, FP32)


def check_bf16(report: Report, env: Env) -> None:
    small = CPU_TINY if env.selftest else GPU_SMALL
    batch = make_batch(small.batch_size, small.shape, seed=2)
    for name, mlp_t in VARIANTS:
        ref_config = small_config(small, mlp_t, "float32", compiled=False)
        weights = reference_weights(ref_config, small.shape, batch)
        ref = run_model(ref_config, small.shape, batch, env.device, weights)
        bf16 = small_config(small, mlp_t, "bfloat16", compiled=False)
        got = run_model(bf16, small.shape, batch, env.device, weights, ref)
        compare(report, "bf16", f"{name} bf16 vs fp32 ({env.device.type})", got, ref, BF16)


def check_compile(report: Report, env: Env) -> None:
    if env.quick:
        for name, _ in VARIANTS:
            report.skip("compile", name, "compiled vs eager", "--quick runs no torch.compile")
        return
    if env.selftest and not env.cpu_compile:
        for name, _ in VARIANTS:
            report.skip("compile", name, "compiled vs eager",
                        "a cold Inductor compile takes minutes on a small CPU; --cpu-compile runs it")
        return
    small = CPU_TINY if env.selftest else GPU_SMALL
    batch = make_batch(small.batch_size, small.shape, seed=3)
    for name, mlp_t in VARIANTS:
        eager = small_config(small, mlp_t, "float32", compiled=False)
        weights = reference_weights(eager, small.shape, batch)
        ref = run_model(eager, small.shape, batch, env.device, weights)
        start, counts = time.perf_counter(), compile_counts()
        compiled = small_config(small, mlp_t, "float32", compiled=True)
        got = run_model(compiled, small.shape, batch, env.device, weights, ref)
        report.progress(f"  compiled {name} in {time.perf_counter() - start:.0f}s (compile and run): "
                        f"{compile_summary(counts)}")
        compare(report, "compile", f"{name} fp32 compiled vs eager ({env.device.type})", got, ref, FP32)


# --------------------------------------------------------------------------------------------
# Check 4: AdamATan2's fused kernel and its fallback
# --------------------------------------------------------------------------------------------
def adam_atan2_float64(start: list[float], grads: list[list[float]], lrs: list[float], wd: float,
                       beta1: float = 0.9, beta2: float = 0.95) -> list[float]:
    """The update element by element in float64, written from its definition (not from optim.py):
    p *= 1 - lr*wd; m, v lerp towards g, g^2; p -= lr/(1-b1^t) * atan2(m, sqrt(v)/sqrt(1-b2^t))."""
    p, m, v = list(start), [0.0] * len(start), [0.0] * len(start)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        for i, gi in enumerate(g):
            m[i] += (1 - beta1) * (gi - m[i])
            v[i] += (1 - beta2) * (gi * gi - v[i])
            angle = math.atan2(m[i], math.sqrt(v[i]) / math.sqrt(1 - beta2**t))
            p[i] = p[i] * (1 - lr * wd) - lr / (1 - beta1**t) * angle
    return p


def formula_error(start: list[torch.Tensor], grads: list[list[torch.Tensor]], params: list[torch.Tensor]) -> float:
    """max |param - the float64 formula's value| after the ADAM_LRS steps (weight decay 0.1)."""
    errors = []
    for j, (s, p) in enumerate(zip(start, params)):
        expected = adam_atan2_float64(s.flatten().tolist(), [g[j].flatten().tolist() for g in grads], ADAM_LRS, 0.1)
        errors += [abs(a - b) for a, b in zip(p.detach().cpu().double().flatten().tolist(), expected)]
    return max(errors)


def run_adam(device: torch.device, shapes: list[tuple[int, ...]], lrs: list[float], **kwargs: Any):
    """AdamATan2 over len(lrs) steps on seeded params and grads; (start, grads, params, optimizer, warnings)."""
    gen = torch.Generator().manual_seed(7)
    start = [torch.randn(shape, generator=gen) for shape in shapes]
    grads = [[torch.randn(shape, generator=gen) for shape in shapes] for _ in lrs]
    params = [torch.nn.Parameter(p.to(device, copy=True)) for p in start]
    opt = optim.AdamATan2(params, weight_decay=0.1, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step_grads, lr in zip(grads, lrs):
            opt.param_groups[0]["lr"] = lr
            for p, g in zip(params, step_grads):
                p.grad = g.to(device)
            opt.step()
    synchronize(device)
    return start, grads, params, opt, [w for w in caught if issubclass(w.category, RuntimeWarning)]


ADAM_LRS = [0.01, 0.05, 0.0, 0.02, 0.03]


def stand_in_kernel(update: Callable[..., None]) -> types.ModuleType:
    """A module shaped like the built extension (adam_atan2_cuda_impl_ on lists, in place)."""
    module = types.ModuleType(optim.KERNEL_MODULE)

    def adam_atan2_cuda_impl_(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, weight_decay):
        for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
            update(p, g, m, v, float(t), lr, beta1, beta2, weight_decay)

    module.adam_atan2_cuda_impl_ = adam_atan2_cuda_impl_
    return module


def raising_update(*_: Any) -> None:
    raise RuntimeError("CUDA error: no kernel image is available for execution on the device")


def correction_inside_update(p, g, m, v, t, lr, beta1, beta2, wd) -> None:
    """Another optimizer: the beta1 correction inside atan2 (what a different build may compute)."""
    p.mul_(1 - lr * wd)
    m.lerp_(g, 1 - beta1)
    v.lerp_(g * g, 1 - beta2)
    p.sub_(lr * torch.atan2(m / (1 - beta1**t), v.sqrt() / math.sqrt(1 - beta2**t)))


_ABSENT = object()


@contextlib.contextmanager
def simulated_install(module: types.ModuleType | None, cpu_params: bool) -> Iterator[None]:
    """The process as it first meets `module` as the kernel (None: not installed); restored after."""
    names = ("_fused_backend", "_import_error", "_kernel_problems", "_fallback_warned", "_fused_applies")
    saved = {name: getattr(optim, name) for name in names}
    saved_module = sys.modules.get(optim.KERNEL_MODULE, _ABSENT)
    optim._fused_backend, optim._import_error, optim._kernel_problems, optim._fallback_warned = \
        optim._NOT_LOADED, None, {}, False
    if cpu_params:  # the kernel never applies to CPU parameters: let them stand in for CUDA ones
        optim._fused_applies = lambda params: True
    sys.modules[optim.KERNEL_MODULE] = module  # None makes `import` fail as for a missing package
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(optim, name, value)
        if saved_module is _ABSENT:
            sys.modules.pop(optim.KERNEL_MODULE, None)
        else:
            sys.modules[optim.KERNEL_MODULE] = saved_module


def check_fused_adam(report: Report, env: Env) -> None:
    device = env.device
    shapes = [(512, 1536), (1536,), (11, 512), (3,)]  # numels that are and are not multiples of 4
    small_shapes = [(7,), (3, 5)]
    check = "fused_adam"

    # The torch update on this device vs the formula in float64.
    start, grads, params, _, _ = run_adam(device, small_shapes, ADAM_LRS, fused=False)
    report.within(check, f"torch update ({device.type})", "vs float64 formula, 5 steps, max |dp|",
                  formula_error(start, grads, params), ADAM_FORMULA_TOL, "fp32 rounding of 5 steps")

    # The installed kernel, if any, vs the torch update.
    if device.type != "cuda":
        report.skip(check, "fused kernel", "vs torch update, 5 steps", "no CUDA device")
    else:
        problem = optim.fused_kernel_problem(device)  # imports and probes the kernel once
        report.info(check, "AdamATan2() on this GPU", "update used", "fused kernel" if problem is None else "torch",
                    problem or f"{optim.KERNEL_MODULE} imported and agrees with the torch update")
        if problem is not None and f"{optim.KERNEL_PACKAGE} is not installed" in problem:
            report.skip(check, "fused kernel", "vs torch update, 5 steps",
                        f"{problem}: pip install --no-build-isolation {optim.KERNEL_PACKAGE} to check it")
        else:
            try:  # fused=True: the kernel itself, no probe and no fallback
                _, _, fused, fused_opt, _ = run_adam(device, shapes, ADAM_LRS, fused=True)
            except Exception as error:  # noqa: BLE001 - an installed kernel that cannot run is a FAIL
                report.verdict(check, "fused kernel", "vs torch update, 5 steps", False, type(error).__name__,
                               "runs", str(error).splitlines()[0][:160] if str(error) else "")
            else:
                _, _, plain, plain_opt, _ = run_adam(device, shapes, ADAM_LRS, fused=False)
                report.within(check, "fused kernel", "vs torch update, 5 steps: params (rel max)",
                              max(rel_max(a, b) for a, b in zip(fused, plain)), FUSED_TOL,
                              "fp32 both; fma and atan2 rounding differ by ulps")
                report.within(check, "fused kernel", "vs torch update, 5 steps: moments (rel max)",
                              max(rel_max(fused_opt.state[a][k], plain_opt.state[b][k])
                                  for a, b in zip(fused, plain) for k in ("exp_avg", "exp_avg_sq")), FUSED_TOL)

    # Simulated installs: AdamATan2() must give exactly the torch update, with one warning.
    _, _, expected, _, _ = run_adam(device, small_shapes, ADAM_LRS, fused=False)
    cases = (("not installed", None, "is not installed"),
             ("kernel raises", stand_in_kernel(raising_update), "its kernel raised RuntimeError"),
             ("another update", stand_in_kernel(correction_inside_update), "computes another update"))
    for case, module, phrase in cases:
        with simulated_install(module, cpu_params=device.type != "cuda"):
            _, _, got, _, caught = run_adam(device, small_shapes, ADAM_LRS)
        same = all(torch.equal(a, b) for a, b in zip(got, expected))
        messages = [str(w.message) for w in caught]
        ok = same and len(messages) == 1 and phrase in messages[0] and "adam-atan2" in messages[0] \
            and "pip install" in messages[0]
        report.verdict(check, f"simulated install: {case}", "AdamATan2() falls back", ok,
                       f"{len(messages)} warning(s), update {'==' if same else '!='} torch",
                       "1 warning, == torch", messages[0][:150] if messages else "no warning")
    # A stand-in with the right maths must be used, and give the float64 formula's values.
    calls: list[int] = []

    def counted(p, g, m, v, t, lr, beta1, beta2, wd):
        calls.append(p.numel())
        p.mul_(1 - lr * wd)
        m.lerp_(g, 1 - beta1)
        v.lerp_(g * g, 1 - beta2)
        p.sub_(lr / (1 - beta1**t) * torch.atan2(m, v.sqrt() / math.sqrt(1 - beta2**t)))

    with simulated_install(stand_in_kernel(counted), cpu_params=device.type != "cuda"):
        start, grads, got, _, caught = run_adam(device, small_shapes, ADAM_LRS)
    error = formula_error(start, grads, got)
    used = sum(n in (7, 15) for n in calls)
    report.verdict(check, "simulated install: working kernel", "AdamATan2() uses it", used == 2 * len(ADAM_LRS)
                   and not caught and error <= ADAM_FORMULA_TOL, f"{used} kernel calls, {len(caught)} warnings",
                   f"{2 * len(ADAM_LRS)} calls, 0 warnings", f"vs float64 formula {error:.1e}")


# --------------------------------------------------------------------------------------------
# Check 5: throughput
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    name: str
    recipe: str
    shape: DataShape
    overrides: tuple[str, ...] = ()


# The puzzle table's size changes memory, not the step's work (sign-SGD touches the batch's rows).
WORKLOADS = (
    Workload("sudoku-mlp", "experiments/sudoku-mlp.yaml",
             DataShape(seq_len=81, vocab_size=11, num_puzzle_identifiers=1)),
    Workload("arc1-att", "experiments/arc1.yaml",
             DataShape(seq_len=900, vocab_size=12, num_puzzle_identifiers=1000)),
)
TINY = ("arch.hidden_size=32", "arch.num_heads=2", "arch.H_cycles=2", "arch.L_cycles=2", "arch.L_layers=1",
        "arch.puzzle_emb_ndim=32", "arch.puzzle_emb_len=2", "global_batch_size=8", "ray.num_workers=1")


def peak_tflops(env: Env) -> tuple[float | None, str]:
    if env.peak_tflops:
        return env.peak_tflops, "--peak-tflops"
    if env.device.type != "cuda":
        return None, "no peak for a CPU; pass --peak-tflops"
    name = torch.cuda.get_device_name(env.device)
    for key, peak in PEAK_BF16_TFLOPS:
        if key in name:
            return peak, f"{name}: dense bf16 {peak:.0f} TFLOP/s"
    return None, f"{name} is not in the peak table; pass --peak-tflops"


def time_steps(config: TrainConfig, shape: DataShape, batch_size: int, env: Env, count_flops: bool) -> dict[str, Any]:
    """One step (counted by FlopCounterMode when asked; compiles when compiled), one more warm-up,
    then env.steps timed steps between CUDA events."""
    device = env.device
    if config.compile:
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    state: TrainState | None = create_train_state(config, shape, total_steps=10**9, device=device,
                                                  batch_size_per_worker=batch_size)
    batches = [make_batch(batch_size, shape, seed=100 + i) for i in range(2 + env.steps)]
    start = time.perf_counter()
    with FlopCounterMode(display=False) if count_flops else contextlib.nullcontext() as counter:
        first = train_step(state, batches[0])
    synchronize(device)
    first_s = time.perf_counter() - start
    train_step(state, batches[1])
    synchronize(device)
    if device.type == "cuda":
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for batch in batches[2:]:
            train_step(state, batch)
        end.record()
        synchronize(device)
        seconds = begin.elapsed_time(end) / 1e3
    else:
        begin_s = time.perf_counter()
        for batch in batches[2:]:
            train_step(state, batch)
        seconds = time.perf_counter() - begin_s
    result = {"first_step_s": first_s, "s_per_step": seconds / env.steps, "lm_loss_step1": first["train/lm_loss"],
              "flops_per_step": counter.get_total_flops() if count_flops else None,
              "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
    del state
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def check_throughput(report: Report, env: Env) -> None:
    check = "throughput"
    peak, peak_note = peak_tflops(env)
    report.info(check, "peak", "dense bf16 TFLOP/s", f"{peak:.0f}" if peak else "-", peak_note)
    compile_modes = [False] if env.quick or (env.selftest and not env.cpu_compile) else [False, True]
    for load in WORKLOADS:
        overrides = [*load.overrides, *(TINY if env.selftest else ())]
        base = load_train_config(REPO / "trm_ray" / "recipes" / load.recipe, overrides)
        shape = workload_shape(load.shape, env)
        batch_size = base.batch_size_per_worker // (8 if env.quick else 1)
        arch = base.arch
        case_base = (f"{load.name} B{batch_size} S{shape.seq_len}+{arch.puzzle_prefix_len} D{arch.hidden_size} "
                     f"H{arch.H_cycles}/L{arch.L_cycles}")
        flops, eager_loss = None, None
        for compiled in compile_modes:
            config = base.model_copy(update={"compile": compiled})
            report.progress(f"  {load.name} {'compiled' if compiled else 'eager'} bf16, batch {batch_size} ...")
            counts = compile_counts()
            r = time_steps(config, shape, batch_size, env, count_flops=flops is None)
            if compiled:
                report.progress(f"  {load.name} compiled: {compile_summary(counts)}")
            flops = flops or r["flops_per_step"]
            case = f"{case_base} {'compiled' if compiled else 'eager'} {arch.forward_dtype}"
            tflops = flops / r["s_per_step"] / 1e12
            extra = dict(r, samples_per_s=batch_size / r["s_per_step"], tflops=tflops, batch_size=batch_size,
                         mfu=tflops / peak if peak else None)
            note = (f"{batch_size / r['s_per_step']:.0f} samples/s, {r['s_per_step'] * 1e3:.1f} ms/step, "
                    f"{tflops:.3g} TFLOP/s, {flops / 1e12:.3g} TFLOP/step, first step {r['first_step_s']:.1f}s"
                    + (f", peak mem {r['peak_mem_gib']:.1f} GiB" if r["peak_mem_gib"] else ""))
            if peak is None:
                report.info(check, case, "TFLOP/s", f"{tflops:.3g}", note, **extra)
            elif compiled:
                met = tflops / peak >= MFU_GOAL
                report.add(Row(check, case, "MFU", tflops / peak, f"{tflops / peak:.1%}", f">= {MFU_GOAL:.0%} (goal)",
                               "MET" if met else "MISSED", note, extra))
            else:
                report.info(check, case, "MFU", f"{tflops / peak:.1%}", note, **extra)
            if not compiled:
                eager_loss = r["lm_loss_step1"]
            else:
                report.within(check, case_base, "step-1 lm_loss compiled vs eager (bf16)",
                              abs(r["lm_loss_step1"] - eager_loss) / abs(eager_loss), PAPER_BF16_LOSS,
                              f"{r['lm_loss_step1']:.5f} vs {eager_loss:.5f}")
        if not compile_modes[-1]:
            report.skip(check, case_base, "compiled bf16 MFU",
                        "--quick runs no torch.compile" if env.quick else "no compile on the CPU self-test")


def workload_shape(shape: DataShape, env: Env) -> DataShape:
    if not env.selftest:
        return shape
    return shape.model_copy(update={"seq_len": min(shape.seq_len, 30),
                                    "num_puzzle_identifiers": min(shape.num_puzzle_identifiers, 10)})


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
RUNNERS: dict[str, Callable[[Report, Env], None]] = {
    "cuda_vs_cpu": check_cuda_vs_cpu, "bf16": check_bf16, "compile": check_compile,
    "fused_adam": check_fused_adam, "throughput": check_throughput,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small configs only, no torch.compile: seconds")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per throughput row (default 5)")
    parser.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated checks to run: {', '.join(CHECKS)}")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak in TFLOP/s for MFU (default: from the device name)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the rows as JSON to OUT")
    parser.add_argument("--cpu-selftest", action="store_true",
                        help="run this script's logic on the CPU at tiny sizes (where there is no GPU)")
    parser.add_argument("--cpu-compile", action="store_true",
                        help="with --cpu-selftest, also run torch.compile on the CPU (a cold compile takes minutes)")
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in only if name not in CHECKS]
    if unknown or not only:
        parser.error(f"--only {args.only!r}: unknown check {unknown[0] if unknown else '(none)'}; "
                     f"choose from {', '.join(CHECKS)}")
    if args.steps < 1:
        parser.error(f"--steps {args.steps}: must be at least 1")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        parser.error(f"--peak-tflops {args.peak_tflops}: must be a positive number of TFLOP/s")
    if args.json is not None and (args.json.is_dir() or not args.json.parent.is_dir()):
        parser.error(f"--json {args.json}: not a file in an existing folder; pass a path like gpu_check.json")
    args.only = only
    return args


def environment(report: Report, env: Env, tf32: str) -> dict[str, Any]:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(env.device), "tf32": tf32,
            "python": sys.version.split()[0], "cpu_threads": torch.get_num_threads()}
    if env.device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(env.device)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(env.device)))
    report.progress("gpu_check: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    return info


def check_imports(report: Report) -> None:
    """Everything above ran on torch and trm-ray's Ray-free modules alone."""
    ray_loaded = sorted(m for m, module in sys.modules.items() if module is not None and m.split(".")[0] == "ray")
    report.verdict("environment", "imports", "no Ray module loaded", not ray_loaded,
                   "none" if not ray_loaded else ray_loaded[0], "none")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device on this machine (torch {torch.__version__}, "
              f"torch.cuda.is_available() is False): nothing to check on a GPU here"
              + ("; running the CPU self-test" if args.cpu_selftest else
                 "; --cpu-selftest runs this script's logic on the CPU"), flush=True)
        if not args.cpu_selftest:
            return 0
    device = torch.device("cpu") if args.cpu_selftest else torch.device("cuda", torch.cuda.current_device())
    env = Env(device=device, selftest=args.cpu_selftest, quick=args.quick, steps=args.steps,
              peak_tflops=args.peak_tflops, cpu_compile=args.cpu_compile)
    tf32 = disable_tf32()
    report = Report()
    info = environment(report, env, tf32)
    for name in CHECKS:
        if name in args.only:
            guarded(report, name, lambda: RUNNERS[name](report, env))
    check_imports(report)
    print("\n" + report.table() + "\n")
    print(f"FP32 tolerances: {FP32.why}.\nBF16 tolerances: {BF16.why}.")
    print(f"Goal: >= {MFU_GOAL:.0%} MFU for the compiled bf16 training step "
          "(MET/MISSED do not change the exit status).")
    print(report.summary(), flush=True)
    if args.json:
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        payload = {"environment": info, "options": options,
                   "rows": [asdict(row) for row in report.rows], "summary": report.summary(),
                   "exit_status": 1 if report.failed() else 0}
        partial = args.json.with_name(args.json.name + ".partial")  # a reader never sees half a file
        partial.write_text(json.dumps(payload, indent=1, default=str) + "\n")
        partial.replace(args.json)
        print(f"wrote {args.json}")
    return 1 if report.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
