"""The TRM paper's comparison architectures, each as its recursion over the shared parts of
trm_ray/model/trm.py (embeddings, heads, carry, ACT wrapper, loss head):

- HRM: two stacks, L and H, with the one-step gradient (last L and last H update only);
- the transformer baseline: one stack applied once per ACT step, no inner cycles;
- TRM single-z: TRM with the answer state removed (one latent, read by the heads);
- TRM hier6: TRM with the latent split into six slots whose sum stands where z_L was read.

Semantics and the reference's defects (and what trm-ray does instead) are written out in
docs/architectures.md.
"""

from __future__ import annotations

import functools
import operator

import torch

from trm_ray.config import HIER6_SLOTS
from trm_ray.model.trm import DeepRecursionNet, InnerCarry, RecursiveNet


class HRMNet(RecursiveNet):
    """Hierarchical Reasoning Model: z_L updated n times per cycle by the L stack with z_H + x
    injected, then z_H by its own H stack from z_L; T cycles; heads read z_H."""

    STATES = (("z_H", "H_init"), ("z_L", "L_init"))

    def build_stacks(self) -> None:
        self.H_level = self.stack(self.arch.H_layers)
        self.L_level = self.stack(self.arch.L_layers)

    def halts_on_continue(self) -> bool:
        return True  # HRM has no no_ACT_continue switch

    def wants_target_q(self) -> bool:
        return True

    def recursion(self, states: InnerCarry, x: torch.Tensor, cos_sin) -> InnerCarry:
        T, n = self.arch.H_cycles, self.arch.L_cycles
        z_H, z_L = states["z_H"], states["z_L"]
        # Every update but the last L and the last H one runs without gradient; the values are
        # exactly those of the plain T x (n L updates, 1 H update) loop.
        with torch.no_grad():
            for cycle in range(T):
                last_cycle = cycle == T - 1
                for _ in range(n - 1 if last_cycle else n):
                    z_L = self.L_level(z_L, z_H + x, cos_sin)
                if not last_cycle:
                    z_H = self.H_level(z_H, z_L, cos_sin)
        z_L = self.L_level(z_L, z_H + x, cos_sin)
        z_H = self.H_level(z_H, z_L, cos_sin)
        return {"z_H": z_H, "z_L": z_L}


class TransformerNet(RecursiveNet):
    """The transformer baseline: z_H = blocks_H(z_H + x) once per ACT step, with gradient;
    H_cycles and L_* have no effect. Deep supervision and the carry are kept."""

    STATES = (("z_H", "H_init"),)

    def build_stacks(self) -> None:
        # attention blocks always: the reference's config for it has no mlp_t and ignores one given
        self.H_level = self.stack(self.arch.H_layers, mlp_t=False)

    def halts_on_continue(self) -> bool:
        return True

    def adaptive(self, training: bool) -> bool:
        arch = self.arch
        return arch.halt_max_steps > 1 and (arch.act_enabled if training else arch.act_inference)

    def wants_target_q(self) -> bool:
        # The reference's loss head never asks for the target, so q_continue is trained by
        # weight decay alone, yet decides halting; compute_target_q turns the target on.
        return self.arch.compute_target_q

    def recursion(self, states: InnerCarry, x: torch.Tensor, cos_sin) -> InnerCarry:
        return {"z_H": self.H_level(states["z_H"], x, cos_sin)}


class SingleZNet(DeepRecursionNet):
    """TRM with one latent: n updates z = blocks(z + x), then z = blocks(z) with nothing added;
    the heads read z."""

    STATES = (("z_L", "L_init"),)
    OUTPUT_STATE = "z_L"

    def build_stacks(self) -> None:
        self.L_level = self.stack(self.arch.L_layers)

    def cycle(self, states: InnerCarry, x: torch.Tensor, cos_sin) -> InnerCarry:
        z_L = states["z_L"]
        for _ in range(self.arch.L_cycles):
            z_L = self.L_level(z_L, x, cos_sin)
        return {"z_L": self.L_level(z_L, None, cos_sin)}


LATENT_SLOTS = tuple(f"z_{k}" for k in range(1, HIER6_SLOTS + 1))


class Hier6Net(DeepRecursionNet):
    """TRM with six latent slots: latent update l reads the left-to-right sum of all six slots
    and overwrites slot l only; the answer update reads the sum. Slots past L_cycles keep their
    init value for the whole episode and still enter every sum."""

    STATES = (("z_H", "H_init"),) + tuple((slot, f"L{k}_init") for k, slot in enumerate(LATENT_SLOTS, 1))

    def build_stacks(self) -> None:
        self.L_level = self.stack(self.arch.L_layers)

    def cycle(self, states: InnerCarry, x: torch.Tensor, cos_sin) -> InnerCarry:
        z_H = states["z_H"]
        slots = [states[slot] for slot in LATENT_SLOTS]
        for l in range(self.arch.L_cycles):
            # reduce adds left to right, ((z_1 + z_2) + z_3) + ..., the order bf16 results depend on
            slots[l] = self.L_level(functools.reduce(operator.add, slots), z_H + x, cos_sin)
        z_H = self.L_level(z_H, functools.reduce(operator.add, slots), cos_sin)
        return {"z_H": z_H, **dict(zip(LATENT_SLOTS, slots))}
