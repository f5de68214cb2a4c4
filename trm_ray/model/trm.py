"""Tiny Recursive Model: the recursion (TRM_SPEC 3) and the ACT wrapper (TRM_SPEC 4).

Paper symbols: answer y = z_H, latent z = z_L, T = H_cycles, n = L_cycles,
N_sup = halt_max_steps. One call of `TRM.act_step` is one deep-supervision step for the
whole batch; the carry persists across calls and a halted row picks up a fresh example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from trm_ray.config import ArchConfig, DataShape
from trm_ray.model.layers import (
    Block,
    CastedEmbedding,
    CastedLinear,
    ReasoningModule,
    RotaryEmbedding,
    trunc_normal_,
)
from trm_ray.model.sparse_embedding import CastedSparseEmbedding

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BATCH_KEYS = ("inputs", "labels", "puzzle_identifiers")


@dataclass
class InnerCarry:
    z_H: torch.Tensor  # y: (B, S+P, D)
    z_L: torch.Tensor  # z: (B, S+P, D)


@dataclass
class ACTCarry:
    inner: InnerCarry
    steps: torch.Tensor  # (B,) int32
    halted: torch.Tensor  # (B,) bool
    current_data: dict[str, torch.Tensor]  # the example each row works on


class TRMNet(nn.Module):
    """The recursion over one shared reasoning network (reference: `model.inner`)."""

    def __init__(self, arch: ArchConfig, shape: DataShape, batch_size: int):
        super().__init__()
        self.arch = arch
        self.shape = shape
        self.forward_dtype = DTYPES[arch.forward_dtype]
        D = arch.hidden_size
        self.puzzle_emb_len = arch.puzzle_prefix_len  # P
        self.embed_scale = math.sqrt(D)
        embed_std = 1.0 / self.embed_scale

        self.embed_tokens = CastedEmbedding(shape.vocab_size, D, init_std=embed_std, cast_to=self.forward_dtype)
        self.lm_head = CastedLinear(D, shape.vocab_size, bias=False)
        self.q_head = CastedLinear(D, 2, bias=True)
        if arch.puzzle_emb_dim > 0:
            self.puzzle_emb = CastedSparseEmbedding(
                shape.num_puzzle_identifiers, arch.puzzle_emb_dim, batch_size=batch_size, init_std=0.0,
                cast_to=self.forward_dtype,
            )
        total_len = shape.seq_len + self.puzzle_emb_len
        if arch.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(D // arch.num_heads, total_len, arch.rope_theta)
        elif arch.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(total_len, D, init_std=embed_std, cast_to=self.forward_dtype)
        self.L_level = ReasoningModule([
            Block(D, arch.num_heads, arch.expansion, arch.rms_norm_eps, total_len if arch.mlp_t else None)
            for _ in range(arch.L_layers)
        ])
        self.register_buffer("H_init", trunc_normal_(torch.empty(D, dtype=self.forward_dtype), std=1.0))
        self.register_buffer("L_init", trunc_normal_(torch.empty(D, dtype=self.forward_dtype), std=1.0))
        with torch.no_grad():
            # Start the halting head at "never halt": sigmoid(-5) ~ 0.007.
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)

    # -- input ----------------------------------------------------------------------------
    def input_embeddings(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        """x = sqrt(D) * [puzzle prefix (P, D) ; token embeddings (S, D)] (+ learned positions)."""
        e = self.embed_tokens(inputs.to(torch.int32))
        if self.puzzle_emb_len:
            row = self.puzzle_emb(puzzle_identifiers)  # (B, puzzle_emb_ndim)
            pad = self.puzzle_emb_len * self.arch.hidden_size - row.shape[-1]
            if pad > 0:
                row = nn.functional.pad(row, (0, pad))
            e = torch.cat((row.view(-1, self.puzzle_emb_len, self.arch.hidden_size), e), dim=-2)
        if self.arch.pos_encodings == "learned":
            e = 0.707106781 * (e + self.embed_pos.embedding_weight.to(self.forward_dtype))
        return self.embed_scale * e

    # -- carry ----------------------------------------------------------------------------
    def empty_carry(self, batch_size: int, seq_len: int, device: torch.device) -> InnerCarry:
        shape = (batch_size, seq_len + self.puzzle_emb_len, self.arch.hidden_size)
        return InnerCarry(torch.zeros(shape, dtype=self.forward_dtype, device=device),
                          torch.zeros(shape, dtype=self.forward_dtype, device=device))

    def reset_carry(self, reset: torch.Tensor, carry: InnerCarry) -> InnerCarry:
        reset = reset.view(-1, 1, 1)
        return InnerCarry(torch.where(reset, self.H_init, carry.z_H), torch.where(reset, self.L_init, carry.z_L))

    # -- the algorithm --------------------------------------------------------------------
    def latent_recursion(self, z_H, z_L, x, cos_sin):
        """n updates of the latent z from (x, y, z), then one update of the answer y from z."""
        for _ in range(self.arch.L_cycles):
            z_L = self.L_level(z_L, z_H + x, cos_sin)
        z_H = self.L_level(z_H, z_L, cos_sin)
        return z_H, z_L

    def deep_recursion(self, carry: InnerCarry, batch: dict[str, torch.Tensor]):
        """T-1 latent recursions without gradient, one with; returns (new carry, logits, q logits)."""
        x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])  # (B, S+P, D)
        cos_sin = self.rotary_emb(x.shape[1]) if self.arch.pos_encodings == "rope" else None
        z_H, z_L = carry.z_H, carry.z_L
        with torch.no_grad():
            for _ in range(self.arch.H_cycles - 1):
                z_H, z_L = self.latent_recursion(z_H, z_L, x, cos_sin)
        z_H, z_L = self.latent_recursion(z_H, z_L, x, cos_sin)
        logits = self.lm_head(z_H)[:, self.puzzle_emb_len:]  # (B, S, V)
        q_logits = self.q_head(z_H[:, 0]).to(torch.float32)  # (B, 2)
        return InnerCarry(z_H.detach(), z_L.detach()), logits, (q_logits[..., 0], q_logits[..., 1])

    forward = deep_recursion


class TRM(nn.Module):
    """ACT wrapper: deep supervision with learned halting (reference: `model`)."""

    def __init__(self, arch: ArchConfig, shape: DataShape, batch_size: int):
        super().__init__()
        self.arch = arch
        self.inner = TRMNet(arch, shape, batch_size)
        # Exploration draws come from this generator when set (the trainer seeds it with
        # seed + rank), else from torch's global RNG.
        self.generator: torch.Generator | None = None

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> ACTCarry:
        """Every row halted, so the first act_step loads the whole batch."""
        size, device = batch["inputs"].shape[0], batch["inputs"].device
        return ACTCarry(
            inner=self.inner.empty_carry(size, batch["inputs"].shape[1], device),
            steps=torch.zeros(size, dtype=torch.int32, device=device),
            halted=torch.ones(size, dtype=torch.bool, device=device),
            current_data={k: torch.zeros_like(v) for k, v in batch.items()},
        )

    def act_step(self, carry: ACTCarry, batch: dict[str, torch.Tensor]) -> tuple[ACTCarry, dict[str, torch.Tensor]]:
        # 1. halted rows restart from (H_init, L_init) on the fresh batch row
        inner = self.inner.reset_carry(carry.halted, carry.inner)
        steps = torch.where(carry.halted, 0, carry.steps)
        data = {
            k: torch.where(carry.halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v)
            for k, v in carry.current_data.items()
        }
        # 2. one deep recursion
        inner, logits, (q_halt, q_continue) = self.inner(inner, data)
        outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}

        with torch.no_grad():
            steps = steps + 1
            is_last_step = steps >= self.arch.halt_max_steps
            halted = is_last_step
            # 3-4. learned halting and exploration, training only
            if self.training and self.arch.halt_max_steps > 1:
                if self.arch.no_ACT_continue:
                    halted = halted | (q_halt > 0)
                else:
                    halted = halted | (q_halt > q_continue)
                explore = torch.rand(q_halt.shape, device=q_halt.device, generator=self.generator) \
                    < self.arch.halt_exploration_prob
                min_halt = torch.randint(2, self.arch.halt_max_steps + 1, steps.shape, device=steps.device,
                                         generator=self.generator, dtype=steps.dtype)
                halted = halted & (steps >= explore * min_halt)
                if not self.arch.no_ACT_continue:
                    # Q-learning target from one more pass on the new carry. (The reference
                    # unpacks this call's output wrongly and crashes; this is what it means.)
                    _, _, (next_q_halt, next_q_continue) = self.inner(inner, data)
                    outputs["target_q_continue"] = torch.sigmoid(
                        torch.where(is_last_step, next_q_halt, torch.maximum(next_q_halt, next_q_continue))
                    )
        return ACTCarry(inner, steps, halted, data), outputs

    forward = act_step
