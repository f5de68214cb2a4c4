"""The TRM model against independent computations from docs/paper.md.

The inner recursion is compared with tests/reference_impl.py (float64, hand-written
attention/RoPE/MLP-T); losses and metrics with numpy; the ACT wrapper with the rules of
docs/paper.md#act-halting replayed by hand. Tiny models only (hidden 32, seq 8): every test runs in well
under a second on a CPU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import reference_impl as ref
from trm_ray.config import ArchConfig, DataShape
from trm_ray.model import IGNORE_LABEL_ID, build_model, log_stablemax, stablemax_cross_entropy
from trm_ray.model.layers import CastedEmbedding, CastedLinear, trunc_normal_
from trm_ray.model.losses import softmax_cross_entropy

SEQ, VOCAB, NUM_IDS, D = 8, 10, 5, 32
SHAPE = DataShape(seq_len=SEQ, vocab_size=VOCAB, num_puzzle_identifiers=NUM_IDS)

# Tensors here are tiny: extra intra-op threads only add contention on a shared CPU.
torch.set_num_threads(1)


def make_arch(**overrides) -> ArchConfig:
    base = dict(hidden_size=D, num_heads=2, expansion=2.0, H_cycles=2, L_cycles=2, L_layers=2,
                puzzle_emb_ndim=40, puzzle_emb_len=2,  # 40 < 2 * 32: the prefix is zero-padded
                pos_encodings="rope", forward_dtype="float32", halt_max_steps=3, halt_exploration_prob=0.0)
    return ArchConfig(**{**base, **overrides})


def make_model(batch_size=4, seed=0, **overrides):
    torch.manual_seed(seed)
    model = build_model(make_arch(**overrides), SHAPE, batch_size=batch_size)
    inner = model.model.inner
    if hasattr(inner, "puzzle_emb"):  # a non-zero table, so the prefix is really exercised
        with torch.no_grad():
            inner.puzzle_emb.weights.normal_()
    return model


def make_batch(batch_size=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "inputs": torch.randint(0, VOCAB, (batch_size, SEQ), generator=g, dtype=torch.int32),
        "labels": torch.randint(0, VOCAB, (batch_size, SEQ), generator=g, dtype=torch.int32),
        "puzzle_identifiers": torch.randint(0, NUM_IDS, (batch_size,), generator=g, dtype=torch.int32),
    }


def state_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def close(actual, expected, tol=2e-5):
    actual = torch.as_tensor(actual).to(torch.float64)
    expected = torch.as_tensor(expected).to(torch.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = (actual - expected).abs().max().item()
    assert err <= tol * max(1.0, expected.abs().max().item()), f"max abs error {err}"


# --------------------------------------------------------------------------------------------
# inner forward (docs/paper.md#recursion) against the naive reference
# --------------------------------------------------------------------------------------------
VARIANTS = [(mlp_t, pos) for mlp_t in (False, True) for pos in ("rope", "learned", "none")]


@pytest.mark.parametrize("puzzle_emb_ndim", [40, 0], ids=["puzzle_emb", "no_puzzle_emb"])
@pytest.mark.parametrize("mlp_t,pos", VARIANTS, ids=[f"{'mlp_t' if m else 'attn'}-{p}" for m, p in VARIANTS])
def test_deep_recursion_matches_reference(mlp_t, pos, puzzle_emb_ndim):
    model = make_model(mlp_t=mlp_t, pos_encodings=pos, puzzle_emb_ndim=puzzle_emb_ndim).eval()
    inner = model.model.inner
    arch = ref.RefArch.from_arch(model.model.arch)
    P = arch.prefix_len
    assert inner.puzzle_emb_len == P == (2 if puzzle_emb_ndim else 0)
    if puzzle_emb_ndim == 0:
        # Reference defect fixed (docs/architectures.md): no puzzle embedding -> no prefix positions.
        assert not hasattr(inner, "puzzle_emb")
        if mlp_t:
            assert inner.L_level.layers[0].mlp_t.down_proj.weight.shape[0] == SEQ
    batch = make_batch()
    g = torch.Generator().manual_seed(2)
    z_H = torch.randn(4, SEQ + P, D, generator=g)
    z_L = torch.randn(4, SEQ + P, D, generator=g)
    with torch.no_grad():
        carry, logits, (q_halt, q_cont) = inner({"z_H": z_H.clone(), "z_L": z_L.clone()}, batch)
    e_H, e_L, e_logits, e_qh, e_qc = ref.inner_forward(state_of(model), arch, batch["inputs"],
                                                       batch["puzzle_identifiers"], z_H, z_L)
    assert logits.shape == (4, SEQ, VOCAB) and logits.dtype == torch.float32
    assert q_halt.dtype == torch.float32 and q_halt.shape == (4,)
    close(carry["z_H"], e_H)
    close(carry["z_L"], e_L)
    close(logits, e_logits)
    close(q_halt, e_qh)
    close(q_cont, e_qc)


def test_training_mode_puzzle_lookup_equals_eval_lookup():
    """The training path copies table rows into a grad-carrying scratch buffer; same numbers."""
    model = make_model()
    inner = model.model.inner
    batch = make_batch()
    carry = inner.empty_carry(4, SEQ, torch.device("cpu"))
    with torch.no_grad():
        _, train_logits, _ = inner.train()(carry, batch)
        _, eval_logits, _ = inner.eval()(carry, batch)
    assert torch.equal(train_logits, eval_logits)
    assert torch.equal(inner.puzzle_emb.local_ids, batch["puzzle_identifiers"])


def test_new_carry_is_detached_and_gradient_reaches_the_puzzle_scratch():
    model = make_model().train()
    inner = model.model.inner
    carry = inner.empty_carry(4, SEQ, torch.device("cpu"))
    new, logits, _ = inner(carry, make_batch())
    assert not new["z_H"].requires_grad and not new["z_L"].requires_grad
    logits.sum().backward()
    assert inner.puzzle_emb.local_weights.grad is not None
    assert inner.puzzle_emb.local_weights.grad.abs().sum() > 0
    assert inner.lm_head.weight.grad is not None


# --------------------------------------------------------------------------------------------
# stablemax and the token losses
# --------------------------------------------------------------------------------------------
EXTREME = torch.tensor([[1e30, -1e30, 0.0, 3.5, -2.25], [800.0, 750.0, -800.0, 1.0, -0.5],
                        [0.0, 0.0, 0.0, 0.0, 0.0], [-1e150, 1e150, 2.0, -3.0, 0.25]], dtype=torch.float64)


def test_log_stablemax_matches_formula_including_overflowing_logits():
    # exp(800) overflows even float64; stablemax stays finite.
    assert torch.isinf(torch.exp(torch.tensor(800.0, dtype=torch.float64)))
    got = log_stablemax(EXTREME, dim=-1)
    want = ref.stablemax_logprob(EXTREME.numpy())
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    # Hand values for one row: s = [1, 1, 1, 1, 1] -> log(1/5)
    np.testing.assert_allclose(got[2].numpy(), np.full(5, math.log(0.2)), rtol=1e-14)


def test_stablemax_cross_entropy_masked_tokens():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 6, VOCAB, generator=g) * 50).to(torch.float32)
    logits[0, 0, 3] = 1e4
    logits[1, 2, 1] = -1e4
    labels = torch.randint(0, VOCAB, (3, 6), generator=g)
    labels[0, 1] = IGNORE_LABEL_ID
    labels[2] = IGNORE_LABEL_ID
    mask = labels != IGNORE_LABEL_ID
    got = stablemax_cross_entropy(logits, labels, mask)
    assert got.dtype == torch.float64 and got.shape == (3, 6)
    lp = ref.stablemax_logprob(logits.double().numpy())
    want = np.zeros((3, 6))
    for b in range(3):
        for s in range(6):
            if labels[b, s] != IGNORE_LABEL_ID:
                want[b, s] = -lp[b, s, labels[b, s]]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_stablemax_cross_entropy_gradient_is_finite_when_a_logit_is_exactly_one():
    """bf16 logits are often exactly 1.0. The reference's s(x) = 1/(1 - x + 1e-30) keeps the
    unselected branch finite there; a bare 1/(1 - x) gives inf in the untaken branch and
    torch.where's backward turns 0 * inf into NaN."""
    logits = torch.tensor([[[1.0, -0.5, 2.0, 0.0]]], dtype=torch.bfloat16, requires_grad=True)
    labels = torch.tensor([[2]])
    loss = stablemax_cross_entropy(logits, labels, labels != IGNORE_LABEL_ID).sum()
    loss.backward()
    assert torch.isfinite(logits.grad).all(), logits.grad


def test_softmax_cross_entropy_against_log_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, VOCAB, generator=g) * 5
    labels = torch.randint(0, VOCAB, (3, 6), generator=g)
    labels[1, :3] = IGNORE_LABEL_ID
    mask = labels != IGNORE_LABEL_ID
    got = softmax_cross_entropy(logits, labels, mask)
    assert got.dtype == torch.float32
    lp = ref.log_softmax(logits.double().numpy())
    safe = np.where(mask.numpy(), labels.numpy(), 0)
    want = np.where(mask.numpy(), -np.take_along_axis(lp, safe[..., None], -1)[..., 0], 0)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# initialisation (docs/paper.md#initialisation)
# --------------------------------------------------------------------------------------------
def truncated_std_factor(bound=2.0, n=200001):
    """std of N(0,1) truncated to [-bound, bound], by numerical integration."""
    x = np.linspace(-bound, bound, n)
    pdf = np.exp(-0.5 * x * x)
    return math.sqrt(np.trapezoid(x * x * pdf, x) / np.trapezoid(pdf, x))


@pytest.mark.parametrize("std", [1.0, 0.02])
def test_trunc_normal_has_the_requested_std_and_bounds(std):
    torch.manual_seed(0)
    x = trunc_normal_(torch.empty(100_000), std=std).double()
    scale = std / truncated_std_factor()  # std of the untruncated normal
    assert abs(x.std().item() / std - 1) < 0.02
    assert abs(x.mean().item()) < 0.02 * std
    assert x.abs().max().item() <= 2 * scale * (1 + 1e-6)
    # really a normal cut at 2 scale (not e.g. N(0, std) clipped at 2 std)
    assert x.abs().max().item() > 1.95 * scale
    assert abs((x.abs() > scale).double().mean().item() - (1 - 0.6827 / 0.9545)) < 0.01


def test_trunc_normal_std_zero_gives_zeros():
    x = torch.full((1000,), 7.0)
    trunc_normal_(x, std=0.0)
    assert torch.equal(x, torch.zeros(1000))


def test_casted_layers_init_std_and_storage_dtype():
    torch.manual_seed(0)
    lin = CastedLinear(256, 512, bias=True)
    assert lin.weight.dtype == torch.float32 and lin.weight.shape == (512, 256)
    assert abs(lin.weight.std().item() * math.sqrt(256) - 1) < 0.02
    assert torch.equal(lin.bias, torch.zeros(512))
    emb = CastedEmbedding(1024, 128, init_std=1 / math.sqrt(128), cast_to=torch.bfloat16)
    assert emb.embedding_weight.dtype == torch.float32
    assert abs(emb.embedding_weight.std().item() * math.sqrt(128) - 1) < 0.02
    assert emb(torch.tensor([0, 1])).dtype == torch.bfloat16
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    assert lin(x).dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_model_init_facts(dtype):
    model = build_model(make_arch(forward_dtype=dtype, pos_encodings="learned"), SHAPE, batch_size=2)
    inner = model.model.inner
    assert torch.equal(inner.q_head.weight, torch.zeros(2, D))
    assert torch.equal(inner.q_head.bias, torch.full((2,), -5.0))
    assert inner.lm_head.bias is None and inner.lm_head.weight.shape == (VOCAB, D)
    assert torch.equal(inner.puzzle_emb.weights, torch.zeros(NUM_IDS, 40))
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    assert "model.inner.puzzle_emb.weights" in buffers and "model.inner.puzzle_emb.weights" not in params
    assert "model.inner.puzzle_emb.weights" in model.state_dict()
    for name in ("H_init", "L_init"):
        b = getattr(inner, name)
        assert b.shape == (D,) and b.dtype == getattr(torch, dtype)
        assert f"model.inner.{name}" in model.state_dict()
    assert inner.embed_pos.embedding_weight.shape == (SEQ + 2, D)
    for p in params.values():
        assert p.dtype == torch.float32  # fp32 master weights whatever the forward dtype


def test_h_init_l_init_are_unit_std_truncated_normal_in_forward_dtype():
    torch.manual_seed(0)
    x = trunc_normal_(torch.empty(100_000, dtype=torch.bfloat16), std=1.0).double()  # how H_init is drawn
    assert abs(x.std().item() - 1) < 0.03 and x.abs().max().item() <= 2 / truncated_std_factor() + 0.02
    inner = build_model(make_arch(forward_dtype="bfloat16"), SHAPE, batch_size=1).model.inner
    assert not torch.equal(inner.H_init, inner.L_init)
    for b in (inner.H_init, inner.L_init):
        assert b.abs().max().item() <= 2 / truncated_std_factor() + 0.02 and b.std().item() > 0.5


# --------------------------------------------------------------------------------------------
# ACT wrapper (docs/paper.md#act-halting)
# --------------------------------------------------------------------------------------------
def set_q_bias(model, halt, cont):
    with torch.no_grad():
        model.model.inner.q_head.bias.copy_(torch.tensor([halt, cont]))


def test_eval_runs_exactly_halt_max_steps_and_predict_matches_reference():
    model = make_model(halt_max_steps=3).eval()
    set_q_bias(model, 5.0, -5.0)  # would halt at once in training; eval must ignore it
    batch = make_batch()
    carry = model.initial_carry(batch)
    for step in range(1, 4):
        carry, _, _, outputs, all_halted = model(carry, batch)
        assert torch.equal(carry.steps, torch.full((4,), step, dtype=torch.int32))
        assert bool(all_halted) == (step == 3)
        assert carry.halted.all() if step == 3 else not carry.halted.any()
    import trm_ray

    out = trm_ray.predict(model, {k: v.numpy() for k, v in batch.items() if k != "labels"})
    arch = ref.RefArch.from_arch(model.model.arch)
    logits, q_halt, _ = ref.predict(state_of(model), arch, batch["inputs"], batch["puzzle_identifiers"], 3)
    close(out["logits"], logits, tol=1e-4)  # three recursions in fp32 vs float64
    close(out["q_halt_logits"], q_halt, tol=1e-4)
    assert np.array_equal(out["preds"], logits.argmax(-1).numpy())
    assert np.array_equal(out["logits"], outputs["logits"].numpy())


@pytest.mark.parametrize("halt_bias,expect_halt", [(5.0, True), (-5.0, False)])
def test_training_halts_rows_with_positive_q_halt(halt_bias, expect_halt):
    model = make_model(halt_max_steps=3).train()
    set_q_bias(model, halt_bias, 0.0)
    batch = make_batch()
    carry = model.initial_carry(batch)
    carry, _, _, _, _ = model(carry, batch)
    assert carry.halted.tolist() == [expect_halt] * 4
    carry, _, _, _, _ = model(carry, batch)
    assert carry.halted.tolist() == [expect_halt] * 4
    carry, _, _, _, all_halted = model(carry, batch)
    assert bool(all_halted)  # step 3 = halt_max_steps halts everything either way


def test_halt_max_steps_one_halts_in_training_without_q():
    model = make_model(halt_max_steps=1, halt_exploration_prob=1.0).train()
    batch = make_batch()
    carry, *_ , all_halted = model(model.initial_carry(batch), batch)
    assert bool(all_halted)


def test_exploration_delays_halting_to_min_halt_in_2_to_N():
    N, B = 4, 64

    def run(seed):
        torch.manual_seed(0)
        model = build_model(make_arch(halt_max_steps=N, halt_exploration_prob=1.0, hidden_size=16, num_heads=2,
                                      L_layers=1, H_cycles=1, L_cycles=1, puzzle_emb_ndim=0, mlp_t=True),
                            SHAPE, batch_size=B).train()
        set_q_bias(model, 5.0, 0.0)  # the Q head alone would halt every row at step 1
        model.model.generator = torch.Generator().manual_seed(seed)
        batch = make_batch(B)
        carry = model.initial_carry(batch)
        halted_at = torch.zeros(B, dtype=torch.int64)
        with torch.no_grad():
            for step in range(1, N + 1):
                carry, *_ = model(carry, batch)
                if step == 1:
                    assert not carry.halted.any()
                newly = carry.halted & (halted_at == 0)
                halted_at[newly] = step
        return halted_at

    a = run(123)
    assert (a >= 2).all() and (a <= N).all()
    assert len(set(a.tolist())) > 1  # min_halt really varies per row
    assert torch.equal(a, run(123))  # the seeded generator makes exploration reproducible


def test_halted_rows_restart_on_fresh_data_others_continue():
    B = 4
    model = make_model(batch_size=B, halt_max_steps=5).train()
    set_q_bias(model, -5.0, 0.0)
    first, second = make_batch(B, seed=1), make_batch(B, seed=2)
    with torch.no_grad():
        carry, *_ = model(model.initial_carry(first), first)
        carry, *_ = model(carry, first)
        old_H, old_L = carry.inner["z_H"].clone(), carry.inner["z_L"].clone()
        mask = torch.tensor([True, False, True, False])
        carry.halted = mask.clone()
        new, _, _, outputs, _ = model(carry, second)
    for k in ("inputs", "labels", "puzzle_identifiers"):
        want = torch.where(mask.view((-1,) + (1,) * (first[k].ndim - 1)), second[k], first[k])
        assert torch.equal(new.current_data[k], want), k
    assert new.steps.tolist() == [1, 3, 1, 3]
    assert new.steps.dtype == torch.int32
    # Manual reset: halted rows start from (H_init, L_init), the others from their carry.
    state = state_of(model)
    arch = ref.RefArch.from_arch(model.model.arch)
    init_H, init_L = ref.initial_inner(state, B, SEQ + 2)
    z_H = torch.where(mask.view(-1, 1, 1), init_H, old_H.double())
    z_L = torch.where(mask.view(-1, 1, 1), init_L, old_L.double())
    e_H, e_L, e_logits, _, _ = ref.inner_forward(state, arch, new.current_data["inputs"],
                                                 new.current_data["puzzle_identifiers"], z_H, z_L)
    close(new.inner["z_H"], e_H)
    close(new.inner["z_L"], e_L)
    close(outputs["logits"], e_logits)


def test_q_continue_target_and_loss_without_no_ACT_continue():
    B, N = 4, 2
    model = make_model(batch_size=B, halt_max_steps=N, no_ACT_continue=False).train()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # a Q head that depends on the state, so the target is not a constant
        model.model.inner.q_head.weight.copy_(torch.randn(2, D, generator=g) * 0.3)
        model.model.inner.q_head.bias.copy_(torch.tensor([-3.0, 3.0]))  # q_halt < q_continue: no Q halting
    batch = make_batch(B)
    carry = model.initial_carry(batch)
    state = state_of(model)
    arch = ref.RefArch.from_arch(model.model.arch)
    for step in range(1, N + 1):
        carry, loss, metrics, outputs, _ = model(carry, batch)
        assert "target_q_continue" in outputs
        _, _, _, next_qh, next_qc = ref.inner_forward(state, arch, carry.current_data["inputs"],
                                                      carry.current_data["puzzle_identifiers"],
                                                      carry.inner["z_H"], carry.inner["z_L"])
        raw = next_qh if step == N else torch.maximum(next_qh, next_qc)
        close(outputs["target_q_continue"], ref.sigmoid(raw.numpy()))
        q_cont_loss = ref.bce_with_logits(outputs["q_continue_logits"].numpy(), outputs["target_q_continue"].numpy()).sum()
        np.testing.assert_allclose(metrics["q_continue_loss"].item(), q_cont_loss, rtol=1e-5)
        np.testing.assert_allclose(loss.item(), metrics["lm_loss"].item()
                                   + 0.5 * (metrics["q_halt_loss"].item() + q_cont_loss), rtol=1e-6)
        assert carry.halted.all() == (step == N)


def test_no_ACT_continue_false_halts_when_q_halt_beats_q_continue():
    model = make_model(halt_max_steps=4, no_ACT_continue=False).train()
    set_q_bias(model, -1.0, -2.0)  # q_halt < 0 but > q_continue
    batch = make_batch()
    carry, *_ = model(model.initial_carry(batch), batch)
    assert carry.halted.all()


# --------------------------------------------------------------------------------------------
# loss head (docs/paper.md#losses-and-metrics)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_type", ["stablemax_cross_entropy", "softmax_cross_entropy"])
def test_loss_head_metrics_against_numpy(loss_type):
    B = 6
    model = make_model(batch_size=B, halt_max_steps=1, loss_type=loss_type).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.model.inner.q_head.weight.copy_(torch.randn(2, D, generator=g))
        model.model.inner.q_head.bias.zero_()
    batch = make_batch(B)
    with torch.no_grad():  # the predictions do not depend on the labels: read them, then label
        _, _, _, probe, _ = model(model.initial_carry(batch), batch)
    preds = probe["preds"]
    labels = preds.clone().to(torch.int32)
    labels[1, :3] = IGNORE_LABEL_ID  # correct, some ignored
    labels[2, 4] = (preds[2, 4] + 1) % VOCAB  # one wrong token
    labels[3] = IGNORE_LABEL_ID  # all ignored: excluded from the metrics, zero loss
    labels[4] = torch.randint(0, VOCAB, (SEQ,), generator=g)
    labels[5, ::2] = IGNORE_LABEL_ID
    labels[5, 1] = (preds[5, 1] + 3) % VOCAB
    batch["labels"] = labels
    with torch.no_grad():
        carry, loss, metrics, outputs, all_halted = model(model.initial_carry(batch), batch)
    assert bool(all_halted)

    logits = outputs["logits"].double().numpy()
    lab = labels.numpy()
    q_halt = outputs["q_halt_logits"].numpy()
    mask = lab != IGNORE_LABEL_ID
    lp = ref.stablemax_logprob(logits) if loss_type == "stablemax_cross_entropy" else ref.log_softmax(logits)
    count = mask.sum(-1)
    pred = logits.argmax(-1)
    lm = 0.0
    acc = exact = qacc = steps = n = 0.0
    seq_correct = np.zeros(B, bool)
    for b in range(B):
        token_losses = [-lp[b, s, lab[b, s]] for s in range(SEQ) if mask[b, s]]
        lm += sum(token_losses) / max(count[b], 1)
        right = [pred[b, s] == lab[b, s] for s in range(SEQ) if mask[b, s]]
        seq_correct[b] = all(right)
        if count[b] > 0:
            n += 1
            acc += sum(right) / count[b]
            exact += seq_correct[b]
            qacc += (q_halt[b] >= 0) == seq_correct[b]
            steps += 1
    q_halt_loss = ref.bce_with_logits(q_halt, seq_correct).sum()
    assert seq_correct.tolist() == [True, True, False, True, seq_correct[4], False]

    assert metrics["count"].item() == n == 5
    np.testing.assert_allclose(metrics["accuracy"].item(), acc, rtol=1e-6)
    assert metrics["exact_accuracy"].item() == exact
    assert metrics["q_halt_accuracy"].item() == qacc
    assert metrics["steps"].item() == steps
    np.testing.assert_allclose(metrics["lm_loss"].item(), lm, rtol=1e-5)
    np.testing.assert_allclose(metrics["q_halt_loss"].item(), q_halt_loss, rtol=1e-5)
    np.testing.assert_allclose(loss.item(), lm + 0.5 * q_halt_loss, rtol=1e-5)
    assert "q_continue_loss" not in metrics


def test_metrics_count_only_rows_that_halted_this_step():
    model = make_model(halt_max_steps=2).eval()
    batch = make_batch()
    carry, loss, metrics, _, all_halted = model(model.initial_carry(batch), batch)
    assert not bool(all_halted)
    for name in ("count", "accuracy", "exact_accuracy", "q_halt_accuracy", "steps"):
        assert metrics[name].item() == 0, name
    assert metrics["lm_loss"].item() > 0  # the loss still covers every row
    _, _, metrics, _, _ = model(carry, batch)
    assert metrics["count"].item() == 4 and metrics["steps"].item() == 8


# --------------------------------------------------------------------------------------------
# bf16 forward on CPU
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mlp_t", [False, True])
def test_bf16_forward_agrees_with_fp32(mlp_t):
    fp32 = make_model(mlp_t=mlp_t).eval()
    bf16 = build_model(make_arch(mlp_t=mlp_t, forward_dtype="bfloat16"), SHAPE, batch_size=4).eval()
    bf16.load_state_dict(fp32.state_dict())
    assert bf16.model.inner.H_init.dtype == torch.bfloat16
    batch = make_batch()
    with torch.no_grad():
        _, _, _, out32, _ = fp32(fp32.initial_carry(batch), batch)
        _, _, _, out16, _ = bf16(bf16.initial_carry(batch), batch)
    assert out16["logits"].dtype == torch.bfloat16
    assert out16["q_halt_logits"].dtype == torch.float32
    ref32 = out32["logits"]
    rel = (out16["logits"].float() - ref32).abs().max() / ref32.abs().max()
    assert rel < 0.1, rel
    assert (out16["preds"] == out32["preds"]).float().mean() > 0.8
