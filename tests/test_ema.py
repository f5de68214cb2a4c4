"""EMA of the trainable parameters against a hand computation (docs/paper.md#ema)."""

from __future__ import annotations

import io

import pytest
import torch

from trm_ray.ema import EMA


class Inner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(2, 2, bias=False)
        self.frozen = torch.nn.Parameter(torch.tensor([5.0]), requires_grad=False)
        self.register_buffer("table", torch.tensor([1.0, 2.0]))


class Head(torch.nn.Module):
    """Names like the reference loss head: model.inner.<...>."""

    def __init__(self):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.inner = Inner()


class Compiled(torch.nn.Module):
    """Stands in for torch.compile's wrapper, which holds the module as `_orig_mod`."""

    def __init__(self, module):
        super().__init__()
        self._orig_mod = module


def set_weight(head: Head, values):
    with torch.no_grad():
        head.model.inner.proj.weight.copy_(torch.tensor(values))


def test_ema_matches_hand_computation_over_three_updates():
    head = Head()
    set_weight(head, [[1.0, 2.0], [3.0, 4.0]])
    ema = EMA(head, rate=0.9)
    assert list(ema.shadow) == ["model.inner.proj.weight"]  # trainable parameters only

    shadow = [1.0, 2.0, 3.0, 4.0]
    for values in ([0.0, 0.0, 0.0, 0.0], [10.0, -10.0, 1.0, 2.0], [2.0, 2.0, 2.0, 2.0]):
        set_weight(head, [values[:2], values[2:]])
        ema.update(head)
        shadow = [0.1 * p + 0.9 * s for p, s in zip(values, shadow)]
    # by hand: 0.729*start + 0.009*first + 0.09*second + 0.1*third (first is zeros)
    assert shadow == pytest.approx([1.829, 0.758, 2.477, 3.296])
    assert ema.shadow["model.inner.proj.weight"].flatten().tolist() == pytest.approx(shadow, abs=1e-6)

    # The copy has the EMA weights, the live buffers (changed after the EMA was built) and the
    # frozen parameter as it is; the live model keeps its own weights.
    with torch.no_grad():
        head.model.inner.table.fill_(7.0)
    averaged = ema.model_copy(head)
    assert averaged.model.inner.proj.weight.flatten().tolist() == pytest.approx(shadow, abs=1e-6)
    assert averaged.model.inner.table.tolist() == [7.0, 7.0]
    assert averaged.model.inner.frozen.item() == 5.0
    assert head.model.inner.proj.weight.flatten().tolist() == [2.0, 2.0, 2.0, 2.0]


def test_ema_swapped_restores_live_weights_and_copy_to_overwrites():
    head = Head()
    set_weight(head, [[1.0, 1.0], [1.0, 1.0]])
    ema = EMA(head, rate=0.5)
    set_weight(head, [[3.0, 3.0], [3.0, 3.0]])
    ema.update(head)  # shadow = 2
    with ema.swapped(head) as model:
        assert model.model.inner.proj.weight.flatten().tolist() == [2.0] * 4
    assert head.model.inner.proj.weight.flatten().tolist() == [3.0] * 4
    ema.copy_to(head)
    assert head.model.inner.proj.weight.flatten().tolist() == [2.0] * 4


def test_ema_shadow_is_fp32_for_bf16_params():
    head = Head().to(torch.bfloat16)
    set_weight(head, [[1.0, 1.0], [1.0, 1.0]])
    ema = EMA(head, rate=0.999)
    set_weight(head, [[2.0, 2.0], [2.0, 2.0]])
    ema.update(head)
    shadow = ema.shadow["model.inner.proj.weight"]
    # 1.001 is below bf16 resolution at 1 (spacing 2^-7); an fp32 shadow keeps it.
    assert shadow.dtype == torch.float32
    assert shadow.flatten().tolist() == pytest.approx([1.001] * 4, abs=1e-6)


def test_ema_keys_ignore_compile_wrapper_and_state_round_trips():
    head = Head()
    set_weight(head, [[1.0, 2.0], [3.0, 4.0]])
    ema = EMA(Compiled(head), rate=0.9)
    assert list(ema.shadow) == ["model.inner.proj.weight"]
    set_weight(head, [[0.0, 0.0], [0.0, 0.0]])
    ema.update(Compiled(head))

    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    restored = EMA(head, rate=0.9)  # built over fresh weights (zeros); the state replaces them
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(restored.shadow["model.inner.proj.weight"], ema.shadow["model.inner.proj.weight"])
    assert restored.shadow["model.inner.proj.weight"] is not ema.shadow["model.inner.proj.weight"]

    with pytest.raises(ValueError, match="missing"):
        restored.load_state_dict({"rate": 0.9, "shadow": {"other.weight": torch.zeros(2, 2)}})
    with pytest.raises(ValueError, match="rate"):
        EMA(head, rate=1.5)
