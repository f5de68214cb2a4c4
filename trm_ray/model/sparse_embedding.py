"""The puzzle-embedding table (docs/paper.md#puzzle-embedding): a buffer, not a parameter, trained by sign-SGD.

Only the rows a batch touches change, and only by the sign of their summed gradient, so the
table never goes through AdamATan2 nor the dense gradient all-reduce. In training the
lookup is copied into `local_weights` (B, D), a leaf that requires grad; its gradient and
`local_ids` are what `trm_ray.optim.SparseSignSGD` gathers across workers.
"""

from __future__ import annotations

import torch
from torch import nn

from trm_ray.model.layers import trunc_normal_


class CastedSparseEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, batch_size: int, init_std: float,
                 cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        # Persistent: the table is model state (reference key `...puzzle_emb.weights`).
        self.register_buffer("weights", trunc_normal_(torch.empty(num_embeddings, embedding_dim), std=init_std))
        # Per-worker scratch, not saved: the rows looked up this step and their ids.
        self.register_buffer("local_weights", torch.zeros(batch_size, embedding_dim, requires_grad=True), persistent=False)
        self.register_buffer("local_ids", torch.zeros(batch_size, dtype=torch.int32), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.weights[ids].to(self.cast_to)
        if ids.shape[0] != self.local_ids.shape[0]:
            raise ValueError(
                f"training batch has {ids.shape[0]} rows but the model was built for batch_size="
                f"{self.local_ids.shape[0]} per worker; build it with the loader's per-worker batch size"
            )
        with torch.no_grad():
            self.local_weights.copy_(self.weights[ids])
            self.local_ids.copy_(ids)
        return self.local_weights.to(self.cast_to)
