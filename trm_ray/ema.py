"""Exponential moving average of the trainable parameters (docs/paper.md#ema; `ema`, `ema_rate`).

    ema = EMA(model, rate=cfg.ema_rate)
    ...; optimizer.step(); ema.update(model)
    with ema.swapped(model):          # evaluate with the averaged weights, then restore
        evaluate(model)
    averaged = ema.model_copy(model)  # or a separate copy, e.g. for a checkpoint

Like the reference, only parameters with requires_grad are averaged: buffers (the puzzle
table, H_init/L_init) always come from the live model. Shadow keys are the parameter names of
the model with DDP (`module.`) and torch.compile (`_orig_mod.`) wrappers removed, e.g.
`model.inner.L_level.layers.0.mlp.down_proj.weight` for the loss head.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator

import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model


class EMA:
    """fp32 shadow of the trainable parameters: shadow = (1 - mu) * param + mu * shadow."""

    def __init__(self, model: torch.nn.Module, rate: float = 0.999):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate (ema_rate) must be in [0, 1], got {rate}")
        self.rate = float(rate)
        self.shadow: dict[str, torch.Tensor] = {}
        self.reset(model)

    @torch.no_grad()
    def reset(self, model: torch.nn.Module) -> None:
        """The average starts again at the model's current parameters (e.g. weights just loaded)."""
        self.shadow = {name: p.detach().to(torch.float32, copy=True) for name, p in self._trainable(model)}

    @staticmethod
    def _trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
        return [(name, p) for name, p in unwrap(model).named_parameters() if p.requires_grad]

    def _pairs(self, model: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.nn.Parameter]]:
        named = self._trainable(model)
        names = [name for name, _ in named]
        if set(names) != set(self.shadow):
            missing = sorted(set(self.shadow) - set(names))[:5]
            extra = sorted(set(names) - set(self.shadow))[:5]
            raise ValueError(
                f"model's trainable parameters differ from the EMA's: missing {missing}, unexpected {extra}; "
                "build the EMA over the same model (after freezing what stays frozen)"
            )
        return [self.shadow[name] for name in names], [p for _, p in named]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold the model's current parameters into the shadow; call after each optimizer step."""
        shadows, params = self._pairs(model)
        params32 = [p.detach().to(device=s.device, dtype=torch.float32) for s, p in zip(shadows, params)]
        # lerp(shadow, param, 1 - mu) = shadow + (1 - mu) * (param - shadow)
        torch._foreach_lerp_(shadows, params32, 1.0 - self.rate)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Overwrite the model's trainable parameters with the shadow (cast to their dtype)."""
        shadows, params = self._pairs(model)
        for s, p in zip(shadows, params):
            p.copy_(s)

    def model_copy(self, model: torch.nn.Module) -> torch.nn.Module:
        """A deep copy of the (unwrapped) model carrying the EMA weights and the live buffers."""
        averaged = copy.deepcopy(unwrap(model))
        self.copy_to(averaged)
        return averaged

    @contextlib.contextmanager
    def swapped(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Inside the block the model holds the EMA weights; its own come back afterwards."""
        _, params = self._pairs(model)
        saved = [p.detach().clone() for p in params]
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)

    def state_dict(self) -> dict[str, Any]:
        """The rate and the shadow tensors themselves (as torch's own state_dicts: save or copy
        them before the next update)."""
        return {"rate": self.rate, "shadow": dict(self.shadow)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        shadow = state_dict["shadow"]
        if set(shadow) != set(self.shadow):
            missing = sorted(set(self.shadow) - set(shadow))[:5]
            extra = sorted(set(shadow) - set(self.shadow))[:5]
            raise ValueError(f"EMA state does not match the model: missing {missing}, unexpected {extra}")
        for name, value in shadow.items():
            if value.shape != self.shadow[name].shape:
                raise ValueError(
                    f"EMA state for {name!r} has shape {tuple(value.shape)}, "
                    f"the model's parameter {tuple(self.shadow[name].shape)}"
                )
        # The rate stays the configured one: a resumed run may change ema_rate on purpose.
        self.shadow = {
            name: shadow[name].to(device=self.shadow[name].device, dtype=torch.float32, copy=True) for name in self.shadow
        }
