"""A naive, slow, obviously-correct TRM forward written from docs/paper.md#recursion, for tests only.

It shares no code with trm_ray.model: it reads a state dict (keys `model.inner.*`, any
`_orig_mod.` prefix removed) and computes in float64 with explicit formulas, so a test that
compares the library against it compares two independent readings of the spec:

- RoPE from its formula (rotate-half, angle = position * theta^(-2i/head_dim));
- attention as softmax(q k^T / sqrt(head_dim)) v, by hand;
- MLP-T by an explicit transpose to (B, D, S+P), SwiGLU over the last axis, norm over the
  last axis, transpose back (the library uses left matmuls and a norm over axis 1);
- rms_norm, silu and softmax by hand.

Plus the stablemax log-probability in plain numpy float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

F64 = torch.float64


@dataclass
class RefArch:
    """The arch settings the forward needs, spelled out (no derived values from trm_ray.config)."""

    hidden_size: int
    num_heads: int
    expansion: float
    H_cycles: int
    L_cycles: int
    L_layers: int
    puzzle_emb_ndim: int
    puzzle_emb_len: int
    pos_encodings: str
    mlp_t: bool
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5

    @classmethod
    def from_arch(cls, arch) -> "RefArch":
        ndim = arch.hidden_size if arch.puzzle_emb_ndim is None else arch.puzzle_emb_ndim
        return cls(arch.hidden_size, arch.num_heads, arch.expansion, arch.H_cycles, arch.L_cycles, arch.L_layers,
                   ndim, arch.puzzle_emb_len, arch.pos_encodings, arch.mlp_t, arch.rope_theta, arch.rms_norm_eps)

    @property
    def prefix_len(self) -> int:
        # Prefix length: P = puzzle_emb_len, or ceil(ndim / D) when it is 0; P = 0 without a table.
        if self.puzzle_emb_ndim == 0:
            return 0
        if self.puzzle_emb_len == 0:
            return (self.puzzle_emb_ndim + self.hidden_size - 1) // self.hidden_size
        return self.puzzle_emb_len


def _w(state, key):
    key = "model.inner." + key
    if key not in state:
        key = "_orig_mod." + key
    return state[key].detach().to(F64)


def rms_norm(x, eps):
    """Over the last axis, by hand."""
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def silu(x):
    return x / (1 + torch.exp(-x))


def swiglu(x, w_gate_up, w_down):
    """x (..., W) -> (..., W); w_gate_up (2I, W) split [gate | up] on its rows."""
    inter = w_gate_up.shape[0] // 2
    gate = x @ w_gate_up[:inter].T
    up = x @ w_gate_up[inter:].T
    return (silu(gate) * up) @ w_down.T


def rope(x, theta):
    """x (B, L, H, hd). Rotate-half convention: pair i with i + hd/2, angle p * theta^(-2i/hd)."""
    _, length, _, hd = x.shape
    half = hd // 2
    out = torch.empty_like(x)
    for p in range(length):
        for i in range(half):
            angle = p * theta ** (-2.0 * i / hd)
            c, s = math.cos(angle), math.sin(angle)
            a, b = x[:, p, :, i], x[:, p, :, i + half]
            out[:, p, :, i] = a * c - b * s
            out[:, p, :, i + half] = b * c + a * s
    return out


def attention(h, w_qkv, w_o, heads, rope_theta):
    B, L, D = h.shape
    hd = D // heads
    qkv = (h @ w_qkv.T).view(B, L, 3 * heads, hd)
    q, k, v = qkv[:, :, :heads], qkv[:, :, heads:2 * heads], qkv[:, :, 2 * heads:]
    if rope_theta is not None:
        q, k = rope(q, rope_theta), rope(k, rope_theta)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    scores = scores - scores.max(-1, keepdim=True).values
    probs = torch.exp(scores)
    probs = probs / probs.sum(-1, keepdim=True)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, L, D)
    return out @ w_o.T


def block(state, i, h, arch: RefArch):
    pre = f"L_level.layers.{i}."
    eps = arch.rms_norm_eps
    if arch.mlp_t:
        t = h.transpose(1, 2)  # (B, D, L)
        t = rms_norm(t + swiglu(t, _w(state, pre + "mlp_t.gate_up_proj.weight"), _w(state, pre + "mlp_t.down_proj.weight")), eps)
        h = t.transpose(1, 2)
    else:
        theta = arch.rope_theta if arch.pos_encodings == "rope" else None
        h = rms_norm(h + attention(h, _w(state, pre + "self_attn.qkv_proj.weight"), _w(state, pre + "self_attn.o_proj.weight"),
                                   arch.num_heads, theta), eps)
    return rms_norm(h + swiglu(h, _w(state, pre + "mlp.gate_up_proj.weight"), _w(state, pre + "mlp.down_proj.weight")), eps)


def net(state, h, injection, arch: RefArch):
    h = h + injection
    for i in range(arch.L_layers):
        h = block(state, i, h, arch)
    return h


def input_embeddings(state, inputs, puzzle_identifiers, arch: RefArch):
    D = arch.hidden_size
    e = _w(state, "embed_tokens.embedding_weight")[inputs.long()]  # (B, S, D)
    P = arch.prefix_len
    if P:
        rows = _w(state, "puzzle_emb.weights")[puzzle_identifiers.long()]  # (B, ndim)
        prefix = torch.zeros(rows.shape[0], P * D, dtype=F64)
        prefix[:, :rows.shape[1]] = rows
        e = torch.cat([prefix.view(-1, P, D), e], dim=1)
    if arch.pos_encodings == "learned":
        e = 0.707106781 * (e + _w(state, "embed_pos.embedding_weight"))
    return math.sqrt(D) * e


def inner_forward(state, arch: RefArch, inputs, puzzle_identifiers, z_H, z_L):
    """One deep recursion. Returns (z_H, z_L, logits (B, S, V), q_halt, q_continue), float64."""
    x = input_embeddings(state, inputs, puzzle_identifiers, arch)
    z_H, z_L = z_H.to(F64), z_L.to(F64)
    for _ in range(arch.H_cycles):
        for _ in range(arch.L_cycles):
            z_L = net(state, z_L, z_H + x, arch)
        z_H = net(state, z_H, z_L, arch)
    logits = (z_H @ _w(state, "lm_head.weight").T)[:, arch.prefix_len:]
    q = z_H[:, 0] @ _w(state, "q_head.weight").T + _w(state, "q_head.bias")
    return z_H, z_L, logits, q[:, 0], q[:, 1]


def initial_inner(state, batch_size, length):
    """(z_H, z_L) of a freshly reset row: H_init / L_init broadcast over (B, L, D)."""
    H, L = _w(state, "H_init"), _w(state, "L_init")
    return H.expand(batch_size, length, -1).clone(), L.expand(batch_size, length, -1).clone()


def predict(state, arch: RefArch, inputs, puzzle_identifiers, halt_max_steps):
    """Eval-mode ACT: every row runs exactly halt_max_steps deep recursions from (H_init, L_init)."""
    z_H, z_L = initial_inner(state, inputs.shape[0], inputs.shape[1] + arch.prefix_len)
    for _ in range(halt_max_steps):
        z_H, z_L, logits, q_halt, q_continue = inner_forward(state, arch, inputs, puzzle_identifiers, z_H, z_L)
    return logits, q_halt, q_continue


# --------------------------------------------------------------------------------------------
# losses, numpy float64
# --------------------------------------------------------------------------------------------
def stablemax_logprob(logits: np.ndarray) -> np.ndarray:
    """log(s(x_i) / sum_j s(x_j)), s(x) = 1/(1-x) for x < 0 else x + 1, element by element."""
    x = np.asarray(logits, dtype=np.float64)
    s = np.empty_like(x)
    flat, out = x.reshape(-1), s.reshape(-1)
    for i, v in enumerate(flat):
        out[i] = 1.0 / (1.0 - v) if v < 0 else v + 1.0
    return np.log(s / s.sum(-1, keepdims=True))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def bce_with_logits(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))
