"""Tiny Recursive Model: the recursion and the ACT wrapper (docs/paper.md maps them to the paper).

Paper symbols: answer y = z_H, latent z = z_L, T = H_cycles, n = L_cycles,
N_sup = halt_max_steps. One call of `ACTModel.act_step` is one deep-supervision step for the
whole batch; the carry persists across calls and a halted row picks up a fresh example.

`RecursiveNet` holds what every architecture shares (embeddings, heads, the carry and its
reset, the output heads); a subclass adds its block stacks, its carried states and its
recursion. TRM is `TRMNet` here; the paper's baselines are in trm_ray/model/baselines.py.
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

# The inner carry: each carried state by name (TRM: z_H = y, z_L = z), (B, S+P, D) in forward_dtype.
InnerCarry = dict[str, torch.Tensor]


@dataclass
class ACTCarry:
    inner: InnerCarry
    steps: torch.Tensor  # (B,) int32
    halted: torch.Tensor  # (B,) bool
    current_data: dict[str, torch.Tensor]  # the example each row works on


class RecursiveNet(nn.Module):
    """Shared parts of every architecture (reference: `model.inner`).

    Subclasses set STATES, (carried state, its init buffer) in buffer-creation order, and
    OUTPUT_STATE, the state the heads read; they build their stacks in `build_stacks` and
    define `recursion`. Creation order is the reference's (its RNG draws): embeddings, heads,
    puzzle table, learned positions, the stacks, the init buffers."""

    STATES: tuple[tuple[str, str], ...] = ()
    OUTPUT_STATE = "z_H"

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
        self.total_len = shape.seq_len + self.puzzle_emb_len  # S + P
        if arch.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(arch.head_dim, self.total_len, arch.rope_theta)
        elif arch.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(self.total_len, D, init_std=embed_std, cast_to=self.forward_dtype)
        self.build_stacks()
        for _, buffer in self.STATES:
            self.register_buffer(buffer, trunc_normal_(torch.empty(D, dtype=self.forward_dtype), std=1.0))
        with torch.no_grad():
            # Start the halting head at "never halt": sigmoid(-5) ~ 0.007.
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)

    def stack(self, num_layers: int, mlp_t: bool | None = None) -> ReasoningModule:
        """num_layers post-norm blocks (attention, or MLP-T over the S+P positions)."""
        arch = self.arch
        mlp_t = arch.mlp_t if mlp_t is None else mlp_t
        return ReasoningModule([
            Block(arch.hidden_size, arch.num_heads, arch.expansion, arch.rms_norm_eps, self.total_len if mlp_t else None,
                  causal=arch.causal)
            for _ in range(num_layers)
        ])

    def build_stacks(self) -> None:
        raise NotImplementedError

    def recursion(self, states: InnerCarry, x: torch.Tensor, cos_sin) -> InnerCarry:
        """One deep-supervision step's recursion: the new states (with the gradient the variant keeps)."""
        raise NotImplementedError

    # -- what the ACT wrapper asks of a variant ---------------------------------------------
    def halts_on_continue(self) -> bool:
        """Halt when q_halt > q_continue (else when q_halt > 0)."""
        return not self.arch.no_ACT_continue

    def adaptive(self, training: bool) -> bool:
        """Whether learned halting (and, in training, exploration) applies."""
        return training and self.arch.halt_max_steps > 1

    def wants_target_q(self) -> bool:
        """Whether an adaptive training step runs the extra pass that gives q_continue its target."""
        return not self.arch.no_ACT_continue

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
        return {state: torch.zeros(shape, dtype=self.forward_dtype, device=device) for state, _ in self.STATES}

    def reset_carry(self, reset: torch.Tensor, carry: InnerCarry) -> InnerCarry:
        reset = reset.view(-1, 1, 1)
        return {state: torch.where(reset, getattr(self, buffer), carry[state]) for state, buffer in self.STATES}

    # -- one deep-supervision step ----------------------------------------------------------
    def forward(self, carry: InnerCarry, batch: dict[str, torch.Tensor]):
        """(new carry detached, logits (B, S, V), (q_halt, q_continue) fp32 (B,))."""
        x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])  # (B, S+P, D)
        cos_sin = self.rotary_emb(x.shape[1]) if self.arch.pos_encodings == "rope" else None
        states = self.recursion(carry, x, cos_sin)
        out = states[self.OUTPUT_STATE]
        logits = self.lm_head(out)[:, self.puzzle_emb_len:]  # (B, S, V)
        # The halting head reads the first position, which sees the whole sequence, except under
        # a causal mask: there only the last position does.
        q_logits = self.q_head(out[:, -1 if self.arch.causal else 0]).to(torch.float32)  # (B, 2)
        return {k: v.detach() for k, v in states.items()}, logits, (q_logits[..., 0], q_logits[..., 1])


class DeepRecursionNet(RecursiveNet):
    """The TRM family's deep recursion: T-1 cycles without gradient, the last one with."""

    def cycle(self, states: InnerCarry, x: torch.Tensor, cos_sin) -> InnerCarry:
        raise NotImplementedError

    def recursion(self, states: InnerCarry, x: torch.Tensor, cos_sin) -> InnerCarry:
        with torch.no_grad():
            for _ in range(self.arch.H_cycles - 1):
                states = self.cycle(states, x, cos_sin)
        return self.cycle(states, x, cos_sin)


class TRMNet(DeepRecursionNet):
    """TRM: one shared network for the latent and the answer updates."""

    STATES = (("z_H", "H_init"), ("z_L", "L_init"))

    def build_stacks(self) -> None:
        self.L_level = self.stack(self.arch.L_layers)

    def cycle(self, states: InnerCarry, x: torch.Tensor, cos_sin) -> InnerCarry:
        """n updates of the latent z from (x, y, z), then one update of the answer y from z."""
        z_H, z_L = states["z_H"], states["z_L"]
        for _ in range(self.arch.L_cycles):
            z_L = self.L_level(z_L, z_H + x, cos_sin)
        z_H = self.L_level(z_H, z_L, cos_sin)
        return {"z_H": z_H, "z_L": z_L}


class ACTModel(nn.Module):
    """ACT wrapper: deep supervision with learned halting (reference: `model`), around any
    RecursiveNet; the variant says how it halts and whether it trains q_continue."""

    def __init__(self, net: RecursiveNet):
        super().__init__()
        self.arch = net.arch
        self.inner = net
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
        # 1. halted rows restart from the init states on the fresh batch row
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
            # 3-4. learned halting; exploration and the q_continue target in training only
            if self.inner.adaptive(self.training):
                if self.inner.halts_on_continue():
                    halted = halted | (q_halt > q_continue)
                else:
                    halted = halted | (q_halt > 0)
                if not self.training:
                    outputs["actual_steps"] = steps.to(torch.float32)
                else:
                    explore = torch.rand(q_halt.shape, device=q_halt.device, generator=self.generator) \
                        < self.arch.halt_exploration_prob
                    min_halt = torch.randint(2, self.arch.halt_max_steps + 1, steps.shape, device=steps.device,
                                             generator=self.generator, dtype=steps.dtype)
                    halted = halted & (steps >= explore * min_halt)
                    if self.inner.wants_target_q():
                        # Q-learning target from one more pass on the new carry. (The reference's
                        # TRM family unpacks this call's output wrongly and crashes; this is what
                        # it means, and what its HRM does.)
                        _, _, (next_q_halt, next_q_continue) = self.inner(inner, data)
                        outputs["target_q_continue"] = torch.sigmoid(
                            torch.where(is_last_step, next_q_halt, torch.maximum(next_q_halt, next_q_continue))
                        )
        return ACTCarry(inner, steps, halted, data), outputs

    forward = act_step
