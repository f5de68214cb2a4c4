"""A naive float64 reading of the TRM paper's four comparison architectures as the reference code
computes them (HRM, the transformer baseline, TRM single-z, TRM hier6; docs/architectures.md),
plus TRM itself, for tests only.

Like tests/reference_impl.py it shares no code with trm_ray.model: it reads a plain dict of
tensors (keys as the reference saves them, without the `model.inner.` prefix) and computes
with explicit formulas. Unlike it, every function here is differentiable, so a test can take
autograd gradients through it: each variant's gradient window (which updates run with
gradient) is written out loop by loop, and the ACT wrapper (reset, halting rule, exploration
draws, the extra pass of the Q target) and the loss head are replayed step by step.

Parameters are float64 leaves (`Impl.params`); `Impl.sgd` applies plain SGD to them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

import reference_impl as ref

F64 = torch.float64
IGNORE = -100

# Variant -> the reference's `arch.name` (its checkpoints' all_config.yaml carries it).
FULL_NAMES = {
    "trm": "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
    "hrm": "recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1",
    "transformers_baseline": "recursive_reasoning.transformers_baseline@Model_ACTV2",
    "trm_singlez": "recursive_reasoning.trm_singlez@TinyRecursiveReasoningModel_ACTV1",
    "trm_hier6": "recursive_reasoning.trm_hier6@TinyRecursiveReasoningModel_ACTV1",
}

# The state tensors of each variant's inner carry, and the init buffer each one resets to.
STATE_INITS = {
    "trm": {"z_H": "H_init", "z_L": "L_init"},
    "hrm": {"z_H": "H_init", "z_L": "L_init"},
    "transformers_baseline": {"z_H": "H_init"},
    "trm_singlez": {"z_L": "L_init"},
    "trm_hier6": {"z_H": "H_init", **{f"z_{k}": f"L{k}_init" for k in range(1, 7)}},
}


@dataclass
class BArch:
    """Everything the variants read, spelled out; fields a variant ignores are simply unused."""

    variant: str
    hidden_size: int
    num_heads: int
    expansion: float
    H_cycles: int
    L_cycles: int
    H_layers: int
    L_layers: int
    puzzle_emb_ndim: int
    puzzle_emb_len: int
    pos_encodings: str
    halt_max_steps: int
    halt_exploration_prob: float
    mlp_t: bool = False
    no_ACT_continue: bool = True
    act_enabled: bool = True
    act_inference: bool = False
    compute_target_q: bool = False
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5

    @property
    def prefix_len(self) -> int:
        """P: ceil(ndim / D) for HRM and the transformer (puzzle_emb_len ignored); the TRM rule otherwise."""
        if self.puzzle_emb_ndim == 0:
            return 0
        if self.variant in ("hrm", "transformers_baseline") or self.puzzle_emb_len == 0:
            return -(-self.puzzle_emb_ndim // self.hidden_size)
        return self.puzzle_emb_len

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def uses_mlp_t(self) -> bool:
        return self.mlp_t and self.variant != "transformers_baseline"

    @property
    def stacks(self) -> dict[str, int]:
        """Block stacks and their depths, in parameter creation order."""
        if self.variant == "hrm":
            return {"H_level": self.H_layers, "L_level": self.L_layers}
        if self.variant == "transformers_baseline":
            return {"H_level": self.H_layers}
        return {"L_level": self.L_layers}

    @property
    def init_buffers(self) -> list[str]:
        return list(STATE_INITS[self.variant].values())


def swiglu_width(width: int, expansion: float) -> int:
    inter = round(expansion * width * 2 / 3)
    return ((inter + 255) // 256) * 256


def expected_shapes(arch: BArch, seq_len: int, vocab: int, num_ids: int) -> dict[str, tuple[int, ...]]:
    """Every saved tensor (key without `model.inner.`) and its shape, in creation order."""
    D, L = arch.hidden_size, seq_len + arch.prefix_len
    hd, heads = arch.head_dim, arch.num_heads
    shapes = {"embed_tokens.embedding_weight": (vocab, D), "lm_head.weight": (vocab, D),
              "q_head.weight": (2, D), "q_head.bias": (2,)}
    if arch.puzzle_emb_ndim > 0:
        shapes["puzzle_emb.weights"] = (num_ids, arch.puzzle_emb_ndim)
    if arch.pos_encodings == "learned":
        shapes["embed_pos.embedding_weight"] = (L, D)
    inter, inter_t = swiglu_width(D, arch.expansion), swiglu_width(L, arch.expansion)
    for stack, depth in arch.stacks.items():
        for i in range(depth):
            pre = f"{stack}.layers.{i}."
            if arch.uses_mlp_t:
                shapes[pre + "mlp_t.gate_up_proj.weight"] = (2 * inter_t, L)
                shapes[pre + "mlp_t.down_proj.weight"] = (L, inter_t)
            else:
                shapes[pre + "self_attn.qkv_proj.weight"] = (3 * heads * hd, D)
                shapes[pre + "self_attn.o_proj.weight"] = (D, heads * hd)
            shapes[pre + "mlp.gate_up_proj.weight"] = (2 * inter, D)
            shapes[pre + "mlp.down_proj.weight"] = (D, inter)
    for name in arch.init_buffers:
        shapes[name] = (D,)
    return shapes


def random_state(arch: BArch, seq_len: int, vocab: int, num_ids: int, seed: int) -> dict[str, torch.Tensor]:
    """A random fp32 state dict (keys `model.inner.*`) in which every tensor matters: no zero
    puzzle table, no constant Q head. Linear weights get std 1/sqrt(fan_in), embeddings
    1/sqrt(D) (x = sqrt(D) * e is then of unit scale), init buffers and the Q bias std 1."""
    g = torch.Generator().manual_seed(seed)
    D = arch.hidden_size
    state = {}
    for key, shape in expected_shapes(arch, seq_len, vocab, num_ids).items():
        if len(shape) == 1:
            std = 1.0
        elif key.endswith("embedding_weight") or key == "puzzle_emb.weights":
            std = 1 / math.sqrt(D)
        else:
            std = 1 / math.sqrt(shape[1])
        state["model.inner." + key] = torch.randn(shape, generator=g) * std
    return state


# --------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------
def rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x (B, L, H, hd): pair i with i + hd/2, rotate by angle p * theta^(-2i/hd)."""
    length, hd = x.shape[1], x.shape[-1]
    half = hd // 2
    angles = torch.tensor([[p * theta ** (-2.0 * i / hd) for i in range(half)] for p in range(length)], dtype=F64)
    c, s = torch.cos(angles)[None, :, None, :], torch.sin(angles)[None, :, None, :]
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * c - b * s, b * c + a * s], dim=-1)


def attention(h, w_qkv, w_o, heads, theta):
    """head_dim = floor(D / heads): the projections need not cover all of D."""
    B, L, D = h.shape
    hd = D // heads
    qkv = (h @ w_qkv.T).reshape(B, L, 3, heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if theta is not None:
        q, k = rope(q, theta), rope(k, theta)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    probs = torch.exp(scores - scores.max(-1, keepdim=True).values)
    probs = probs / probs.sum(-1, keepdim=True)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, L, heads * hd) @ w_o.T


class Impl:
    """One variant: float64 parameter leaves, the inner pass, the ACT step, the loss head."""

    def __init__(self, arch: BArch, state: dict[str, torch.Tensor]):
        self.arch = arch
        self.params = {k.removeprefix("_orig_mod.").removeprefix("model.inner."): v.detach().to(F64).clone()
                       .requires_grad_(True) for k, v in state.items()}

    def w(self, key):
        return self.params[key]

    # -- blocks --------------------------------------------------------------------------
    def block(self, stack, i, h):
        a, pre, eps = self.arch, f"{stack}.layers.{i}.", self.arch.rms_norm_eps
        if a.uses_mlp_t:
            t = h.transpose(1, 2)
            t = ref.rms_norm(t + ref.swiglu(t, self.w(pre + "mlp_t.gate_up_proj.weight"),
                                            self.w(pre + "mlp_t.down_proj.weight")), eps)
            h = t.transpose(1, 2)
        else:
            theta = a.rope_theta if a.pos_encodings == "rope" else None
            h = ref.rms_norm(h + attention(h, self.w(pre + "self_attn.qkv_proj.weight"),
                                           self.w(pre + "self_attn.o_proj.weight"), a.num_heads, theta), eps)
        return ref.rms_norm(h + ref.swiglu(h, self.w(pre + "mlp.gate_up_proj.weight"),
                                           self.w(pre + "mlp.down_proj.weight")), eps)

    def blocks(self, stack, h):
        for i in range(self.arch.stacks[stack]):
            h = self.block(stack, i, h)
        return h

    def embed(self, inputs, puzzle_rows):
        a, D = self.arch, self.arch.hidden_size
        e = self.w("embed_tokens.embedding_weight")[inputs.long()]
        P = a.prefix_len
        if P:
            pad = torch.zeros(puzzle_rows.shape[0], P * D - puzzle_rows.shape[1], dtype=F64)
            e = torch.cat([torch.cat([puzzle_rows, pad], dim=1).view(-1, P, D), e], dim=1)
        if a.pos_encodings == "learned":
            e = 0.707106781 * (e + self.w("embed_pos.embedding_weight"))
        return math.sqrt(D) * e

    # -- one inner pass with each variant's recursion and gradient window ----------------
    def inner(self, states: dict, inputs, puzzle_rows):
        """Returns (new states detached, logits (B, S, V), q_halt, q_continue, graph states).
        The updates outside the variant's gradient window run under no_grad."""
        a = self.arch
        x = self.embed(inputs, puzzle_rows)
        T, n, v = a.H_cycles, a.L_cycles, a.variant
        s = dict(states)
        if v in ("trm", "hrm"):
            H_stack = "H_level" if v == "hrm" else "L_level"

            def L_update(s):
                s["z_L"] = self.blocks("L_level", s["z_L"] + (s["z_H"] + x))

            def H_update(s):
                s["z_H"] = self.blocks(H_stack, s["z_H"] + s["z_L"])

            updates = [(c, l) for c in range(T) for l in range(n + 1)]  # l == n: the H update
            # HRM: only the last L and the last H update with gradient; TRM: the whole last cycle.
            grad_from = len(updates) - 2 if v == "hrm" else (T - 1) * (n + 1)
            for k, (c, l) in enumerate(updates):
                with torch.set_grad_enabled(k >= grad_from and torch.is_grad_enabled()):
                    (H_update if l == n else L_update)(s)
            out = s["z_H"]
        elif v == "transformers_baseline":
            s["z_H"] = self.blocks("H_level", s["z_H"] + x)
            out = s["z_H"]
        elif v == "trm_singlez":
            for c in range(T):
                with torch.set_grad_enabled(c == T - 1 and torch.is_grad_enabled()):
                    for _ in range(n):
                        s["z_L"] = self.blocks("L_level", s["z_L"] + x)
                    s["z_L"] = self.blocks("L_level", s["z_L"])
            out = s["z_L"]
        elif v == "trm_hier6":
            assert n <= 6

            def slot_sum(s):
                total = s["z_1"]
                for k in range(2, 7):
                    total = total + s[f"z_{k}"]
                return total

            for c in range(T):
                with torch.set_grad_enabled(c == T - 1 and torch.is_grad_enabled()):
                    for l in range(1, n + 1):
                        s[f"z_{l}"] = self.blocks("L_level", slot_sum(s) + (s["z_H"] + x))
                    s["z_H"] = self.blocks("L_level", s["z_H"] + slot_sum(s))
            out = s["z_H"]
        else:
            raise ValueError(v)
        logits = (out @ self.w("lm_head.weight").T)[:, a.prefix_len:]
        q = out[:, 0] @ self.w("q_head.weight").T + self.w("q_head.bias")
        return {k: t.detach() for k, t in s.items()}, logits, q[:, 0], q[:, 1]

    # -- ACT -----------------------------------------------------------------------------
    def init_states(self, batch_size, length):
        return {name: self.w(buf).detach().expand(batch_size, length, -1).clone()
                for name, buf in STATE_INITS[self.arch.variant].items()}

    def initial_carry(self, batch):
        B, S = batch["inputs"].shape
        return ActCarry(states=self.init_states(B, S + self.arch.prefix_len),
                        steps=torch.zeros(B, dtype=torch.int64), halted=torch.ones(B, dtype=torch.bool),
                        data={k: torch.zeros_like(t) for k, t in batch.items()})

    def act_step(self, carry: "ActCarry", batch, training: bool, generator=None):
        """One ACT step. Returns (carry, outputs, puzzle_rows leaf or None)."""
        a, v, N = self.arch, self.arch.variant, self.arch.halt_max_steps
        h = carry.halted
        B, L = batch["inputs"].shape[0], batch["inputs"].shape[1] + a.prefix_len
        fresh = self.init_states(B, L)
        states = {k: torch.where(h[:, None, None], fresh[k], t) for k, t in carry.states.items()}
        steps = torch.where(h, 0, carry.steps)
        data = {k: torch.where(h.view((-1,) + (1,) * (t.ndim - 1)), batch[k], t) for k, t in carry.data.items()}
        rows = None
        if a.puzzle_emb_ndim > 0:
            rows = self.w("puzzle_emb.weights").detach()[data["puzzle_identifiers"].long()].clone().requires_grad_(True)
        new, logits, q_halt, q_cont = self.inner(states, data["inputs"], rows)
        out = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_cont}
        steps = steps + 1
        last = steps >= N
        halted = last.clone()
        qh, qc = q_halt.detach(), q_cont.detach()
        if v == "transformers_baseline":
            adaptive = N > 1 and ((training and a.act_enabled) or (not training and a.act_inference))
            rule = "compare" if adaptive else None
            explore = adaptive and training
            target = adaptive and training and a.compute_target_q
            if adaptive and not training:
                out["actual_steps"] = steps.to(torch.float32)
        elif v == "hrm":
            rule = "compare" if training and N > 1 else None
            explore = target = training and N > 1
        else:
            rule = ("positive" if a.no_ACT_continue else "compare") if training and N > 1 else None
            explore = training and N > 1
            target = explore and not a.no_ACT_continue
        if rule == "positive":
            halted = halted | (qh > 0)
        elif rule == "compare":
            halted = halted | (qh > qc)
        if explore:
            draw = torch.rand(B, generator=generator) < a.halt_exploration_prob
            min_halt = torch.randint(2, N + 1, (B,), generator=generator)
            halted = halted & (steps >= draw.long() * min_halt)
        if target:
            with torch.no_grad():
                _, _, nqh, nqc = self.inner(new, data["inputs"], rows.detach() if rows is not None else None)
            out["target_q_continue"] = torch.sigmoid(torch.where(last, nqh, torch.maximum(nqh, nqc)))
        return ActCarry(new, steps, halted, data), out, rows

    # -- loss head -----------------------------------------------------------------------
    @staticmethod
    def loss(carry: "ActCarry", out: dict, loss_type: str = "stablemax_cross_entropy"):
        """(loss, parts) of the loss head, float64 and differentiable."""
        labels = carry.data["labels"].long()
        logits = out["logits"]
        mask = labels != IGNORE
        count = mask.sum(-1)
        if loss_type == "stablemax_cross_entropy":
            neg, pos = logits.clamp(max=0), logits.clamp(min=0)
            s = 1 / (1 - neg) + pos  # 1/(1-x) below zero, x+1 from zero on
            logp = torch.log(s / s.sum(-1, keepdim=True))
        else:
            logp = logits - torch.logsumexp(logits, -1, keepdim=True)
        picked = torch.gather(logp, -1, torch.where(mask, labels, 0)[..., None])[..., 0]
        lm = (-(picked * mask) / count.clamp(min=1)[:, None]).sum()
        correct = mask & (logits.detach().argmax(-1) == labels)
        seq_correct = correct.sum(-1) == count

        def bce(x, y):
            return (x.clamp(min=0) - x * y + torch.log1p(torch.exp(-x.abs()))).sum()

        parts = {"lm_loss": lm, "q_halt_loss": bce(out["q_halt_logits"], seq_correct.to(F64))}
        total = parts["q_halt_loss"]
        if "target_q_continue" in out:
            parts["q_continue_loss"] = bce(out["q_continue_logits"], out["target_q_continue"])
            total = total + parts["q_continue_loss"]
        return lm + 0.5 * total, parts

    def sgd(self, lr: float) -> None:
        for k, p in self.params.items():
            if p.grad is not None:
                self.params[k] = (p - lr * p.grad).detach().requires_grad_(True)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def predict(self, batch, steps: int | None = None):
        """Evaluation rollout: per-step outputs of `steps` (default N) ACT steps, no early halting."""
        carry = self.initial_carry(batch)
        history = []
        with torch.no_grad():
            for _ in range(steps or self.arch.halt_max_steps):
                carry, out, _ = self.act_step(carry, batch, training=False)
                history.append((carry, out))
        return history


@dataclass
class ActCarry:
    states: dict
    steps: torch.Tensor
    halted: torch.Tensor
    data: dict = field(default_factory=dict)
