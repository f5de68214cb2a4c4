"""The TRM network, plain PyTorch (no Ray, W&B or click): runs in a notebook on a laptop CPU.

    from trm_ray.model import build_model
    model = build_model(arch, DataShape(seq_len=81, vocab_size=11, num_puzzle_identifiers=1), batch_size=32)
    carry = model.initial_carry(batch)
    carry, loss, metrics, outputs, all_halted = model(carry, batch)
"""

from trm_ray.model.losses import IGNORE_LABEL_ID, TRMWithLoss, log_stablemax, stablemax_cross_entropy
from trm_ray.model.trm import TRM, ACTCarry, InnerCarry, TRMNet

__all__ = [
    "ACTCarry", "IGNORE_LABEL_ID", "InnerCarry", "TRM", "TRMNet", "TRMWithLoss", "build_model",
    "log_stablemax", "stablemax_cross_entropy",
]


def build_model(arch, shape, batch_size: int) -> TRMWithLoss:
    """TRM with its loss head; `batch_size` is the per-worker training batch (the puzzle
    embedding keeps per-row scratch of that size)."""
    return TRMWithLoss(TRM(arch, shape, batch_size))
