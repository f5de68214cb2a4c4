"""`trm-ray eval` on Ray Data (2 inference actors) gives exactly the in-process numbers,
submission and saved outputs (in dataset order). One local Ray for the module."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import trm_ray
from trm_ray.cli.main import main as cli
from trm_ray.eval import evaluate_checkpoint

from test_eval import ARC_SHAPE, SEQ, VOCAB, make_scored_dataset, tiny_model, write_arc_test_split
from trm_ray.config import DataShape

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_data_eval_equals_in_process(tmp_path, ray_session):
    dataset = write_arc_test_split(tmp_path / "arc")
    (tmp_path / "ckpt").mkdir()
    trm_ray.save_checkpoint(tiny_model(ARC_SHAPE, seed=2), tmp_path / "ckpt")
    # The actors run torch with one thread each (the session's 2 CPUs over 2 workers); the
    # in-process side must too: how a float32 sum is split between threads changes its last
    # bits for some thread counts, and the q_halt_logits are compared bit for bit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = evaluate_checkpoint(tmp_path / "ckpt", dataset, batch_size=2, num_workers=0,
                                    save_outputs=("puzzle_identifiers", "preds", "q_halt_logits"))
    finally:
        torch.set_num_threads(threads)
    outdir = tmp_path / "out"
    result = CliRunner().invoke(cli, ["eval", "--checkpoint", str(tmp_path / "ckpt"), "--dataset", str(dataset),
                                      "--num-workers", "2", "--batch-size", "2", "--outdir", str(outdir),
                                      "--save-outputs", "puzzle_identifiers,preds,q_halt_logits"])
    assert result.exit_code == 0, result.output
    written = json.loads((outdir / "metrics.json").read_text())
    assert written["metrics"] == pytest.approx(local.metrics) and written["num_workers"] == 2
    assert json.loads((outdir / "submission.json").read_text()) == local.submission
    outputs = np.load(outdir / "outputs.npz")
    for name in ("puzzle_identifiers", "preds", "q_halt_logits"):
        assert np.array_equal(outputs[f"all__{name}"], local.outputs["all"][name]), name


def test_one_batch_on_ray_is_one_global_batch(tmp_path, ray_session):
    """--one-batch means one global batch (batch size x workers), as in this process with the
    same global batch: the first rows of the set, in dataset order."""
    dataset = write_arc_test_split(tmp_path / "arc")
    (tmp_path / "ckpt").mkdir()
    trm_ray.save_checkpoint(tiny_model(ARC_SHAPE, seed=2), tmp_path / "ckpt")
    on_ray = evaluate_checkpoint(tmp_path / "ckpt", dataset, batch_size=2, num_workers=2, one_batch=True,
                                 save_outputs=("puzzle_identifiers", "inputs"))
    all_rows = np.load(dataset / "test" / "all__inputs.npy")
    assert on_ray.num_examples == 4
    assert np.array_equal(on_ray.outputs["all"]["inputs"], all_rows[:4])


@pytest.mark.parametrize("num_workers", [1, 2])
def test_ray_work_items_of_several_batches_score_as_in_process(tmp_path, ray_session, num_workers):
    """Sets of 10 and 5 rows at batch 2: a Ray work item holds several batches, one of them
    runs from set a into set b, and b's last batch has 1 row. Metrics equal to the bit (the
    driver scores batch by batch in dataset order), and the outputs too. Two checkpoints one
    after the other: the second run's worker processes, kept from the first, must use the
    second model."""
    shape = DataShape(seq_len=SEQ, vocab_size=VOCAB, num_puzzle_identifiers=4)
    dataset = make_scored_dataset(tmp_path / "data", tiny_model(shape, seed=3))
    names = ("puzzle_identifiers", "labels", "preds", "q_halt_logits", "q_continue_logits")
    for seed in (3, 4):
        folder = tmp_path / f"ckpt{seed}"
        folder.mkdir()
        trm_ray.save_checkpoint(tiny_model(shape, seed=seed), folder)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each worker (cpus_per_worker=1): see the first test
        try:
            local = evaluate_checkpoint(folder, dataset, batch_size=2, num_workers=0, save_outputs=names)
        finally:
            torch.set_num_threads(threads)
        on_ray = evaluate_checkpoint(folder, dataset, batch_size=2, num_workers=num_workers, cpus_per_worker=1,
                                     save_outputs=names)
        assert on_ray.metrics == local.metrics, seed
        assert on_ray.num_examples == local.num_examples == 15
        for set_name in ("a", "b"):
            for name in names:
                assert np.array_equal(on_ray.outputs[set_name][name], local.outputs[set_name][name]), (seed, name)
