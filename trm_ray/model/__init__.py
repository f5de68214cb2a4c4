"""The networks, plain PyTorch (no Ray, W&B or click): runs in a notebook on a laptop CPU.

    from trm_ray.model import build_model
    model = build_model(arch, DataShape(seq_len=81, vocab_size=11, num_puzzle_identifiers=1), batch_size=32)
    carry = model.initial_carry(batch)
    carry, loss, metrics, outputs, all_halted = model(carry, batch)

`arch.name` picks the network: TRM or one of the paper's baselines (NETS).
"""

from trm_ray.model.baselines import Hier6Net, HRMNet, SingleZNet, TransformerNet
from trm_ray.model.losses import IGNORE_LABEL_ID, TRMWithLoss, log_stablemax, stablemax_cross_entropy
from trm_ray.model.trm import ACTCarry, ACTModel, InnerCarry, RecursiveNet, TRMNet

__all__ = [
    "ACTCarry", "ACTModel", "IGNORE_LABEL_ID", "InnerCarry", "NETS", "RecursiveNet", "TRMNet", "TRMWithLoss",
    "build_model", "log_stablemax", "stablemax_cross_entropy",
]

# arch.name -> network class (the short names of trm_ray.config.ARCH_NAMES)
NETS: dict[str, type[RecursiveNet]] = {
    "trm": TRMNet,
    "hrm": HRMNet,
    "transformers_baseline": TransformerNet,
    "trm_singlez": SingleZNet,
    "trm_hier6": Hier6Net,
}


def build_model(arch, shape, batch_size: int) -> TRMWithLoss:
    """The network of arch.name with the ACT wrapper and its loss head; `batch_size` is the
    per-worker training batch (the puzzle embedding keeps per-row scratch of that size)."""
    return TRMWithLoss(ACTModel(NETS[arch.name](arch, shape, batch_size)))
