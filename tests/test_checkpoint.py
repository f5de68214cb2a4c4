"""Checkpoints in the reference format (docs/formats.md): round trips, reference-written files,
and every way a checkpoint can be unusable (each a CheckpointError naming the problem)."""

from __future__ import annotations

import fractions
import json
import textwrap

import numpy as np
import pytest
import torch
import yaml

import trm_ray
from trm_ray.checkpoint import CheckpointError
from trm_ray.config import ArchConfig, DataShape
from trm_ray.model import build_model

torch.set_num_threads(1)  # tiny tensors: threads only add contention on a shared CPU

SEQ, VOCAB, NUM_IDS, D = 8, 10, 5, 32
SHAPE = DataShape(seq_len=SEQ, vocab_size=VOCAB, num_puzzle_identifiers=NUM_IDS)
REF_ARCH_NAME = "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"


def make_arch(**overrides) -> ArchConfig:
    base = dict(hidden_size=D, num_heads=2, expansion=2.0, H_cycles=2, L_cycles=2, L_layers=2, puzzle_emb_ndim=D,
                puzzle_emb_len=2, pos_encodings="rope", forward_dtype="float32", halt_max_steps=2)
    return ArchConfig(**{**base, **overrides})


def trained_looking_model(seed=0, **overrides):
    """A model whose every tensor matters: random puzzle table and Q head (init has them constant)."""
    torch.manual_seed(seed)
    model = build_model(make_arch(**overrides), SHAPE, batch_size=4)
    inner = model.model.inner
    with torch.no_grad():
        inner.puzzle_emb.weights.normal_()
        inner.q_head.weight.normal_(std=0.2)
        inner.q_head.bias.normal_()
    return model.eval()


def numpy_batch(seed=1):
    rng = np.random.default_rng(seed)
    return {"inputs": rng.integers(0, VOCAB, (4, SEQ)).astype(np.int32),
            "puzzle_identifiers": rng.integers(0, NUM_IDS, (4,)).astype(np.int32)}


def assert_same_predictions(a, b, batch):
    pa, pb = trm_ray.predict(a, batch), trm_ray.predict(b, batch)
    assert set(pa) == {"logits", "preds", "q_halt_logits", "q_continue_logits"}
    for k in pa:
        if isinstance(pa[k], np.ndarray):
            assert np.array_equal(pa[k], pb[k]), k
        else:
            assert torch.equal(pa[k], pb[k]), k


def reference_all_config(arch: dict, data_paths: list[str]) -> str:
    """all_config.yaml as the reference's pretrain.py writes it (OmegaConf dump of PretrainConfig)."""
    return textwrap.dedent(f"""\
        arch:
          name: {REF_ARCH_NAME}
          loss:
            name: losses@ACTLossHead
            loss_type: stablemax_cross_entropy
          halt_exploration_prob: 0.1
          halt_max_steps: {arch['halt_max_steps']}
          H_cycles: {arch['H_cycles']}
          L_cycles: {arch['L_cycles']}
          H_layers: 0
          L_layers: {arch['L_layers']}
          hidden_size: {arch['hidden_size']}
          num_heads: {arch['num_heads']}
          expansion: {arch['expansion']}
          puzzle_emb_ndim: {arch['puzzle_emb_ndim']}
          pos_encodings: {arch['pos_encodings']}
          forward_dtype: float32
          mlp_t: {arch['mlp_t']}
          puzzle_emb_len: {arch['puzzle_emb_len']}
          no_ACT_continue: true
        data_paths: {json.dumps(data_paths)}
        data_paths_test: []
        evaluators: []
        global_batch_size: 768
        epochs: 50000
        eval_interval: 5000
        checkpoint_every_eval: true
        lr: 0.0001
        lr_min_ratio: 1.0
        lr_warmup_steps: 2000
        beta1: 0.9
        beta2: 0.95
        weight_decay: 1.0
        puzzle_emb_weight_decay: 1.0
        puzzle_emb_lr: 0.0001
        seed: 0
        min_eval_interval: 0
        ema: true
        ema_rate: 0.999
        freeze_weights: false
        project_name: Sudoku-extreme-1k-aug-1000-ACT-torch
        run_name: pretrain_mlp_t_sudoku
        load_checkpoint: null
        checkpoint_path: checkpoints/Sudoku-extreme-1k-aug-1000-ACT-torch/pretrain_mlp_t_sudoku
        eval_save_outputs: []
        """)


def write_reference_checkpoint(model, folder, prefix="_orig_mod.", data_paths=("data/does-not-exist",)):
    """What a reference run leaves: torch.save(state_dict) as `step_100`, all_config.yaml beside."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {prefix + k: v.clone() for k, v in model.state_dict().items()}
    torch.save(state, folder / "step_100")
    (folder / "all_config.yaml").write_text(reference_all_config(model.model.arch.model_dump(), list(data_paths)))
    return folder / "step_100"


# --------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mlp_t", [False, True], ids=["attention", "mlp_t"])
def test_save_load_predict_is_bit_exact(tmp_path, mlp_t):
    model = trained_looking_model(mlp_t=mlp_t)
    path = trm_ray.save_checkpoint(model, tmp_path / "step_1")
    loaded = trm_ray.load_checkpoint(path)
    assert not loaded.training
    batch = numpy_batch()
    assert_same_predictions(model, loaded, batch)  # numpy in, numpy out
    assert_same_predictions(model, loaded, {k: torch.from_numpy(v) for k, v in batch.items()})  # torch in/out
    out = trm_ray.predict(loaded, batch)
    assert isinstance(out["preds"], np.ndarray) and out["logits"].shape == (4, SEQ, VOCAB)


def test_save_into_a_folder_and_load_the_folder(tmp_path):
    model = trained_looking_model(pos_encodings="learned")
    path = trm_ray.save_checkpoint(model, str(tmp_path / "ckpt") + "/")
    assert path == tmp_path / "ckpt" / "model.pt" and (tmp_path / "ckpt" / "all_config.yaml").is_file()
    assert_same_predictions(model, trm_ray.load_checkpoint(tmp_path / "ckpt"), numpy_batch())


def test_saved_file_has_reference_keys_and_config_layout(tmp_path):
    model = trained_looking_model(mlp_t=True)
    path = trm_ray.save_checkpoint(model, tmp_path / "step_7")
    state = torch.load(path, weights_only=True)
    assert set(state) == {"_orig_mod." + k for k in model.state_dict()}
    for key in ("_orig_mod.model.inner.L_level.layers.0.mlp.down_proj.weight",
                "_orig_mod.model.inner.puzzle_emb.weights", "_orig_mod.model.inner.H_init",
                "_orig_mod.model.inner.L_level.layers.1.mlp_t.gate_up_proj.weight"):
        assert key in state, key
    config = yaml.safe_load((tmp_path / "all_config.yaml").read_text())
    arch = config["arch"]
    assert arch["name"] == REF_ARCH_NAME
    assert arch["loss"] == {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"}
    want = model.model.arch
    for key in ("H_cycles", "L_cycles", "L_layers", "hidden_size", "num_heads", "expansion", "halt_max_steps",
                "halt_exploration_prob", "pos_encodings", "forward_dtype", "mlp_t", "puzzle_emb_len", "no_ACT_continue"):
        assert arch[key] == getattr(want, key), key
    assert arch["puzzle_emb_ndim"] == D  # an integer, as the reference resolves ${.hidden_size}
    assert "loss_type" not in arch  # the reference nests it under arch.loss


# --------------------------------------------------------------------------------------------
# reference-written checkpoints
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["_orig_mod.", ""], ids=["compiled", "uncompiled"])
@pytest.mark.parametrize("mlp_t,pos", [(False, "rope"), (True, "none"), (False, "learned")])
def test_reference_checkpoint_loads_and_predicts_the_same(tmp_path, prefix, mlp_t, pos):
    model = trained_looking_model(mlp_t=mlp_t, pos_encodings=pos)
    path = write_reference_checkpoint(model, tmp_path / "run", prefix=prefix)
    loaded = trm_ray.load_checkpoint(path)
    arch = loaded.model.arch
    assert (arch.H_cycles, arch.L_cycles, arch.halt_max_steps, arch.mlp_t, arch.pos_encodings) == (2, 2, 2, mlp_t, pos)
    assert_same_predictions(model, loaded, numpy_batch())


# --------------------------------------------------------------------------------------------
# unusable checkpoints
# --------------------------------------------------------------------------------------------
def test_truncated_file_is_a_clear_error(tmp_path):
    path = write_reference_checkpoint(trained_looking_model(), tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="(?i)truncated or corrupt") as info:
        trm_ray.load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("payload", [b"\x00" * 64, bytes(range(256)) * 4, b"definitely not a checkpoint\n"],
                         ids=["zeros", "bytes", "text"])
def test_random_bytes_are_a_clear_error(tmp_path, payload):
    path = write_reference_checkpoint(trained_looking_model(), tmp_path)
    path.write_bytes(payload)
    with pytest.raises(CheckpointError) as info:
        trm_ray.load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    # Garbage is not "pickled Python objects": the message must not send the user to re-save a model.
    assert "corrupt" in message.lower(), message


class NotATensor:
    def __init__(self):
        self.x = 1


@pytest.mark.parametrize("obj", [NotATensor(), fractions.Fraction(1, 3)], ids=["custom_class", "stdlib_object"])
def test_pickled_objects_are_refused_not_executed(tmp_path, obj):
    path = write_reference_checkpoint(trained_looking_model(), tmp_path)
    state = torch.load(path, weights_only=True)
    state["_orig_mod.extra"] = obj
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="(?i)pickled") as info:
        trm_ray.load_checkpoint(path)
    assert "weights_only" in str(info.value) and str(path) in str(info.value)


def test_non_state_dict_payload_is_a_clear_error(tmp_path):
    path = write_reference_checkpoint(trained_looking_model(), tmp_path)
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="state dict"):
        trm_ray.load_checkpoint(path)


def test_missing_unexpected_and_mismatched_keys_are_all_listed(tmp_path):
    model = trained_looking_model()
    state = {"_orig_mod." + k: v for k, v in model.state_dict().items()}
    del state["_orig_mod.model.inner.L_level.layers.0.mlp.down_proj.weight"]
    state["_orig_mod.model.inner.extra_head.weight"] = torch.zeros(3)
    state["_orig_mod.model.inner.lm_head.weight"] = torch.zeros(VOCAB + 1, D)
    path = tmp_path / "step_100"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        trm_ray.load_checkpoint(path, config=model.model.arch)
    message = str(info.value)
    assert "missing keys: model.inner.L_level.layers.0.mlp.down_proj.weight" in message
    assert "unexpected keys: model.inner.extra_head.weight" in message
    assert "model.inner.lm_head.weight (11, 32) vs model (10, 32)" in message


def test_missing_config_is_a_clear_error(tmp_path):
    model = trained_looking_model()
    path = tmp_path / "step_100"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="all_config.yaml.*config="):
        trm_ray.load_checkpoint(path)
    assert_same_predictions(model, trm_ray.load_checkpoint(path, config=model.model.arch), numpy_batch())


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        trm_ray.load_checkpoint(tmp_path / "nope")


# --------------------------------------------------------------------------------------------
# puzzle table of another dataset
# --------------------------------------------------------------------------------------------
def test_puzzle_table_of_another_size_is_reset_to_the_mean(tmp_path, capsys):
    model = trained_looking_model()
    dataset = tmp_path / "other-dataset"
    (dataset / "train").mkdir(parents=True)
    (dataset / "train" / "dataset.json").write_text(json.dumps({
        "pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": VOCAB, "seq_len": SEQ,
        "num_puzzle_identifiers": 9, "total_groups": 3, "mean_puzzle_examples": 1.0, "total_puzzles": 3,
        "sets": ["all"]}))
    path = write_reference_checkpoint(model, tmp_path / "run", data_paths=[str(dataset)])
    capsys.readouterr()
    loaded = trm_ray.load_checkpoint(path)
    err = capsys.readouterr().err
    assert "puzzle table" in err and "mean" in err and "5" in err and "9" in err
    saved = model.model.inner.puzzle_emb.weights
    table = loaded.model.inner.puzzle_emb.weights
    assert table.shape == (9, D)
    expected = saved.double().mean(0).float()
    for row in table:
        torch.testing.assert_close(row, expected, rtol=0, atol=1e-6)
    # every other tensor loaded unchanged
    for k, v in model.state_dict().items():
        if k != "model.inner.puzzle_emb.weights":
            assert torch.equal(loaded.state_dict()[k], v), k
