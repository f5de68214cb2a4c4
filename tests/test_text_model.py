"""The causal mask of the text task: a later token never changes an earlier position's logits,
in any architecture, through the whole recursion and across deep-supervision steps."""

from __future__ import annotations

import pytest
import torch

from trm_ray.config import ArchConfig, DataShape
from trm_ray.model import NETS, build_model

SEQ, VOCAB = 12, 40


def _model(name: str, causal: bool, **arch):
    torch.manual_seed(0)
    config = ArchConfig(name=name, hidden_size=32, num_heads=4, H_cycles=2, L_cycles=2, H_layers=2, L_layers=2,
                        halt_max_steps=3, forward_dtype="float32", puzzle_emb_ndim=0, causal=causal,
                        loss_type="softmax_cross_entropy", **arch)
    model = build_model(config, DataShape(seq_len=SEQ, vocab_size=VOCAB, num_puzzle_identifiers=1), batch_size=4)
    return model.eval()


def _logits_per_step(model, inputs: torch.Tensor) -> list[torch.Tensor]:
    batch = {"inputs": inputs, "labels": inputs, "puzzle_identifiers": torch.zeros(inputs.shape[0], dtype=torch.int32)}
    with torch.no_grad():
        carry = model.initial_carry(batch)
        steps = []
        for _ in range(model.model.arch.halt_max_steps):
            carry, _, _, outputs, _ = model(carry, batch)
            steps.append(outputs["logits"].clone())
    return steps


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("pos_encodings", ["rope", "learned"])
def test_a_later_token_never_changes_earlier_logits(name, pos_encodings):
    model = _model(name, causal=True, pos_encodings=pos_encodings)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randint(3, VOCAB, (4, SEQ), generator=generator, dtype=torch.int32)
    before = _logits_per_step(model, inputs)
    for position in (1, SEQ // 2, SEQ - 1):
        changed = inputs.clone()
        changed[:, position:] = (changed[:, position:] + 7) % (VOCAB - 3) + 3  # every token from here on differs
        after = _logits_per_step(model, changed)
        for step, (a, b) in enumerate(zip(before, after)):
            # The earlier positions never read the changed ones: the same float ops, bit for bit.
            assert torch.equal(a[:, :position], b[:, :position]), (name, position, step)
            assert not torch.equal(a[:, position:], b[:, position:]), (name, position, step)


@pytest.mark.parametrize("name", ["trm", "transformers_baseline"])
def test_without_the_mask_a_later_token_changes_earlier_logits(name):
    # The check above would pass vacuously if no position read any other: without the mask it fails.
    model = _model(name, causal=False)
    inputs = torch.randint(3, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(2), dtype=torch.int32)
    changed = inputs.clone()
    changed[:, -1] = (changed[:, -1] + 1 - 3) % (VOCAB - 3) + 3
    assert not torch.equal(_logits_per_step(model, inputs)[-1][:, 0], _logits_per_step(model, changed)[-1][:, 0])


def test_causal_halting_reads_the_last_position():
    # Under the mask only the last position has seen the whole sequence: the halting head reads it,
    # so changing the last token may change q_halt, and changing nothing leaves it alone.
    model = _model("trm", causal=True)
    inputs = torch.randint(3, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(3), dtype=torch.int32)
    batch = {"inputs": inputs, "labels": inputs, "puzzle_identifiers": torch.zeros(2, dtype=torch.int32)}
    net = model.model.inner
    with torch.no_grad():
        carry = net.empty_carry(2, SEQ, torch.device("cpu"))
        carry = net.reset_carry(torch.ones(2, dtype=torch.bool), carry)
        states, _, (q_halt, _) = net(carry, batch)
        expected = net.q_head(states["z_H"][:, -1]).float()[..., 0]
    assert torch.equal(q_halt, expected)


def test_causal_and_mlp_t_is_a_config_error():
    with pytest.raises(ValueError, match="arch.causal=true with arch.mlp_t=true"):
        ArchConfig(causal=True, mlp_t=True)
