"""Building blocks of the TRM network (docs/paper.md#blocks): casted linear/embedding, RMSNorm,
RoPE, attention, SwiGLU, and the post-norm block in its attention and MLP-T variants.

Parameters are stored in fp32 and cast to the activation dtype at use, so a bf16 forward
keeps fp32 master weights (what the optimizer updates). Module and parameter names match
the reference so state dicts move both ways.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def trunc_normal_(tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0) -> torch.Tensor:
    """JAX-style truncated normal: N(0, 1) cut to [lower, upper], rescaled so that the *truncated*
    distribution has standard deviation `std` (torch.nn.init.trunc_normal_ does not rescale)."""
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()
        # Variance of a standard normal truncated to [a, b]: 1 + (a phi(a) - b phi(b)) / Z - ((phi(a) - phi(b)) / Z)^2
        phi = lambda x: math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # noqa: E731
        cdf_lo, cdf_hi = math.erf(lower / math.sqrt(2)), math.erf(upper / math.sqrt(2))
        mass = (cdf_hi - cdf_lo) / 2
        truncated_var = 1 + (lower * phi(lower) - upper * phi(upper)) / mass - ((phi(lower) - phi(upper)) / mass) ** 2
        scale = std / math.sqrt(truncated_var)
        # Inverse-CDF sampling: uniform in erf space -> erfinv -> normal restricted to [lower, upper].
        tensor.uniform_(cdf_lo, cdf_hi).erfinv_().mul_(math.sqrt(2) * scale)
        return tensor.clamp_(lower * scale, upper * scale)


class CastedLinear(nn.Module):
    """Linear layer with fp32 weights cast to the input dtype; weight std 1/sqrt(fan_in), bias zero."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_(torch.empty(out_features, in_features), std=1.0 / math.sqrt(in_features)))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


class CastedEmbedding(nn.Module):
    """Embedding table stored fp32, looked up then cast to the forward dtype."""

    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(trunc_normal_(torch.empty(num_embeddings, embedding_dim), std=init_std))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight.to(self.cast_to))


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMSNorm over the last axis, computed in fp32 and cast back.

    torch's fused kernel: on a contiguous input it rounds exactly as the reference's
    square-mean-rsqrt does, and it is one pass instead of four."""
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def rms_norm_unfused(x: torch.Tensor, eps: float) -> torch.Tensor:
    """The same norm as x * rsqrt(mean(x^2) + eps), op by op, as the reference computes it.

    For MLP-T's norm over the sequence axis of a transposed tensor, where the fused kernel
    reduces in another order and the results drift from the reference's in the last bits
    (6.6e-4 relative after a full ACT rollout); op by op they are bit-identical."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for the rotate-half RoPE convention, positions 0..length-1, in fp32.

    Built for `max_positions` and extended on demand, so the table never has to come from a
    checkpoint (it is not in reference state dicts) nor from the dataset."""

    def __init__(self, head_dim: int, max_positions: int, base: float):
        super().__init__()
        self.head_dim, self.base = head_dim, base
        cos, sin = self._tables(max_positions)
        self.register_buffer("cos_cached", cos, persistent=False)
        self.register_buffer("sin_cached", sin, persistent=False)

    def _tables(self, length: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device)
                                        / self.head_dim))
        freqs = torch.outer(torch.arange(length, dtype=torch.float32, device=device), inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)  # (length, head_dim)
        return angles.cos(), angles.sin()

    def forward(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if length > self.cos_cached.shape[0]:
            self.cos_cached, self.sin_cached = self._tables(length, self.cos_cached.device)
        return self.cos_cached[:length], self.sin_cached[:length]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1), for x: (B, S, heads,
    head_dim), cos/sin: (S, head_dim) fp32 built from cat(freqs, freqs); math in fp32, result
    in x's dtype.

    Written per half: [x1 c - x2 s, x2 c + x1 s] is the same arithmetic (negation is exact,
    so the results are bit-identical) without materialising rotate_half(x) and its negation:
    the step spends a large share of its CPU time in such elementwise passes."""
    half = x.shape[-1] // 2
    c, s = cos[:, None, :half], sin[:, None, :half]  # (S, 1, head_dim/2): the halves are equal
    return _RotateHalves.apply(x.float(), c, s).to(x.dtype)


class _RotateHalves(torch.autograd.Function):
    """[x1 c - x2 s, x2 c + x1 s] with each half written straight into one output, forward and
    backward. Built from torch ops, autograd would concatenate the halves in the forward pass
    and again in the backward pass; with a head_dim of 64 those are copies of 128-byte rows, and
    they took 10% of an attention training step on CPU.

    The arithmetic is the same multiplies and adds, one rounding each, as the plain expression
    and its autograd gradient (dx1 = g1 c + g2 s, dx2 = g2 c - g1 s): bit-identical values and
    gradients. (addcmul would fuse a multiply-add and round differently from the reference.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(c, s)
        return _rotate_into(x, c, s, sign=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        c, s = ctx.saved_tensors
        return _rotate_into(grad, c, s, sign=-1), None, None


def _rotate_into(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, sign: int) -> torch.Tensor:
    """sign 1: [x1 c - x2 s, x2 c + x1 s] (the rotation); sign -1: [x1 c + x2 s, x2 c - x1 s]
    (its transpose, the gradient)."""
    x1, x2 = x.chunk(2, dim=-1)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    o1, o2 = out.chunk(2, dim=-1)
    torch.mul(x1, c, out=o1)
    torch.mul(x2, c, out=o2)
    if sign > 0:
        o1.sub_(x2 * s)
        o2.add_(x1 * s)
    else:
        o1.add_(x2 * s)
        o2.sub_(x1 * s)
    return out


class Attention(nn.Module):
    """Multi-head self-attention; one qkv projection laid out [q heads | k heads | v heads].
    Puzzles attend both ways; a causal one (text) lets position i see positions <= i only."""

    def __init__(self, hidden_size: int, num_heads: int, causal: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.causal = causal
        # Each head is hidden_size // num_heads wide, as in the reference, even when that does
        # not divide: the heads then span fewer than hidden_size channels (o_proj maps them back).
        self.head_dim = hidden_size // num_heads
        self.qkv_proj = CastedLinear(hidden_size, 3 * num_heads * self.head_dim, bias=False)
        self.o_proj = CastedLinear(num_heads * self.head_dim, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        batch, seq, hidden = x.shape
        qkv = self.qkv_proj(x).view(batch, seq, 3 * self.num_heads, self.head_dim)
        q, k, v = qkv.split(self.num_heads, dim=2)  # each (B, S, heads, head_dim)
        if cos_sin is not None:
            q, k = apply_rope(q, *cos_sin), apply_rope(k, *cos_sin)
        # SDPA wants (B, heads, S, head_dim)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=self.causal)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim))


def swiglu_intermediate(width: int, expansion: float) -> int:
    """round(expansion * width * 2/3) rounded up to a multiple of 256."""
    inter = round(expansion * width * 2 / 3)
    return -(-inter // 256) * 256


class SwiGLU(nn.Module):
    """out = down(silu(gate) * up), with one gate_up projection split [gate | up]."""

    def __init__(self, width: int, expansion: float):
        super().__init__()
        inter = swiglu_intermediate(width, expansion)
        self.gate_up_proj = CastedLinear(width, 2 * inter, bias=False)
        self.down_proj = CastedLinear(inter, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if torch.is_grad_enabled() and gate_up.requires_grad:
            hidden = _SiluTimesUp.apply(gate_up)
        else:  # no graph to keep: one buffer, reused in place (same bits as silu(gate) * up)
            gate, up = gate_up.chunk(2, dim=-1)
            hidden = F.silu(gate).mul_(up)
        return self.down_proj(hidden)


class _SiluTimesUp(torch.autograd.Function):
    """silu(gate) * up for gate_up = [gate | up] on the last axis.

    Autograd's graph for `gate, up = chunk(gate_up); silu(gate) * up` ends its backward pass
    with a concatenation of the two halves' gradients, one more full pass over the widest
    activation of the block; here each half's gradient is written straight into one buffer.
    The same kernels in the same order (d up = g silu(gate), d gate = silu_backward(g up,
    gate)) keep values and gradients bit-identical to autograd's."""

    @staticmethod
    def forward(ctx, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        silu_gate = F.silu(gate)
        ctx.save_for_backward(gate_up, silu_gate)
        return silu_gate * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        gate_up, silu_gate = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        grad_gate_up = torch.empty(gate_up.shape, dtype=grad.dtype, device=grad.device)
        grad_gate, grad_up = grad_gate_up.chunk(2, dim=-1)
        torch.mul(grad, silu_gate, out=grad_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        return grad_gate_up


class Block(nn.Module):
    """Post-norm block: token mixing (attention, or an MLP over the sequence axis for MLP-T),
    then a channel SwiGLU, each as h = rms_norm(h + f(h))."""

    def __init__(self, hidden_size: int, num_heads: int, expansion: float, rms_norm_eps: float,
                 mlp_t_width: int | None, causal: bool = False):
        super().__init__()
        self.norm_eps = rms_norm_eps
        if mlp_t_width is not None:
            self.mlp_t = SwiGLU(mlp_t_width, expansion)  # width = S + P
        else:
            self.self_attn = Attention(hidden_size, num_heads, causal)
        self.mlp = SwiGLU(hidden_size, expansion)

    def forward(self, h: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        if hasattr(self, "mlp_t"):
            # MLP over the sequence axis: work in (B, D, S+P) and come back as a view. (A left
            # matmul W @ h avoids the transposes on paper, but torch runs it as a transposed GEMM
            # plus a copy of the (B, 2I, D) result: 1.5x slower at the paper's Sudoku config.)
            h_t = h.transpose(1, 2)
            h = rms_norm_unfused(h_t + self.mlp_t(h_t), self.norm_eps).transpose(1, 2)
        else:
            h = rms_norm(h + self.self_attn(h, cos_sin), self.norm_eps)
        return rms_norm(h + self.mlp(h), self.norm_eps)


class ReasoningModule(nn.Module):
    """A stack of blocks applied as net(h, injection) = blocks(h + injection); TRM applies its one
    stack for both updates, HRM has one per level. injection None is blocks(h) (TRM single-z's
    answer step adds nothing)."""

    def __init__(self, layers: list[Block]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, h: torch.Tensor, injection: torch.Tensor | None,
                cos_sin: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        if injection is not None:
            h = h + injection
        for layer in self.layers:
            h = layer(h, cos_sin)
        return h
