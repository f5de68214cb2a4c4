"""Token losses and the ACT loss head (docs/paper.md#losses-and-metrics)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trm_ray.model.trm import ACTCarry, ACTModel

IGNORE_LABEL_ID = -100


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log(s(x) / sum s(x)) with s(x) = 1/(1-x) for x < 0, x+1 otherwise: a softmax substitute
    whose tails decay polynomially, so large logits never overflow."""
    # The branch not taken must stay finite: at x = 1, 1/(1-x) is inf and where() would
    # backpropagate 0 * inf = NaN. Clamping changes no value where the branch is taken.
    s = torch.where(x < 0, 1 / (1 - x.clamp(max=0)), x + 1)
    return torch.log(s / s.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token loss (B, S) in float64, zero where mask is false."""
    logprobs = log_stablemax(logits.to(torch.float64), dim=-1)
    safe_labels = torch.where(mask, labels, 0).to(torch.long)
    picked = torch.gather(logprobs, -1, safe_labels.unsqueeze(-1)).squeeze(-1)
    return -torch.where(mask, picked, 0)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token loss (B, S) in fp32, zero where mask is false."""
    flat = F.cross_entropy(logits.to(torch.float32).flatten(0, -2), torch.where(mask, labels, IGNORE_LABEL_ID)
                           .to(torch.long).flatten(), ignore_index=IGNORE_LABEL_ID, reduction="none")
    return flat.view(labels.shape)


LOSSES = {"stablemax_cross_entropy": stablemax_cross_entropy, "softmax_cross_entropy": softmax_cross_entropy}


class TRMWithLoss(nn.Module):
    """The model as trained and saved (reference: ACTLossHead; state-dict keys `model.inner.*`)."""

    def __init__(self, model: ACTModel):
        super().__init__()
        self.model = model
        self.loss_fn = LOSSES[model.arch.loss_type]

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> ACTCarry:
        return self.model.initial_carry(batch)

    def forward(self, carry: ACTCarry, batch: dict[str, torch.Tensor]):
        """One ACT step with losses. Returns (carry, loss, metrics (summed, unnormalised),
        outputs (detached: logits, preds, q_halt_logits, ...), every row halted)."""
        carry, outputs = self.model(carry, batch)
        labels = carry.current_data["labels"]
        logits = outputs["logits"]

        with torch.no_grad():
            preds = logits.argmax(-1)
            mask = labels != IGNORE_LABEL_ID
            counts = mask.sum(-1)
            divisor = counts.clamp_min(1).unsqueeze(-1)
            correct = mask & (preds == labels)
            seq_correct = correct.sum(-1) == counts
            # Metrics count rows that finished this step and have at least one label.
            valid = carry.halted & (counts > 0)
            metrics = {
                "count": valid.sum(),
                "accuracy": torch.where(valid, (correct.to(torch.float32) / divisor).sum(-1), 0).sum(),
                "exact_accuracy": (valid & seq_correct).sum(),
                "q_halt_accuracy": (valid & ((outputs["q_halt_logits"] >= 0) == seq_correct)).sum(),
                "steps": torch.where(valid, carry.steps, 0).sum(),
            }

        lm_loss = (self.loss_fn(logits, labels, mask) / divisor).sum()
        q_halt_loss = F.binary_cross_entropy_with_logits(
            outputs["q_halt_logits"], seq_correct.to(outputs["q_halt_logits"].dtype), reduction="sum")
        metrics["lm_loss"] = lm_loss.detach()
        metrics["q_halt_loss"] = q_halt_loss.detach()
        loss = lm_loss + 0.5 * q_halt_loss
        if "target_q_continue" in outputs:
            q_continue_loss = F.binary_cross_entropy_with_logits(
                outputs["q_continue_logits"], outputs["target_q_continue"], reduction="sum")
            metrics["q_continue_loss"] = q_continue_loss.detach()
            loss = loss + 0.5 * q_continue_loss

        detached = {k: v.detach() for k, v in outputs.items()}
        detached["preds"] = preds
        return carry, loss, metrics, detached, carry.halted.all()
