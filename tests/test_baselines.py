"""The paper's comparison architectures (HRM, the transformer baseline, TRM single-z, TRM hier6)
against tests/baselines_impl.py, an independent float64 reading of their reference semantics
(docs/architectures.md).

Each model gets random weights (puzzle table, init buffers and Q head included, so no zero
hides a bug) loaded from a state dict the test builds itself; the library runs in fp32 and
the expectation in float64. Tiny sizes: the whole file runs in seconds on a CPU.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import yaml

import baselines_impl as bi
from gloo_util import run_data_parallel
import trm_ray
from trm_ray.config import ArchConfig, DataShape, TrainConfig
from trm_ray.model import build_model

torch.set_num_threads(1)  # tiny tensors: threads only add contention on a shared CPU

SEQ, VOCAB, NUM_IDS, B = 9, 7, 5, 3
SHAPE = DataShape(seq_len=SEQ, vocab_size=VOCAB, num_puzzle_identifiers=NUM_IDS)
# puzzle_emb_ndim 40 > D 32: HRM and the transformer take P = ceil(40/32) = 2 and ignore
# puzzle_emb_len; the TRM ablations take P = puzzle_emb_len = 3. Both pad the table row.
BASE = dict(hidden_size=32, num_heads=2, expansion=2.0, H_cycles=2, L_cycles=2, H_layers=1, L_layers=2,
            puzzle_emb_ndim=40, puzzle_emb_len=3, pos_encodings="rope", forward_dtype="float32",
            halt_max_steps=3, halt_exploration_prob=0.0)
VARIANTS = ("hrm", "transformers_baseline", "trm_singlez", "trm_hier6")
PREFIX = {"hrm": 2, "transformers_baseline": 2, "trm_singlez": 3, "trm_hier6": 3}
# fp32 library vs float64 expectation (rel_err): one ACT step from the same carry, and a whole
# free-running rollout, where each step's recursion amplifies the rounding of the ones before
# (up to 3e-5 measured with MLP-T).
TOL = 1e-5
ROLLOUT_TOL = 1e-4

FORWARD_CASES = [
    ("hrm", {}),
    ("hrm", {"mlp_t": True, "H_layers": 2, "L_layers": 1}),
    ("hrm", {"num_heads": 3, "pos_encodings": "learned"}),  # head_dim 10: heads span 30 of 32 channels
    ("transformers_baseline", {"H_layers": 2}),
    ("transformers_baseline", {"num_heads": 3, "pos_encodings": "learned"}),
    ("trm_singlez", {}),
    ("trm_singlez", {"mlp_t": True, "pos_encodings": "learned"}),
    ("trm_hier6", {"L_cycles": 3}),
    ("trm_hier6", {"mlp_t": True, "L_cycles": 6, "L_layers": 1, "halt_max_steps": 2}),
]
TRAIN_CASES = [
    ("hrm", {}),
    ("hrm", {"mlp_t": True, "no_ACT_continue": False}),
    ("transformers_baseline", {}),
    ("transformers_baseline", {"compute_target_q": True, "num_heads": 3}),
    ("trm_singlez", {}),
    ("trm_singlez", {"mlp_t": True, "no_ACT_continue": False}),
    ("trm_hier6", {"no_ACT_continue": False, "L_cycles": 3}),
    ("trm_hier6", {"mlp_t": True}),
]


def case_id(case):
    variant, overrides = case
    return variant + "".join(f"-{k}={v}" for k, v in overrides.items())


def make_arch(variant: str, **overrides) -> ArchConfig:
    return ArchConfig(**{**BASE, "name": variant, **overrides})


def impl_arch(variant: str, **overrides) -> bi.BArch:
    """The same settings as make_arch, read by the float64 implementation (not from ArchConfig)."""
    s = {**BASE, **overrides}
    fields = set(bi.BArch.__dataclass_fields__) - {"variant"}
    return bi.BArch(variant=variant, **{k: v for k, v in s.items() if k in fields})


def build(variant: str, seed: int = 0, batch_size: int = B, **overrides):
    """(library model with random weights, float64 implementation on the same weights)."""
    ref_arch = impl_arch(variant, **overrides)
    assert ref_arch.prefix_len == PREFIX[variant]
    state = bi.random_state(ref_arch, SEQ, VOCAB, NUM_IDS, seed)
    model = build_model(make_arch(variant, **overrides), SHAPE, batch_size=batch_size)
    lib = model.state_dict()
    assert set(lib) == set(state), f"key sets differ: library only {sorted(set(lib) - set(state))}, " \
                                   f"expected only {sorted(set(state) - set(lib))}"
    for k in state:
        assert lib[k].shape == state[k].shape, (k, lib[k].shape, state[k].shape)
    model.load_state_dict(state)
    return model, bi.Impl(ref_arch, state)


def make_batch(seed: int, batch_size: int = B):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, VOCAB, (batch_size, SEQ), generator=g, dtype=torch.int32)
    labels[:, -2:] = -100
    labels[-1] = -100  # one row without labels: zero loss, excluded from the metrics
    return {"inputs": torch.randint(0, VOCAB, (batch_size, SEQ), generator=g, dtype=torch.int32),
            "labels": labels,
            "puzzle_identifiers": torch.randint(0, NUM_IDS, (batch_size,), generator=g, dtype=torch.int32)}


def rel_err(actual, expected) -> float:
    """||actual - expected|| / max(||expected||, sqrt(numel)): relative, with values below unit
    scale (a few Q logits near 0) measured against 1 per element, as fp32 rounding is."""
    actual = torch.as_tensor(actual).detach().to(torch.float64)
    expected = torch.as_tensor(expected).detach().to(torch.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return ((actual - expected).norm() / max(expected.norm().item(), math.sqrt(expected.numel()))).item()


def assert_close(actual, expected, what, tol=TOL):
    err = rel_err(actual, expected)
    assert err < tol, f"{what}: relative error {err:.2e}"


# --------------------------------------------------------------------------------------------
# 1. evaluation rollout: logits and Q logits at every ACT step
# --------------------------------------------------------------------------------------------
def forced(carry) -> bi.ActCarry:
    """The library's carry as the implementation's: each ACT step is then compared on its own,
    without the rounding of earlier steps, which the recursion amplifies step after step."""
    return bi.ActCarry({k: v.detach().to(torch.float64) for k, v in carry.inner.items()}, carry.steps.long(),
                       carry.halted.clone(), {k: v.clone() for k, v in carry.current_data.items()})


@pytest.mark.parametrize("case", FORWARD_CASES, ids=case_id)
def test_eval_rollout_matches_float64_implementation(case):
    variant, overrides = case
    model, impl = build(variant, **overrides)
    model.eval()
    batch = make_batch(1)
    N = impl.arch.halt_max_steps
    free = impl.predict(batch)  # the implementation's own N-step rollout
    carry = model.initial_carry(batch)
    with torch.no_grad():
        for k in range(N):
            want_carry, want, _ = impl.act_step(forced(carry), batch, training=False)
            carry, _, _, out, all_halted = model(carry, batch)
            assert out["logits"].shape == (B, SEQ, VOCAB)
            for key in ("logits", "q_halt_logits", "q_continue_logits"):
                assert_close(out[key], want[key], f"step {k + 1} {key}")
                assert_close(out[key], free[k][1][key], f"rollout step {k + 1} {key}", tol=ROLLOUT_TOL)
            assert set(carry.inner) == set(want_carry.states)
            for name, tensor in want_carry.states.items():
                assert_close(carry.inner[name], tensor, f"step {k + 1} carry {name}")
            assert torch.equal(carry.halted, want_carry.halted)
            assert bool(all_halted) == (k == N - 1)  # evaluation never halts early
    predicted = trm_ray.predict(model, {k: v.numpy() for k, v in batch.items() if k != "labels"})
    assert_close(torch.from_numpy(predicted["logits"]), free[-1][1]["logits"], "predict logits", tol=ROLLOUT_TOL)


# --------------------------------------------------------------------------------------------
# 2. training: loss, halting, Q target, every gradient, then SGD, over four ACT steps
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", TRAIN_CASES, ids=case_id)
def test_training_steps_match_float64_gradients_and_sgd(case):
    variant, overrides = case
    model, impl = build(variant, **{"halt_exploration_prob": 0.5, **overrides})
    model.train()
    model.model.generator = torch.Generator().manual_seed(7)
    generator = torch.Generator().manual_seed(7)  # the implementation replays the same draws
    lr = 0.3
    batches = [make_batch(s) for s in (1, 2, 3, 4)]
    lib_carry = model.initial_carry(batches[0])
    params = dict(model.named_parameters())
    halted_seen = []
    for step, batch in enumerate(batches, start=1):
        # Each step starts the implementation from the library's weights and carry: compared one
        # step at a time, as in fp32 the recursion amplifies any earlier difference (measured:
        # 1e-7 in the weights gives 4e-5 in the logits with MLP-T).
        impl = bi.Impl(impl.arch, model.state_dict())
        start = forced(lib_carry)
        lib_carry, loss, metrics, out, _ = model(lib_carry, batch)
        (loss / B).backward()
        imp_carry, want, rows = impl.act_step(start, batch, training=True, generator=generator)
        want_loss, parts = impl.loss(imp_carry, want)
        (want_loss / B).backward()

        where = f"step {step}"
        assert torch.equal(lib_carry.halted, imp_carry.halted), where
        assert torch.equal(lib_carry.steps.long(), imp_carry.steps), where
        halted_seen.append(imp_carry.halted.clone())
        assert ("target_q_continue" in out) == ("target_q_continue" in want), where
        assert ("q_continue_loss" in metrics) == ("q_continue_loss" in parts), where
        for key in ("logits", "q_halt_logits", "q_continue_logits", "target_q_continue"):
            if key in want:
                assert_close(out[key], want[key], f"{where} {key}")
        assert_close(loss.detach(), want_loss.detach(), f"{where} loss")
        for key, value in parts.items():
            assert_close(metrics[key], value.detach(), f"{where} {key}")

        for name, p in params.items():
            key = name.removeprefix("model.inner.")
            got = p.grad if p.grad is not None else torch.zeros_like(p)
            exp = impl.params[key].grad
            if exp is None or exp.abs().max() == 0:
                assert got.abs().max() == 0, f"{where} {name}: gradient outside the variant's gradient window"
            else:
                assert_close(got, exp, f"{where} grad {name}")
        if rows is not None:
            local = model.model.inner.puzzle_emb.local_weights
            assert_close(local.grad, rows.grad, f"{where} puzzle-row grad")
            local.grad = None
        if variant == "transformers_baseline" and not overrides.get("compute_target_q"):
            # no Q target: the q_continue row of the Q head never gets a gradient
            assert params["model.inner.q_head.weight"].grad[1].abs().max() == 0
            assert params["model.inner.q_head.bias"].grad[1] == 0

        with torch.no_grad():
            for p in params.values():
                if p.grad is not None:
                    p -= lr * p.grad
        model.zero_grad(set_to_none=True)
        impl.sgd(lr)
        impl.zero_grad()
        for name, p in params.items():
            assert_close(p.detach(), impl.params[name.removeprefix("model.inner.")].detach(), f"{where} param {name}")
    # the steps exercised both halting and continuing rows
    seen = torch.stack(halted_seen)
    assert seen.any() and not seen.all()


# --------------------------------------------------------------------------------------------
# 3. ACT rules per variant
# --------------------------------------------------------------------------------------------
def set_q_head(model, halt: float, cont: float) -> None:
    with torch.no_grad():
        model.model.inner.q_head.weight.zero_()
        model.model.inner.q_head.bias.copy_(torch.tensor([halt, cont]))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# (variant, overrides, q_halt, q_continue, halts after step 1, trains q_continue)
# q_halt = -1 < 0 but > q_continue = -2: only the q_halt > q_continue rule halts;
# q_halt = 1 > 0 but < q_continue = 2: only the q_halt > 0 rule halts.
RULES = [
    ("hrm", {}, -1.0, -2.0, True, True),  # no_ACT_continue defaults to true: HRM has no such key
    ("hrm", {}, 1.0, 2.0, False, True),
    ("hrm", {"no_ACT_continue": False}, -1.0, -2.0, True, True),
    ("transformers_baseline", {}, -1.0, -2.0, True, False),
    ("transformers_baseline", {}, 1.0, 2.0, False, False),
    ("transformers_baseline", {"compute_target_q": True}, 1.0, 2.0, False, True),
    ("transformers_baseline", {"act_enabled": False, "compute_target_q": True}, 5.0, -5.0, False, False),
    ("trm_singlez", {}, -1.0, -2.0, False, False),
    ("trm_singlez", {}, 1.0, 2.0, True, False),
    ("trm_singlez", {"no_ACT_continue": False}, -1.0, -2.0, True, True),
    ("trm_hier6", {}, 1.0, 2.0, True, False),
    ("trm_hier6", {"no_ACT_continue": False}, 1.0, 2.0, False, True),
]


@pytest.mark.parametrize("variant,overrides,q_halt,q_cont,halts,target", RULES,
                         ids=[f"{r[0]}-{r[2]:+}{r[3]:+}" + "".join(f"-{k}" for k in r[1]) for r in RULES])
def test_halting_rule_and_q_target(variant, overrides, q_halt, q_cont, halts, target):
    N = 3
    torch.manual_seed(0)
    model = build_model(make_arch(variant, halt_max_steps=N, **overrides), SHAPE, batch_size=B).train()
    set_q_head(model, q_halt, q_cont)  # constant Q logits: the target is known by hand
    batch = make_batch(1)
    carry = model.initial_carry(batch)
    for step in range(1, N + 1):
        carry, loss, metrics, out, _ = model(carry, batch)
        assert carry.halted.tolist() == [halts or step == N] * B, step
        assert ("target_q_continue" in out) == target and ("q_continue_loss" in metrics) == target
        if target:
            raw = q_halt if step == N else max(q_halt, q_cont)
            assert out["target_q_continue"].dtype == torch.float32
            assert np.allclose(out["target_q_continue"].numpy(), sigmoid(raw), rtol=1e-6, atol=0)
        if halts:
            break


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_supervision_step_halts_without_q_rules_or_target(variant):
    # halt_max_steps 1: every row halts after its one step, no Q rule, exploration nor target
    torch.manual_seed(0)
    model = build_model(make_arch(variant, halt_max_steps=1, no_ACT_continue=False, compute_target_q=True,
                                  halt_exploration_prob=1.0), SHAPE, batch_size=B).train()
    set_q_head(model, -5.0, 5.0)
    batch = make_batch(1)
    carry, _, metrics, out, all_halted = model(model.initial_carry(batch), batch)
    assert bool(all_halted) and "target_q_continue" not in out and "q_continue_loss" not in metrics


def test_transformer_act_disabled_trains_every_row_n_steps_without_exploration_draws():
    N = 4
    torch.manual_seed(0)
    model = build_model(make_arch("transformers_baseline", halt_max_steps=N, halt_exploration_prob=1.0,
                                  act_enabled=False), SHAPE, batch_size=B).train()
    set_q_head(model, 5.0, -5.0)  # adaptive halting would stop every row at step 1
    model.model.generator = torch.Generator().manual_seed(3)
    before = model.model.generator.get_state()
    batch = make_batch(1)
    carry = model.initial_carry(batch)
    for step in range(1, N + 1):
        carry, *_ = model(carry, batch)
        assert carry.halted.tolist() == [step == N] * B
        assert carry.steps.tolist() == [step] * B
    assert torch.equal(model.model.generator.get_state(), before)  # no exploration: nothing drawn


def row_rollouts(impl: bi.Impl, batch):
    """Per row, alone, N evaluation steps from H_init: [(logits, q_halt, q_continue) per step]."""
    result = []
    for i in range(batch["inputs"].shape[0]):
        states = impl.init_states(1, SEQ + impl.arch.prefix_len)
        rows = impl.params["puzzle_emb.weights"].detach()[batch["puzzle_identifiers"][i:i + 1].long()]
        steps = []
        with torch.no_grad():
            for _ in range(impl.arch.halt_max_steps):
                states, logits, qh, qc = impl.inner(states, batch["inputs"][i:i + 1], rows)
                steps.append((logits[0], qh[0].item(), qc[0].item()))
        result.append(steps)
    return result


def first_halt(steps, shift: float) -> int:
    """1-based step at which q_halt + shift > q_continue first holds (or the last step)."""
    return next((k for k, (_, qh, qc) in enumerate(steps, 1) if qh + shift > qc), len(steps))


def test_transformer_act_inference_freezes_rows_at_their_first_halt():
    N, Bn = 5, 4
    model, impl = build("transformers_baseline", batch_size=Bn, halt_max_steps=N, act_inference=True)
    batch = make_batch(5, Bn)
    rollouts = row_rollouts(impl, batch)
    # Shift q_halt (its bias) so that the rows first halt at different steps, some before N.
    shifts = [float(x) for x in np.linspace(-4, 4, 81)]
    shift = max(shifts, key=lambda x: (len({first_halt(r, x) for r in rollouts}),
                                       -max(first_halt(r, x) for r in rollouts)))
    with torch.no_grad():
        model.model.inner.q_head.bias[0] += shift
    ks = [first_halt(r, shift) for r in rollouts]
    assert len(set(ks)) >= 2 and min(ks) < N, ks

    calls = []
    hook = model.model.register_forward_hook(lambda *_: calls.append(1))
    model.model.generator = torch.Generator().manual_seed(3)
    before = model.model.generator.get_state()
    try:
        out = trm_ray.predict(model.eval(), {k: v for k, v in batch.items() if k != "labels"})
    finally:
        hook.remove()
    assert len(calls) == max(ks) <= N  # stops once every row has halted once
    assert torch.equal(model.model.generator.get_state(), before)  # no exploration in evaluation
    for i, k in enumerate(ks):
        logits, qh, qc = rollouts[i][k - 1]
        assert_close(out["logits"][i], logits, f"row {i} (halted at {k}) logits")
        assert_close(out["q_halt_logits"][i], torch.tensor(qh + shift), f"row {i} q_halt")
        assert_close(out["q_continue_logits"][i], torch.tensor(qc), f"row {i} q_continue")
        if "actual_steps" in out:
            assert out["actual_steps"][i].item() == k

    # one evaluation call: adaptive halting and actual_steps
    carry = model.initial_carry(batch)
    with torch.no_grad():
        carry, _, _, step_out, _ = model(carry, batch)
    assert carry.halted.tolist() == [k == 1 for k in ks]
    assert step_out["actual_steps"].tolist() == [1.0] * Bn


def test_transformer_eval_without_act_inference_runs_n_steps():
    N = 3
    torch.manual_seed(0)
    model = build_model(make_arch("transformers_baseline", halt_max_steps=N), SHAPE, batch_size=B).eval()
    set_q_head(model, 5.0, -5.0)
    batch = make_batch(1)
    carry = model.initial_carry(batch)
    with torch.no_grad():
        for step in range(1, N + 1):
            carry, _, _, out, _ = model(carry, batch)
            assert carry.halted.tolist() == [step == N] * B
            assert "actual_steps" not in out


# --------------------------------------------------------------------------------------------
# 4. hier6 with L_cycles < 6: the unwritten slots stay at their init values
# --------------------------------------------------------------------------------------------
def test_hier6_unwritten_slots_keep_their_init_values():
    model, impl = build("trm_hier6", L_cycles=2)
    batch = make_batch(1)
    inner = model.model.inner
    for train in (False, True):
        model.train(train)
        carry = model.initial_carry(batch)
        with torch.no_grad():
            for _ in range(2):
                carry, *_ = model(carry, batch)
        assert not carry.halted.all()
        for k in range(1, 7):
            init = getattr(inner, f"L{k}_init").expand(B, SEQ + 3, -1)
            assert torch.equal(carry.inner[f"z_{k}"], init) == (k > 2), k
    history = impl.predict(make_batch(1))
    for k in (3, 4, 5, 6):
        assert torch.equal(history[-1][0].states[f"z_{k}"], impl.params[f"L{k}_init"].detach().expand(B, SEQ + 3, -1))


# --------------------------------------------------------------------------------------------
# config rules
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("short", list(bi.FULL_NAMES))
def test_reference_names_map_exactly(short):
    assert ArchConfig(name=bi.FULL_NAMES[short]).name == short
    assert ArchConfig(name=short).name == short


@pytest.mark.parametrize("name", ["recursive_reasoning.trm_foo@TinyRecursiveReasoningModel_ACTV1", "TRM", "hrm2",
                                  "recursive_reasoning.hrm@TinyRecursiveReasoningModel_ACTV1"])
def test_unknown_arch_name_lists_the_known_ones(name):
    with pytest.raises(ValueError) as info:
        ArchConfig(name=name)
    for short in bi.FULL_NAMES:
        assert short in str(info.value)


def test_hier6_refuses_more_than_six_latent_updates():
    assert ArchConfig(name="trm_hier6", L_cycles=6).L_cycles == 6
    with pytest.raises(ValueError, match="L_cycles"):
        ArchConfig(name="trm_hier6", L_cycles=7)
    assert ArchConfig(name="trm", L_cycles=7).L_cycles == 7


def test_transformer_refuses_no_positions():
    with pytest.raises(ValueError, match="pos_encodings"):
        ArchConfig(name="transformers_baseline", pos_encodings="none")
    ArchConfig(name="hrm", pos_encodings="none")


def test_transformer_ignores_mlp_t_as_the_reference_does():
    # Model_ACTV2's config has no mlp_t key: a recipe carrying one builds attention blocks.
    model = build_model(make_arch("transformers_baseline", mlp_t=True), SHAPE, batch_size=B)
    assert set(model.state_dict()) == {"model.inner." + k for k in bi.expected_shapes(
        impl_arch("transformers_baseline"), SEQ, VOCAB, NUM_IDS)}


def test_num_heads_need_not_divide_hidden_size():
    for variant in bi.FULL_NAMES:
        assert ArchConfig(name=variant, hidden_size=32, num_heads=3).head_dim == 10
    model = build_model(ArchConfig(name="transformers_baseline", hidden_size=512, num_heads=12, H_layers=1,
                                   forward_dtype="float32"), SHAPE, batch_size=1)
    state = model.state_dict()
    assert state["model.inner.H_level.layers.0.self_attn.qkv_proj.weight"].shape == (1512, 512)
    assert state["model.inner.H_level.layers.0.self_attn.o_proj.weight"].shape == (512, 504)


# --------------------------------------------------------------------------------------------
# 5. two gloo workers equal one process on the concatenated batch
# --------------------------------------------------------------------------------------------
DP_BATCH, DP_STEPS = 4, 2
DP_VARIANTS = [("hrm", {}), ("transformers_baseline", {"num_heads": 3}), ("trm_singlez", {"mlp_t": True}),
               ("trm_hier6", {"no_ACT_continue": False, "L_cycles": 3})]


def dp_config(variant, overrides) -> TrainConfig:
    arch = {**BASE, "name": variant, "halt_max_steps": 2, **overrides}
    return TrainConfig(arch=arch, global_batch_size=DP_BATCH, lr=3e-3, lr_warmup_steps=1, weight_decay=0.1,
                       puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1, seed=3)


def dp_batches():
    batches = [make_batch(20 + i, DP_BATCH) for i in range(DP_STEPS)]
    for b in batches:
        b["puzzle_identifiers"] = torch.tensor([1, 2, 1, 3], dtype=torch.int32)  # shared across ranks
    return batches


def dp_run(variant, overrides, rank=0, world=1):
    from trm_ray.train.step import create_train_state, train_step

    state = create_train_state(dp_config(variant, overrides), SHAPE, total_steps=100)
    initial = {k: v.detach().clone() for k, v in state.module.state_dict().items()}
    local = DP_BATCH // world
    for batch in dp_batches():
        train_step(state, {k: v[rank * local:(rank + 1) * local] for k, v in batch.items()})
    return initial, {k: v.detach().clone() for k, v in state.module.state_dict().items()}


def _dp_trained_on_rank(rank: int, world: int) -> dict[str, dict[str, torch.Tensor]]:
    return {variant: dp_run(variant, overrides, rank, world)[1] for variant, overrides in DP_VARIANTS}


def test_two_gloo_workers_equal_one_process_for_every_variant(tmp_path):
    distributed = run_data_parallel(_dp_trained_on_rank, 2, tmp_path)
    for variant, overrides in DP_VARIANTS:
        initial, single = dp_run(variant, overrides)
        assert distributed[variant].keys() == single.keys()
        for key in single:
            torch.testing.assert_close(distributed[variant][key], single[key], rtol=0, atol=1e-5,
                                       msg=f"{variant} {key}")
        moved = [k for k in single if not torch.equal(single[k], initial[k])]
        assert "model.inner.puzzle_emb.weights" in moved and "model.inner.lm_head.weight" in moved, variant


# --------------------------------------------------------------------------------------------
# 6. checkpoints in the reference format
# --------------------------------------------------------------------------------------------
LOSS = {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"}
TRM_YAML_KEYS = ("H_cycles", "L_cycles", "H_layers", "L_layers", "hidden_size", "num_heads", "expansion",
                 "puzzle_emb_ndim", "puzzle_emb_len", "pos_encodings", "halt_max_steps", "halt_exploration_prob",
                 "no_ACT_continue", "forward_dtype", "mlp_t")
# Each variant's config/arch yaml keys; `ignored` are keys its config class does not declare.
YAML = {
    "hrm": dict(keys=("H_cycles", "L_cycles", "H_layers", "L_layers", "hidden_size", "num_heads", "expansion",
                      "puzzle_emb_ndim", "pos_encodings", "halt_max_steps", "halt_exploration_prob", "forward_dtype",
                      "mlp_t"),
                ignored={"puzzle_emb_len": 16, "no_ACT_continue": True},
                overrides={"pos_encodings": "learned", "H_layers": 2}),
    "transformers_baseline": dict(keys=("H_cycles", "H_layers", "hidden_size", "num_heads", "expansion",
                                        "puzzle_emb_ndim", "pos_encodings", "halt_max_steps",
                                        "halt_exploration_prob", "act_enabled", "act_inference", "forward_dtype"),
                                  ignored={"L_cycles": 6, "L_layers": 4, "puzzle_emb_len": 16, "no_ACT_continue": True},
                                  overrides={"pos_encodings": "learned", "num_heads": 3, "H_layers": 2}),
    "trm_singlez": dict(keys=TRM_YAML_KEYS, ignored={}, overrides={"mlp_t": True}),
    "trm_hier6": dict(keys=TRM_YAML_KEYS, ignored={}, overrides={"L_cycles": 3, "pos_encodings": "learned"}),
}


def write_reference_checkpoint(folder, variant, seed=0, yaml_extra=None, **extra):
    """A checkpoint as a compiled reference run writes it: `_orig_mod.model.inner.*` tensors built
    here, and all_config.yaml with the reference's arch block (plus `yaml_extra`, written to the
    YAML only). Returns (path, Impl on the weights)."""
    overrides = {**YAML[variant]["overrides"], **extra}
    arch = impl_arch(variant, **overrides)
    state = bi.random_state(arch, SEQ, VOCAB, NUM_IDS, seed)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "step_10"
    torch.save({"_orig_mod." + k: v for k, v in state.items()}, path)
    settings = {"act_enabled": True, "act_inference": False, "no_ACT_continue": True, "mlp_t": False,
                **BASE, **overrides}
    block = {"name": bi.FULL_NAMES[variant], "loss": LOSS, **{k: settings[k] for k in YAML[variant]["keys"]},
             **YAML[variant]["ignored"], **(yaml_extra or {})}
    (folder / "all_config.yaml").write_text(yaml.safe_dump({"arch": block, "global_batch_size": 8, "lr": 1e-4}))
    return path, bi.Impl(arch, state)


@pytest.mark.parametrize("yaml_depths", ["right", "wrong"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_reference_checkpoint_loads_and_predicts_as_the_float64_implementation(tmp_path, variant, yaml_depths):
    # Stack depths come from the tensors' layer indices, whatever the YAML says.
    lie = {"H_layers": 5, "L_layers": 4} if yaml_depths == "wrong" else None
    path, impl = write_reference_checkpoint(tmp_path / variant, variant, yaml_extra=lie)
    model = trm_ray.load_checkpoint(path)
    assert model.model.arch.name == variant
    batch = make_batch(2)
    out = trm_ray.predict(model, {k: v for k, v in batch.items() if k != "labels"})
    want = impl.predict(batch)[-1][1]
    for key in ("logits", "q_halt_logits", "q_continue_logits"):
        assert_close(out[key], want[key], f"{variant} {key}", tol=ROLLOUT_TOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_checkpoint_writes_the_reference_keys_and_name(tmp_path, variant):
    overrides = YAML[variant]["overrides"]
    model, _ = build(variant, **overrides)
    path = trm_ray.save_checkpoint(model.eval(), tmp_path / "step_1")
    saved = torch.load(path, weights_only=True)
    expected = bi.expected_shapes(impl_arch(variant, **overrides), SEQ, VOCAB, NUM_IDS)
    assert {k: tuple(v.shape) for k, v in saved.items()} == \
        {"_orig_mod.model.inner." + k: shape for k, shape in expected.items()}
    config = yaml.safe_load((path.parent / "all_config.yaml").read_text())
    assert config["arch"]["name"] == bi.FULL_NAMES[variant]
    assert config["arch"]["loss"]["name"] == LOSS["name"]
    again = trm_ray.load_checkpoint(path)
    assert again.model.arch.name == variant
    batch = {k: v for k, v in make_batch(2).items() if k != "labels"}
    a, b = trm_ray.predict(model, batch), trm_ray.predict(again, batch)
    for key in ("logits", "q_halt_logits", "q_continue_logits"):
        assert torch.equal(a[key], b[key]), key


def test_checkpoint_with_other_head_count_is_refused(tmp_path):
    # 3 heads of 10 channels (qkv 90 rows) do not fit a config of 2 heads of 16 (96 rows)
    path, _ = write_reference_checkpoint(tmp_path, "transformers_baseline", yaml_extra={"num_heads": 2})
    with pytest.raises(ValueError, match="qkv_proj"):
        trm_ray.load_checkpoint(path)


@pytest.mark.parametrize("variant", VARIANTS)
def test_init_facts_per_variant(variant):
    """Q head 0 / -5, zero puzzle table, init buffers in the forward dtype, fp32 parameters."""
    torch.manual_seed(0)
    model = build_model(make_arch(variant, forward_dtype="bfloat16"), SHAPE, batch_size=B)
    inner = model.model.inner
    assert torch.equal(inner.q_head.weight, torch.zeros(2, 32))
    assert torch.equal(inner.q_head.bias, torch.tensor([-5.0, -5.0]))
    assert torch.equal(inner.puzzle_emb.weights, torch.zeros(NUM_IDS, 40))
    for buffer in impl_arch(variant).init_buffers:
        value = getattr(inner, buffer)
        assert value.dtype == torch.bfloat16 and value.shape == (32,) and value.float().std() > 0.5, buffer
    assert all(p.dtype == torch.float32 for p in model.parameters())
    buffers = set(impl_arch(variant).init_buffers)
    assert len({getattr(inner, b).float().sum().item() for b in buffers}) == len(buffers)  # drawn separately


def mentions(message: str, variant: str) -> bool:
    """The message names the variant, by its short or its reference name."""
    if variant == "trm":  # `trm` is part of every TRM ablation's name: require it standing alone
        return re.search(r"(?<![\w.])trm(?![\w@])|recursive_reasoning\.trm@", message) is not None
    return variant in message


@pytest.mark.parametrize("saved,config", [("hrm", "transformers_baseline"), ("transformers_baseline", "hrm"),
                                          ("trm_singlez", "trm_hier6"), ("trm_hier6", "trm"),
                                          ("trm_singlez", "hrm")])
def test_checkpoint_of_another_variant_is_refused_naming_both(tmp_path, saved, config):
    path, _ = write_reference_checkpoint(tmp_path, saved)
    with pytest.raises(ValueError) as info:
        trm_ray.load_checkpoint(path, config=ArchConfig(**{**BASE, "name": config}))
    message = str(info.value)
    assert mentions(message, saved) and mentions(message, config), message
    assert "\n" not in message.strip()


def test_checkpoint_with_an_unknown_arch_name_lists_the_known_ones(tmp_path):
    path, _ = write_reference_checkpoint(tmp_path, "trm_singlez")
    config = yaml.safe_load((tmp_path / "all_config.yaml").read_text())
    config["arch"]["name"] = "recursive_reasoning.trm_double_z@TinyRecursiveReasoningModel_ACTV1"
    (tmp_path / "all_config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError) as info:
        trm_ray.load_checkpoint(path)
    assert "trm_double_z" in str(info.value)
    for short in bi.FULL_NAMES:
        assert short in str(info.value)
