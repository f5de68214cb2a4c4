"""Inference in a notebook: the full ACT loop in eval mode.

    out = trm_ray.predict(model, {"inputs": x, "puzzle_identifiers": ids})
    out["preds"]  # (B, S) token ids
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from trm_ray.model import IGNORE_LABEL_ID


def _as_tensor(value: Any, name: str, device: torch.device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value
    elif isinstance(value, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(value))
    else:
        raise TypeError(f"batch[{name!r}] must be a numpy array or torch tensor, not {type(value).__name__}")
    if tensor.dtype.is_floating_point:
        raise TypeError(f"batch[{name!r}] must hold integer token ids, not {tensor.dtype}")
    return tensor.to(device=device, dtype=torch.int32)


@torch.no_grad()
def predict(model: torch.nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluation ACT rollout on `batch` (halt_max_steps steps; see rollout()).

    batch: "inputs" (B, S), "puzzle_identifiers" (B,), optional "labels" (B, S), as numpy
    arrays or torch tensors. Returns "logits" (B, S, V), "preds" (B, S), "q_halt_logits" (B,),
    "q_continue_logits" (B,) (and "actual_steps" (B,) where the model halts early in evaluation),
    as numpy if the inputs were numpy, else torch on the model's device."""
    for key in ("inputs", "puzzle_identifiers"):
        if key not in batch:
            raise KeyError(f"predict: batch needs {key!r} (have {sorted(batch)})")
    device = next(model.parameters()).device
    as_numpy = isinstance(batch["inputs"], np.ndarray)
    tensors = {k: _as_tensor(batch[k], k, device) for k in ("inputs", "puzzle_identifiers", "labels") if k in batch}
    if "labels" not in tensors:
        tensors["labels"] = torch.full_like(tensors["inputs"], IGNORE_LABEL_ID)

    was_training = model.training
    model.eval()
    try:
        result = rollout(model, tensors)
    finally:
        model.train(was_training)
    return {k: v.float().cpu().numpy() if as_numpy and v.dtype.is_floating_point else (v.cpu().numpy() if as_numpy else v)
            for k, v in result.items()}


PREDICTION_KEYS = ("logits", "preds", "q_halt_logits", "q_continue_logits")


def rollout(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Evaluation ACT steps until every row has halted once; each row's outputs are those of the
    step it first halted at. Without learned halting in evaluation (every architecture but the
    transformer baseline with act_inference) all rows halt together at halt_max_steps. With it,
    the reference keeps calling until all rows halt in the same call, restarting the early ones
    (up to lcm of the halting steps calls); their outputs then equal those at the first halt,
    which is what freezing them here gives, in at most halt_max_steps calls."""
    carry = model.initial_carry(batch)
    final: dict[str, torch.Tensor] = {}
    done = torch.zeros_like(carry.halted)
    while not bool(done.all()):
        carry, _, _, outputs, _ = model(carry, batch)
        newly = carry.halted & ~done
        keys = PREDICTION_KEYS + (("actual_steps",) if "actual_steps" in outputs else ())
        for key in keys:
            value = outputs[key]
            final[key] = value if key not in final else \
                torch.where(newly.view((-1,) + (1,) * (value.ndim - 1)), value, final[key])
        done = done | carry.halted
    return final
