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
    """Run every ACT step (halt_max_steps, no early halting in eval) on `batch`.

    batch: "inputs" (B, S), "puzzle_identifiers" (B,), optional "labels" (B, S), as numpy
    arrays or torch tensors. Returns "logits" (B, S, V), "preds" (B, S), "q_halt_logits" (B,),
    "q_continue_logits" (B,), as numpy if the inputs were numpy, else torch on the model's device."""
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
        carry = model.initial_carry(tensors)
        all_halted = False
        while not all_halted:  # in eval every row halts at exactly halt_max_steps
            carry, _, _, outputs, all_halted = model(carry, tensors)
    finally:
        model.train(was_training)
    result = {k: outputs[k] for k in ("logits", "preds", "q_halt_logits", "q_continue_logits")}
    return {k: v.float().cpu().numpy() if as_numpy and v.dtype.is_floating_point else (v.cpu().numpy() if as_numpy else v)
            for k, v in result.items()}
