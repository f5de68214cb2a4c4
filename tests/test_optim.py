"""AdamATan2, puzzle-embedding sign-SGD and the lr schedule against hand computations (docs/paper.md)."""

from __future__ import annotations

import io
import math
import os
import sys
import types
import warnings

import pytest
import torch
import torch.multiprocessing as mp

from trm_ray import optim
from trm_ray.optim import AdamATan2, SparseSignSGD, cosine_schedule_lr, total_train_steps

BETA1, BETA2 = 0.9, 0.95


# --------------------------------------------------------------------------------------------
# AdamATan2
# --------------------------------------------------------------------------------------------
def reference_adam_atan2(p, grads, lrs, wd, round_param=lambda x: x):
    """The AdamATan2 update element by element in float64 Python math. grads[k] is None: no step at k.

    Returns the final parameter values and the final (m, v) lists.
    """
    p = list(p)
    m = [0.0] * len(p)
    v = [0.0] * len(p)
    t = 0
    for g, lr in zip(grads, lrs):
        if g is None:
            continue
        t += 1
        for i in range(len(p)):
            x = p[i] * (1 - lr * wd)
            m[i] = m[i] + (1 - BETA1) * (g[i] - m[i])
            v[i] = v[i] + (1 - BETA2) * (g[i] * g[i] - v[i])
            x -= (lr / (1 - BETA1**t)) * math.atan2(m[i], math.sqrt(v[i]) / math.sqrt(1 - BETA2**t))
            p[i] = round_param(x)
    return p, m, v


def flat(t: torch.Tensor) -> list[float]:
    return t.detach().double().flatten().tolist()


def test_adam_atan2_matches_reference_formula_over_changing_lr_and_grads():
    gen = torch.Generator().manual_seed(0)
    shapes = [(3,), (2, 3), (4, 1, 2)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    start = [flat(p) for p in params]
    lrs = [0.0, 0.01, 0.05, 0.0, 0.02, 0.03]
    wd = 0.1
    # grads[k][j]: gradient of parameter j at step k; parameter 2 gets none for its first two
    # steps, so its own step count (and bias correction) lags the others.
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in lrs]
    grads[0][2] = grads[1][2] = None
    grads[1][0][1] = 0.0  # m = v = 0 where a zero gradient starts: atan2(0, 0) = 0
    opt = AdamATan2(params, lr=123.0, betas=(BETA1, BETA2), weight_decay=wd)
    for step_grads, lr in zip(grads, lrs):
        for group in opt.param_groups:
            group["lr"] = lr  # as the schedule does
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else g.clone()
        opt.step()

    for j, p in enumerate(params):
        expected, m, v = reference_adam_atan2(start[j], [None if g[j] is None else flat(g[j]) for g in grads], lrs, wd)
        assert flat(p) == pytest.approx(expected, abs=2e-6)
        assert flat(opt.state[p]["exp_avg"]) == pytest.approx(m, abs=1e-6)
        assert flat(opt.state[p]["exp_avg_sq"]) == pytest.approx(v, abs=1e-6)
    assert [float(opt.state[p]["step"]) for p in params] == [6.0, 6.0, 4.0]
    # The updates were large enough that a wrong bias correction or decay would show.
    assert max(abs(a - b) for a, b in zip(flat(params[0]), start[0])) > 0.02


def test_adam_atan2_beta1_correction_is_outside_atan2():
    # One step, g = 1: m = 0.1, v = 0.05. Outside: lr/0.1 * atan2(0.1, sqrt(0.05)/sqrt(0.05))
    # = 10 * lr * atan(0.1); inside (lucidrains) would be lr * atan2(1, 1) = lr * pi/4.
    p = torch.nn.Parameter(torch.zeros(1))
    opt = AdamATan2([p], lr=0.01, weight_decay=0.0)
    p.grad = torch.ones(1)
    opt.step()
    assert p.item() == pytest.approx(-0.1 * math.atan(0.1), rel=1e-6)


def test_adam_atan2_lr_zero_keeps_params_but_advances_moments():
    p = torch.nn.Parameter(torch.tensor([1.5, -2.0, 0.25]))
    before = p.detach().clone()
    opt = AdamATan2([p], lr=0.0, weight_decay=0.1)
    p.grad = torch.tensor([1.0, -2.0, 0.5])
    opt.step()
    assert torch.equal(p.detach(), before)
    assert float(opt.state[p]["step"]) == 1.0
    assert flat(opt.state[p]["exp_avg"]) == pytest.approx([0.1, -0.2, 0.05], abs=1e-7)
    assert flat(opt.state[p]["exp_avg_sq"]) == pytest.approx([0.05, 0.2, 0.0125], abs=1e-7)


def test_adam_atan2_bf16_param_uses_fp32_math_and_moments():
    gen = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(torch.randn(7, generator=gen).to(torch.bfloat16))
    start = flat(p)
    lrs = [0.05, 0.02, 0.04, 0.03]
    grads = [torch.randn(7, generator=gen).to(torch.bfloat16) for _ in lrs]
    opt = AdamATan2([p], weight_decay=0.1)
    for g, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = lr
        p.grad = g.clone()
        opt.step()

    def to_bf16(x):
        return torch.tensor(x, dtype=torch.float64).to(torch.bfloat16).item()

    expected, m, _ = reference_adam_atan2(start, [flat(g) for g in grads], lrs, 0.1, round_param=to_bf16)
    assert p.dtype == torch.bfloat16
    assert flat(p) == pytest.approx(expected, rel=2**-7, abs=1e-3)  # one bf16 ulp
    assert flat(p) != pytest.approx(start, abs=1e-2)
    state = opt.state[p]
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    # fp32 moments from bf16 gradients: exact to fp32 precision, far finer than bf16 holds.
    assert flat(state["exp_avg"]) == pytest.approx(m, abs=1e-6)


def test_adam_atan2_rejects_bad_hyperparameters():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="lr"):
        AdamATan2([p], lr=-1e-4)
    with pytest.raises(ValueError, match="beta1"):
        AdamATan2([p], betas=(1.0, 0.95))
    with pytest.raises(ValueError, match="beta2"):
        AdamATan2([p], betas=(0.9, -0.1))
    with pytest.raises(ValueError, match="weight_decay"):
        AdamATan2([p], weight_decay=-0.1)
    opt = AdamATan2([p])
    opt.param_groups[0]["lr"] = -0.5
    p.grad = torch.ones(2)
    with pytest.raises(ValueError, match="lr"):
        opt.step()


def test_adam_atan2_state_dict_round_trips_through_a_checkpoint():
    gen = torch.Generator().manual_seed(2)
    a = [torch.nn.Parameter(torch.randn(4, generator=gen)), torch.nn.Parameter(torch.randn(3, generator=gen).bfloat16())]
    grads = [[torch.randn(4, generator=gen), torch.randn(3, generator=gen).bfloat16()] for _ in range(4)]
    opt_a = AdamATan2(a, lr=0.03)
    for g in grads[:2]:
        for p, gp in zip(a, g):
            p.grad = gp.clone()
        opt_a.step()

    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)
    buffer.seek(0)
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt_b = AdamATan2(b, lr=0.0)
    opt_b.load_state_dict(torch.load(buffer, weights_only=True))
    assert opt_b.param_groups[0]["lr"] == 0.03
    assert opt_b.state[b[1]]["exp_avg"].dtype == torch.float32  # not cast to the bf16 param dtype

    for g in grads[2:]:
        for pa, pb, gp in zip(a, b, g):
            pa.grad, pb.grad = gp.clone(), gp.clone()
        opt_a.step()
        opt_b.step()
    for pa, pb in zip(a, b):
        assert torch.equal(pa, pb)
    assert float(opt_b.state[b[0]]["step"]) == 4.0
    # Loaded state is a copy: stepping b did not move a's moments twice.
    assert opt_a.state[a[0]]["exp_avg"] is not opt_b.state[b[0]]["exp_avg"]


def test_adam_atan2_cpu_params_never_take_the_fused_path(monkeypatch):
    class FakeBackend:
        def adam_atan2_cuda_impl_(self, *args):
            raise AssertionError("fused kernel called for CPU parameters")

    monkeypatch.setattr(optim, "_fused_backend", FakeBackend())
    p = torch.nn.Parameter(torch.zeros(2))
    opt = AdamATan2([p], lr=0.01, weight_decay=0.0)
    p.grad = torch.ones(2)
    opt.step()
    assert p.detach().tolist() == pytest.approx([-0.1 * math.atan(0.1)] * 2, rel=1e-6)


# --------------------------------------------------------------------------------------------
# AdamATan2 with adam-atan2's fused kernel: missing, broken or wrong builds fall back
# --------------------------------------------------------------------------------------------
@pytest.fixture
def kernel_on_cpu(monkeypatch):
    """A process that has not looked for the kernel yet, where CPU parameters stand in for CUDA
    ones (the kernel never applies to CPU parameters otherwise): a stand-in module placed in
    sys.modules under the kernel's name plays the installed extension."""
    monkeypatch.setattr(optim, "_fused_backend", optim._NOT_LOADED)
    monkeypatch.setattr(optim, "_import_error", None)
    monkeypatch.setattr(optim, "_kernel_problems", {})
    monkeypatch.setattr(optim, "_fallback_warned", False)
    monkeypatch.setattr(optim, "_fused_applies", lambda params: True)
    monkeypatch.delitem(sys.modules, optim.KERNEL_MODULE, raising=False)
    return monkeypatch


def stand_in_kernel(update, calls):
    """A module object shaped like the built extension: adam_atan2_cuda_impl_(params, grads,
    exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, weight_decay), in place."""
    module = types.ModuleType(optim.KERNEL_MODULE)

    def adam_atan2_cuda_impl_(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, weight_decay):
        calls.append(list(params))
        for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
            update(p, g, m, v, float(t), lr, beta1, beta2, weight_decay)

    module.adam_atan2_cuda_impl_ = adam_atan2_cuda_impl_
    return module


def imoneoi_update(p, g, m, v, t, lr, beta1, beta2, wd):
    """The published kernel's arithmetic: beta1 correction outside atan2."""
    p.mul_(1 - lr * wd)
    m.lerp_(g, 1 - beta1)
    v.lerp_(g * g, 1 - beta2)
    p.sub_(lr / (1 - beta1**t) * torch.atan2(m, v.sqrt() / math.sqrt(1 - beta2**t)))


def correction_inside_update(p, g, m, v, t, lr, beta1, beta2, wd):
    """Another build's arithmetic: beta1 correction inside atan2 (a different optimizer)."""
    p.mul_(1 - lr * wd)
    m.lerp_(g, 1 - beta1)
    v.lerp_(g * g, 1 - beta2)
    p.sub_(lr * torch.atan2(m / (1 - beta1**t), v.sqrt() / math.sqrt(1 - beta2**t)))


def raising_update(*args):
    raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore detail")


LRS = [0.01, 0.05, 0.02]


def run_two_optimizers(**kwargs):
    """Two optimizers (as a training process has two models' worth of groups), three steps each
    with changing lr and gradients; returns (start, grads, params) per optimizer and the warnings."""
    gen = torch.Generator().manual_seed(5)
    runs = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for shape in [(5,), (2, 3)]:
            p = torch.nn.Parameter(torch.randn(shape, generator=gen))
            start = flat(p)
            grads = [torch.randn(shape, generator=gen) for _ in LRS]
            opt = AdamATan2([p], weight_decay=0.1, **kwargs)
            for g, lr in zip(grads, LRS):
                opt.param_groups[0]["lr"] = lr
                p.grad = g.clone()
                opt.step()
            runs.append((start, [flat(g) for g in grads], p))
    return runs, [w for w in caught if issubclass(w.category, RuntimeWarning)]


def assert_hand_computed(runs):
    for start, grads, p in runs:
        expected, _, _ = reference_adam_atan2(start, grads, LRS, 0.1)
        assert flat(p) == pytest.approx(expected, abs=2e-6)


def test_adam_atan2_missing_kernel_warns_once_and_runs_the_torch_update(kernel_on_cpu):
    kernel_on_cpu.setitem(sys.modules, optim.KERNEL_MODULE, None)  # import fails as when not installed
    kernel_on_cpu.setitem(sys.modules, "adam_atan2", None)
    runs, caught = run_two_optimizers()
    assert_hand_computed(runs)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "adam-atan2 is not installed" in message and "ModuleNotFoundError" in message
    assert "pure-torch update" in message and "pip install --no-build-isolation adam-atan2" in message


def test_adam_atan2_kernel_that_cannot_be_imported_warns_once(kernel_on_cpu):
    class BrokenExtension:  # what an extension built against another torch does: ImportError on load
        def find_spec(self, name, path=None, target=None):
            if name == optim.KERNEL_MODULE:
                raise ImportError("adam_atan2_backend.so: undefined symbol: _ZN3c104cuda9SetDevice")
            return None

    kernel_on_cpu.setattr(sys, "meta_path", [BrokenExtension(), *sys.meta_path])
    runs, caught = run_two_optimizers()
    assert_hand_computed(runs)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "adam-atan2 is installed but adam_atan2_backend cannot be imported" in message
    assert "undefined symbol" in message and "--force-reinstall" in message


def test_adam_atan2_kernel_that_raises_warns_once_and_runs_the_torch_update(kernel_on_cpu):
    calls = []
    kernel_on_cpu.setitem(sys.modules, optim.KERNEL_MODULE, stand_in_kernel(raising_update, calls))
    runs, caught = run_two_optimizers()
    assert_hand_computed(runs)
    assert len(calls) == 1  # the probe's first call; never again after it failed
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "fused kernel (adam_atan2_backend) is installed but its kernel raised RuntimeError: CUDA error: " \
           "no kernel image is available for execution on the device;" in message
    assert "more detail" not in message  # one line


def test_adam_atan2_kernel_with_another_update_is_never_used(kernel_on_cpu):
    calls = []
    kernel_on_cpu.setitem(sys.modules, optim.KERNEL_MODULE, stand_in_kernel(correction_inside_update, calls))
    runs, caught = run_two_optimizers()
    assert_hand_computed(runs)  # the torch update, not the stand-in's
    assert all(p is not q for params in calls for p in params for _, _, q in runs)  # only probe tensors
    assert len(caught) == 1 and "computes another update than AdamATan2" in str(caught[0].message)


def test_adam_atan2_working_kernel_is_used_without_warning(kernel_on_cpu):
    calls = []
    kernel_on_cpu.setitem(sys.modules, optim.KERNEL_MODULE, stand_in_kernel(imoneoi_update, calls))
    runs, caught = run_two_optimizers()
    assert_hand_computed(runs)
    assert caught == []
    used = [params[0] for params in calls if len(params) == 1]
    assert [id(p) for p in used] == [id(p) for _, _, p in runs for _ in LRS]  # every step went through it
    assert optim._kernel_problems == {torch.device("cpu"): None}  # probed once, for the one device


def test_adam_atan2_kernel_failing_after_its_probe_falls_back_within_the_step(kernel_on_cpu):
    def fails_on_real_params(p, *args):
        if p.shape in ((5,), (2, 3)):
            raise RuntimeError("CUDA out of memory")
        imoneoi_update(p, *args)

    kernel_on_cpu.setitem(sys.modules, optim.KERNEL_MODULE, stand_in_kernel(fails_on_real_params, []))
    runs, caught = run_two_optimizers()
    assert_hand_computed(runs)
    assert len(caught) == 1 and "its kernel raised RuntimeError: CUDA out of memory" in str(caught[0].message)


def test_adam_atan2_fused_false_never_looks_for_the_kernel(kernel_on_cpu):
    kernel_on_cpu.setitem(sys.modules, optim.KERNEL_MODULE, stand_in_kernel(raising_update, calls := []))
    runs, caught = run_two_optimizers(fused=False)
    assert_hand_computed(runs)
    assert calls == [] and caught == [] and optim._fused_backend is optim._NOT_LOADED


def test_adam_atan2_fused_true_raises_instead_of_falling_back(kernel_on_cpu, monkeypatch):
    kernel_on_cpu.setitem(sys.modules, optim.KERNEL_MODULE, None)
    p = torch.nn.Parameter(torch.zeros(2))
    opt = AdamATan2([p], fused=True)
    p.grad = torch.ones(2)
    with pytest.raises(RuntimeError, match="fused=True.*adam-atan2 is not installed"):
        opt.step()
    monkeypatch.setattr(optim, "_fused_applies", lambda params: False)  # e.g. CPU parameters
    with pytest.raises(ValueError, match="fp32 CUDA parameters"):
        opt.step()


def test_fused_kernel_problem_on_cpu_names_cuda():
    assert "CUDA devices only" in optim.fused_kernel_problem("cpu")


# --------------------------------------------------------------------------------------------
# Sign-SGD on the puzzle table
# --------------------------------------------------------------------------------------------
class PuzzleTable(torch.nn.Module):
    """The buffers SparseSignSGD expects of the puzzle-embedding module."""

    def __init__(self, weights: torch.Tensor, batch_size: int):
        super().__init__()
        self.register_buffer("weights", weights.clone())
        self.register_buffer("local_weights", torch.zeros(batch_size, weights.shape[1], requires_grad=True), persistent=False)
        self.register_buffer("local_ids", torch.zeros(batch_size, dtype=torch.int32), persistent=False)

    def look_up(self, ids: torch.Tensor, grad: torch.Tensor) -> None:
        """What a training forward + backward leaves behind."""
        with torch.no_grad():
            self.local_weights.copy_(self.weights[ids])
            self.local_ids.copy_(ids)
        self.local_weights.grad = grad.clone()


def reference_sign_sgd(table, ids, grads, lr, wd):
    table = [list(row) for row in table]
    sums: dict[int, list[float]] = {}
    for i, g in zip(ids, grads):
        sums[i] = [a + b for a, b in zip(sums.get(i, [0.0] * len(g)), g)]
    sign = lambda x: (x > 0) - (x < 0)  # noqa: E731
    for i, s in sums.items():
        table[i] = [w * (1 - lr * wd) - lr * sign(x) for w, x in zip(table[i], s)]
    return table


TABLE = [[0.5, -1.0, 2.0], [0.1, 0.2, 0.3], [-0.4, 0.0, 0.9], [1.0, 1.0, -1.0], [0.7, -0.2, 0.05], [3.0, 2.0, 1.0]]
IDS = [1, 3, 1, 4, 3, 1]
GRADS = [[0.5, -0.2, 0.0], [1.0, 2.0, -3.0], [-0.7, -0.1, 0.0], [0.3, -0.3, 0.2], [-1.0, -2.0, 3.0], [0.1, 0.4, 0.0]]


def test_sign_sgd_matches_hand_computation_on_repeated_ids():
    emb = PuzzleTable(torch.tensor(TABLE), batch_size=len(IDS))
    opt = SparseSignSGD(emb, lr=0.0, weight_decay=0.1)
    opt.param_groups[0]["lr"] = 0.01  # the schedule sets it
    emb.look_up(torch.tensor(IDS, dtype=torch.int32), torch.tensor(GRADS))
    opt.step()
    expected = reference_sign_sgd(TABLE, IDS, GRADS, lr=0.01, wd=0.1)
    assert emb.weights.tolist() == [pytest.approx(row, abs=1e-7) for row in expected]
    # Rows no one looked up are bit-identical (no decay); id 3's grads cancel: decay only.
    for untouched in (0, 2, 5):
        assert torch.equal(emb.weights[untouched], torch.tensor(TABLE)[untouched])
    assert emb.weights[3].tolist() == pytest.approx([x * 0.999 for x in TABLE[3]], abs=1e-7)
    # id 1: summed grad [-0.1, 0.1, 0] -> opposite signs from its first row's alone.
    assert emb.weights[1].tolist() == pytest.approx([0.1 * 0.999 + 0.01, 0.2 * 0.999 - 0.01, 0.3 * 0.999], abs=1e-7)


def test_sign_sgd_without_grad_or_after_zero_grad_does_nothing():
    emb = PuzzleTable(torch.tensor(TABLE), batch_size=len(IDS))
    opt = SparseSignSGD(emb, lr=0.01, weight_decay=0.1)
    opt.step()
    emb.look_up(torch.tensor(IDS, dtype=torch.int32), torch.tensor(GRADS))
    opt.zero_grad()
    assert emb.local_weights.grad is None
    opt.step()
    assert torch.equal(emb.weights, torch.tensor(TABLE))


def test_sign_sgd_state_dict_and_validation():
    emb = PuzzleTable(torch.tensor(TABLE), batch_size=2)
    opt = SparseSignSGD(emb, lr=0.01, weight_decay=0.2)
    opt.param_groups[0]["lr"] = 0.005
    other = SparseSignSGD(emb, lr=1.0, weight_decay=0.0)
    other.load_state_dict(opt.state_dict())
    assert (other.param_groups[0]["lr"], other.param_groups[0]["weight_decay"]) == (0.005, 0.2)
    with pytest.raises(ValueError, match="lr"):
        SparseSignSGD(emb, lr=-1.0)
    with pytest.raises(ValueError, match="weights"):
        SparseSignSGD(torch.nn.Linear(2, 2))


def _sign_sgd_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    from gloo_util import gloo_rank

    with gloo_rank(rank, world_size, init_file):
        local = len(IDS) // world_size
        rows = slice(rank * local, (rank + 1) * local)
        emb = PuzzleTable(torch.tensor(TABLE), batch_size=local)
        opt = SparseSignSGD(emb, lr=0.01, weight_decay=0.1)
        emb.look_up(torch.tensor(IDS[rows], dtype=torch.int32), torch.tensor(GRADS[rows]))
        opt.step()
        torch.save(emb.weights, os.path.join(out_dir, f"rank{rank}.pt"))


def test_sign_sgd_two_gloo_workers_equal_one_worker_with_the_whole_batch(tmp_path):
    # Rank 0 sees ids [1, 3, 1] and rank 1 [4, 3, 1]: id 1's and id 3's sums span both ranks.
    mp.spawn(_sign_sgd_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = PuzzleTable(torch.tensor(TABLE), batch_size=len(IDS))
    opt = SparseSignSGD(single, lr=0.01, weight_decay=0.1)
    single.look_up(torch.tensor(IDS, dtype=torch.int32), torch.tensor(GRADS))
    opt.step()
    for rank in range(2):
        assert torch.equal(torch.load(tmp_path / f"rank{rank}.pt", weights_only=True), single.weights)


# --------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "step, expected",
    [
        (1, 0.2),  # 2.0 * 1/10
        (5, 1.0),  # mid-warmup
        (10, 2.0),  # end of warmup: cosine at progress 0
        (35, 2.0 * (0.1 + 0.45 * (1 + math.sqrt(0.5)))),  # progress 1/4
        (60, 2.0 * 0.55),  # progress 1/2
        (110, 0.2),  # end: the floor, min_ratio * base
    ],
)
def test_cosine_schedule_points(step, expected):
    assert cosine_schedule_lr(step, 2.0, warmup_steps=10, total_steps=110, min_ratio=0.1) == pytest.approx(expected)


def test_cosine_schedule_constant_with_min_ratio_one_and_guards():
    assert [cosine_schedule_lr(s, 1e-4, 3, 50, 1.0) for s in (1, 3, 20, 50)] == pytest.approx([1e-4 / 3, 1e-4, 1e-4, 1e-4])
    assert cosine_schedule_lr(1, 1.0, 0, 0, 0.0) == pytest.approx(0.0)  # total == warmup == 0: no division by zero
    assert cosine_schedule_lr(1, 1.0, 0, 4, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_total_train_steps_truncates():
    assert total_train_steps(3, 7, 2.5, 4) == 13  # 13.125
    assert total_train_steps(50000, 1000, 1001.0, 768) == 65169270  # 65169270.83
