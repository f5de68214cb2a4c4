"""The model's fast paths round exactly as the plain op-by-op computation does.

trm_ray.model writes RoPE and SwiGLU's silu(gate) * up as autograd functions that fill one
buffer instead of concatenating halves, uses torch's fused RMSNorm where it rounds as the
op-by-op norm does, and the op-by-op norm for MLP-T. tests/reference_fp32.py computes the same
inner recursion with plain torch ops in the public reference code's order, differentiated by
autograd; here values and gradients must agree to the bit (torch.equal), in fp32 on CPU.
"""

from __future__ import annotations

import pytest
import torch

import reference_fp32 as ref32
from trm_ray.config import ArchConfig, DataShape
from trm_ray.model import build_model

SEQ, VOCAB, NUM_IDS, D, BATCH = 30, 11, 7, 64, 4
SHAPE = DataShape(seq_len=SEQ, vocab_size=VOCAB, num_puzzle_identifiers=NUM_IDS)


def make(mlp_t: bool, pos: str):
    arch = ArchConfig(hidden_size=D, num_heads=4, expansion=4.0, H_cycles=2, L_cycles=3, L_layers=2,
                      puzzle_emb_ndim=D, puzzle_emb_len=2, pos_encodings=pos, mlp_t=mlp_t,
                      forward_dtype="float32", halt_max_steps=3, halt_exploration_prob=0.0)
    torch.manual_seed(0)
    model = build_model(arch, SHAPE, batch_size=BATCH)
    inner = model.model.inner
    with torch.no_grad():  # non-zero puzzle rows, so the prefix carries values
        inner.puzzle_emb.weights.normal_()
    g = torch.Generator().manual_seed(1)
    batch = {"inputs": torch.randint(0, VOCAB, (BATCH, SEQ), generator=g, dtype=torch.int32),
             "puzzle_identifiers": torch.randint(0, NUM_IDS, (BATCH,), generator=g, dtype=torch.int32)}
    P = inner.puzzle_emb_len
    z = [torch.randn(BATCH, SEQ + P, D, generator=g) for _ in range(2)]
    weights = [torch.randn(BATCH, SEQ, VOCAB, generator=g), torch.randn(BATCH, generator=g),
               torch.randn(BATCH, generator=g)]
    return model, arch, batch, z, weights


def dense_grads(inner) -> dict[str, torch.Tensor]:
    """Gradients of the dense parameters (the puzzle table trains through a scratch copy of
    its rows in the library, so its gradient lives elsewhere and is not compared)."""
    grads = {n: p.grad.clone() for n, p in inner.named_parameters() if p.grad is not None}
    inner.zero_grad(set_to_none=True)
    return grads


@pytest.fixture
def two_threads():
    """Vectorised and threaded kernels, as in a real run; the suite's setting comes back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("mlp_t,pos", [(True, "none"), (False, "rope"), (False, "learned")],
                         ids=["mlp_t", "attention-rope", "attention-learned"])
def test_inner_recursion_values_and_gradients_are_bit_identical_to_op_by_op(mlp_t, pos, two_threads):
    model, arch, batch, (z_H, z_L), (w_logits, w_halt, w_cont) = make(mlp_t, pos)
    inner = model.model.inner
    model.eval()  # the puzzle rows are read from the table itself, as the op-by-op path reads them

    carry, logits, (q_halt, q_cont) = inner({"z_H": z_H.clone(), "z_L": z_L.clone()}, batch)
    ((logits * w_logits).sum() + (q_halt * w_halt).sum() + (q_cont * w_cont).sum()).backward()
    lib_grads = dense_grads(inner)

    e_H, e_L, e_logits, e_halt, e_cont = ref32.inner_forward(inner, arch, batch, z_H.clone(), z_L.clone(),
                                                             inner.puzzle_emb_len)
    ((e_logits * w_logits).sum() + (e_halt * w_halt).sum() + (e_cont * w_cont).sum()).backward()
    ref_grads = dense_grads(inner)

    for name, got, want in [("z_H", carry["z_H"], e_H), ("z_L", carry["z_L"], e_L), ("logits", logits, e_logits),
                            ("q_halt", q_halt, e_halt), ("q_continue", q_cont, e_cont)]:
        assert torch.equal(got, want), f"{name}: max abs diff {(got - want).abs().max().item():.3g}"
    assert lib_grads.keys() == ref_grads.keys() and len(lib_grads) >= 8
    for name in lib_grads:
        diff = (lib_grads[name] - ref_grads[name]).abs().max().item()
        assert torch.equal(lib_grads[name], ref_grads[name]), f"grad {name}: max abs diff {diff:.3g}"
