"""The training step: data parallelism over gloo equals one process on the whole batch, and
the step applies the schedule, both optimizers and the EMA as docs/paper.md says."""

from __future__ import annotations

import io
import math

import pytest
import torch

from gloo_util import run_data_parallel
from trm_ray.config import DataShape, TrainConfig
from trm_ray.train.step import TrainState, create_train_state, train_step

SHAPE = DataShape(seq_len=12, vocab_size=7, num_puzzle_identifiers=9)
GLOBAL_BATCH = 8
NUM_STEPS = 3


def tiny_config(**overrides) -> TrainConfig:
    arch = dict(hidden_size=32, num_heads=4, H_cycles=2, L_cycles=2, L_layers=2, puzzle_emb_len=2,
                forward_dtype="float32", halt_max_steps=2, halt_exploration_prob=0.0)
    arch.update(overrides.pop("arch", {}))
    base = dict(arch=arch, global_batch_size=GLOBAL_BATCH, lr=3e-3, lr_warmup_steps=1, puzzle_emb_lr=1e-2,
                weight_decay=0.1, puzzle_emb_weight_decay=0.1, seed=3)
    base.update(overrides)
    return TrainConfig(**base)


def make_batches(num: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(11)
    batches = []
    for _ in range(num):
        labels = torch.randint(1, SHAPE.vocab_size, (GLOBAL_BATCH, SHAPE.seq_len), generator=g)
        labels[:, -3:] = -100  # some ignored positions, as padding gives
        batches.append({
            "inputs": torch.randint(0, SHAPE.vocab_size, (GLOBAL_BATCH, SHAPE.seq_len), generator=g),
            "labels": labels,
            # repeated ids across ranks so the sparse gradient sum across workers matters
            "puzzle_identifiers": torch.randint(1, 4, (GLOBAL_BATCH,), generator=g, dtype=torch.int32),
        })
    return batches


def final_state(state) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.module.state_dict().items()}


def _trained_on_rank(rank: int, world: int) -> dict[str, torch.Tensor]:
    state = create_train_state(tiny_config(), SHAPE, total_steps=100)
    local = GLOBAL_BATCH // world
    for batch in make_batches(NUM_STEPS):
        train_step(state, {k: v[rank * local:(rank + 1) * local] for k, v in batch.items()})
    return final_state(state)


def test_two_gloo_workers_equal_one_process_on_the_concatenated_batch(tmp_path):
    distributed = run_data_parallel(_trained_on_rank, 2, tmp_path)

    state = create_train_state(tiny_config(), SHAPE, total_steps=100)
    initial = final_state(state)
    for batch in make_batches(NUM_STEPS):
        train_step(state, batch)
    single = final_state(state)

    assert distributed.keys() == single.keys()
    for key in single:
        torch.testing.assert_close(distributed[key], single[key], rtol=0, atol=1e-5, msg=key)
    # and the run really trained: parameters and the puzzle table moved
    table = "model.inner.puzzle_emb.weights"
    assert not torch.equal(single[table], initial[table])
    assert not torch.equal(single["model.inner.lm_head.weight"], initial["model.inner.lm_head.weight"])


def test_schedule_sparse_sign_sgd_and_ema_as_specified():
    config = tiny_config(lr=1e-2, lr_warmup_steps=2, lr_min_ratio=0.5, ema=True, ema_rate=0.9)
    total = 5
    state = create_train_state(config, SHAPE, total_steps=total)
    batches = make_batches(total + 1)
    shadow = {k: v.detach().clone() for k, v in state.module.named_parameters()}
    lrs = []
    for step, batch in enumerate(batches, start=1):
        table_before = state.module.model.inner.puzzle_emb.weights.clone()
        metrics = train_step(state, batch)
        if step > total:
            assert metrics is None  # schedule exhausted: no update
            break
        # the warmup + cosine lr of docs/paper.md#optimizers-and-schedule, written out
        expected = 1e-2 * step / 2 if step < 2 else 1e-2 * (0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi * (step - 2) / 3)))
        lrs.append(metrics["train/lr"])
        assert metrics["train/lr"] == pytest.approx(expected)
        # sparse sign-SGD: only rows of this batch's ids move, by exactly +-lr (after decay)
        table_after = state.module.model.inner.puzzle_emb.weights
        touched = torch.unique(batch["puzzle_identifiers"]).long()
        untouched = torch.tensor([i for i in range(SHAPE.num_puzzle_identifiers) if i not in touched.tolist()])
        assert torch.equal(table_after[untouched], table_before[untouched])
        emb_lr = expected / 1e-2 * 1e-2  # same schedule on puzzle_emb_lr = 1e-2
        step_size = (table_before[touched] * (1 - emb_lr * 0.1) - table_after[touched]).abs()
        assert torch.allclose(step_size[step_size > 0], torch.full_like(step_size[step_size > 0], emb_lr), atol=1e-7)
        # EMA of the parameters: shadow = 0.1 * param + 0.9 * shadow
        for name, param in state.module.named_parameters():
            shadow[name] = 0.1 * param.detach() + 0.9 * shadow[name]
    ema_model = state.ema.model_copy(state.module)
    for name, param in ema_model.named_parameters():
        torch.testing.assert_close(param, shadow[name], rtol=0, atol=1e-6, msg=name)


def test_freeze_weights_trains_only_the_puzzle_table():
    state = create_train_state(tiny_config(freeze_weights=True), SHAPE, total_steps=10)
    before = final_state(state)
    for batch in make_batches(2):
        train_step(state, batch)
    after = final_state(state)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"model.inner.puzzle_emb.weights"}


# --------------------------------------------------------------------------------------------
# TrainState.state_dict / load_state_dict: a state saved after k steps and loaded into a fresh
# one continues exactly as the original does (weights, EMA shadow, both optimizers, step and
# so the lr schedule). halt_max_steps=1 makes every row halt at every step, so the ACT carry
# (not part of the state) carries nothing from one step to the next.
# --------------------------------------------------------------------------------------------
def resumable_config(**overrides) -> TrainConfig:
    base = dict(arch={"halt_max_steps": 1}, lr=1e-2, lr_warmup_steps=2, lr_min_ratio=0.1, ema=True, ema_rate=0.9)
    return tiny_config(**{**base, **overrides})


def run(state: TrainState, steps: list[dict[str, torch.Tensor]]) -> None:
    for batch in steps:
        assert train_step(state, batch) is not None


def saved(state: TrainState) -> dict:
    """The state as a checkpoint holds it: through torch.save and a weights-only load (a copy)."""
    buffer = io.BytesIO()
    torch.save(state.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_same(a, b, where: str) -> None:
    """Nested dicts/lists of tensors and numbers, equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_a_loaded_state_continues_exactly_as_the_original():
    cfg, data = resumable_config(), make_batches(7)
    k = 3
    original = create_train_state(cfg, SHAPE, total_steps=12)
    run(original, data[:k])
    checkpoint = saved(original)
    run(original, data[k:])  # A

    resumed = create_train_state(cfg, SHAPE, total_steps=12)
    resumed.load_state_dict(checkpoint)
    assert resumed.step == k
    run(resumed, data[k:])  # B

    a, b = saved(original), saved(resumed)
    assert a["step"] == b["step"] == len(data)
    assert_same(a["model"], b["model"], "model")
    assert_same(a["ema"]["shadow"], b["ema"]["shadow"], "ema")
    assert len(a["optimizers"]) == 2  # sign-SGD of the puzzle table + AdamATan2
    assert_same(a["optimizers"], b["optimizers"], "optimizers")

    # Not vacuous: without the saved state (or with only its weights) the runs part ways.
    fresh = create_train_state(cfg, SHAPE, total_steps=12)
    run(fresh, data[k:])
    weights_only = create_train_state(cfg, SHAPE, total_steps=12)
    weights_only.module.load_state_dict(checkpoint["model"])
    run(weights_only, data[k:])
    for other in (saved(fresh), saved(weights_only)):
        assert any(not torch.equal(a["model"][n], other["model"][n]) for n in a["model"])
        assert any(not torch.equal(a["ema"]["shadow"][n], other["ema"]["shadow"][n]) for n in a["ema"]["shadow"])


def test_state_dict_holds_the_live_weights_and_the_ema_shadow_apart():
    state = create_train_state(resumable_config(), SHAPE, total_steps=12)
    run(state, make_batches(3))
    blob = state.state_dict()
    live = state.module.state_dict()
    assert set(blob) == {"step", "model", "ema", "optimizers"}
    for name, tensor in live.items():
        assert torch.equal(blob["model"][name], tensor) and blob["model"][name].data_ptr() != tensor.data_ptr(), name
    # the averaged weights differ from the live ones, and the swap gives the live ones back
    with state.averaged_weights() as module:
        averaged = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    for name, shadow in blob["ema"]["shadow"].items():
        assert torch.equal(averaged[name], shadow), name
    assert any(not torch.equal(averaged[n], live[n]) for n in averaged)
    assert all(torch.equal(state.module.state_dict()[n], live[n]) for n in live)


def test_a_state_saved_without_ema_restarts_the_average_at_the_loaded_weights():
    without = create_train_state(resumable_config(ema=False), SHAPE, total_steps=12)
    run(without, make_batches(2))
    checkpoint = saved(without)
    assert checkpoint["ema"] is None
    state = create_train_state(resumable_config(), SHAPE, total_steps=12)
    state.load_state_dict(checkpoint)
    for name, shadow in state.ema.shadow.items():
        assert torch.equal(shadow, checkpoint["model"][name].to(torch.float32)), name
