"""The TRM inner forward in float32, op by op in the order the public reference code computes
it, for bit-for-bit tests only.

tests/reference_impl.py checks the maths in float64 within a tolerance; this file pins the
rounding. It uses the plain torch ops a straightforward reading of the spec gives (rotate_half
as cat(-x2, x1), chunk then silu(gate) * up, RMSNorm as x * rsqrt(mean(x^2) + eps) op by op,
the MLP-T norm over the last axis of the transposed tensor) and lets autograd differentiate
them. trm_ray.model replaces some of these with fused or hand-written forward/backward
functions for speed; a test comparing the two with torch.equal shows the speed-ups changed no
bit of the values or the gradients.

Parameters are taken from the library's modules (not copied), so gradients land in the same
.grad fields.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.to(torch.float32)
    variance = xf.square().mean(-1, keepdim=True)
    return (xf * torch.rsqrt(variance + eps)).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_tables(head_dim: int, length: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def swiglu(x: torch.Tensor, module) -> torch.Tensor:
    gate, up = F.linear(x, module.gate_up_proj.weight).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, module.down_proj.weight)


def attention(h: torch.Tensor, module, cos_sin) -> torch.Tensor:
    batch, seq, _ = h.shape
    heads, head_dim = module.num_heads, module.head_dim
    qkv = F.linear(h, module.qkv_proj.weight).view(batch, seq, 3 * heads, head_dim)
    q, k, v = qkv[:, :, :heads], qkv[:, :, heads:2 * heads], qkv[:, :, 2 * heads:]
    if cos_sin is not None:
        cos, sin = cos_sin
        q = q.to(torch.float32) * cos.unsqueeze(-2) + rotate_half(q.to(torch.float32)) * sin.unsqueeze(-2)
        k = k.to(torch.float32) * cos.unsqueeze(-2) + rotate_half(k.to(torch.float32)) * sin.unsqueeze(-2)
    q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=False).permute(0, 2, 1, 3)
    return F.linear(out.reshape(batch, seq, heads * head_dim), module.o_proj.weight)


def block(h: torch.Tensor, layer, eps: float, cos_sin) -> torch.Tensor:
    if hasattr(layer, "mlp_t"):
        t = h.transpose(1, 2)
        h = rms_norm(t + swiglu(t, layer.mlp_t), eps).transpose(1, 2)
    else:
        h = rms_norm(h + attention(h, layer.self_attn, cos_sin), eps)
    return rms_norm(h + swiglu(h, layer.mlp), eps)


def net(h, injection, layers, eps, cos_sin):
    h = h + injection
    for layer in layers:
        h = block(h, layer, eps, cos_sin)
    return h


def inner_forward(inner, arch, batch, z_H, z_L, prefix_len: int):
    """One deep recursion, the first H_cycles - 1 cycles without grad; returns
    (z_H, z_L, logits, q_halt, q_continue) with the graph of the last cycle."""
    D = arch.hidden_size
    x = F.embedding(batch["inputs"].to(torch.int32), inner.embed_tokens.embedding_weight)
    if prefix_len:
        rows = inner.puzzle_emb.weights[batch["puzzle_identifiers"].long()]
        rows = F.pad(rows, (0, prefix_len * D - rows.shape[-1]))
        x = torch.cat((rows.view(-1, prefix_len, D), x), dim=-2)
    if arch.pos_encodings == "learned":
        x = 0.707106781 * (x + inner.embed_pos.embedding_weight)
    x = math.sqrt(D) * x
    cos_sin = rope_tables(D // arch.num_heads, x.shape[1], arch.rope_theta) if arch.pos_encodings == "rope" else None
    layers, eps = inner.L_level.layers, arch.rms_norm_eps
    with torch.no_grad():
        for _ in range(arch.H_cycles - 1):
            for _ in range(arch.L_cycles):
                z_L = net(z_L, z_H + x, layers, eps, cos_sin)
            z_H = net(z_H, z_L, layers, eps, cos_sin)
    for _ in range(arch.L_cycles):
        z_L = net(z_L, z_H + x, layers, eps, cos_sin)
    z_H = net(z_H, z_L, layers, eps, cos_sin)
    logits = F.linear(z_H, inner.lm_head.weight)[:, prefix_len:]
    q = F.linear(z_H[:, 0], inner.q_head.weight, inner.q_head.bias).to(torch.float32)
    return z_H, z_L, logits, q[..., 0], q[..., 1]
