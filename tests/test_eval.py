"""evaluate(), eval-only runs and `trm-ray eval` without Ray: Wilson bounds by hand, metrics of a
saved checkpoint against a direct computation, padding, torch.distributed (2 gloo ranks), the
CLI on a reference-style checkpoint, and its one-line errors that leave nothing behind."""

from __future__ import annotations

import json
import math
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import trm_ray
from trm_ray.cli.main import main as cli
from trm_ray.config import ArchConfig, DataShape
from trm_ray.data.loader import PuzzleLoader
from trm_ray.data.transforms import apply_arc_variant, arc_encode_example
from trm_ray.eval import ARCEvaluator, evaluate, evaluate_checkpoint, wilson_interval
from trm_ray.model import build_model

from test_eval_arc import IDENTIFIERS, TEST_PUZZLES, write_arc_dataset

torch.set_num_threads(1)

SEQ, VOCAB = 8, 12


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def tiny_arch(**overrides) -> ArchConfig:
    base = dict(hidden_size=16, num_heads=2, expansion=2.0, H_cycles=1, L_cycles=1, L_layers=1, puzzle_emb_ndim=16,
                puzzle_emb_len=1, pos_encodings="rope", forward_dtype="float32", halt_max_steps=2)
    return ArchConfig(**{**base, **overrides})


def tiny_model(shape: DataShape, seed=0, **overrides):
    torch.manual_seed(seed)
    model = build_model(tiny_arch(**overrides), shape, batch_size=4)
    with torch.no_grad():  # make every tensor matter (init has a zero table and Q head)
        model.model.inner.puzzle_emb.weights.normal_()
        model.model.inner.q_head.weight.normal_(std=0.5)
        model.model.inner.q_head.bias.zero_()
    return model.eval()


def write_split(root: Path, sets: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], vocab: int,
                num_ids: int, ignore_label_id=0) -> None:
    """Test split by hand (docs/formats.md#dataset-folder): one puzzle and one group per example."""
    (root / "test").mkdir(parents=True, exist_ok=True)
    for name, (inputs, labels, ids) in sets.items():
        n = len(inputs)
        np.save(root / "test" / f"{name}__inputs.npy", inputs.astype(np.uint8))
        np.save(root / "test" / f"{name}__labels.npy", labels.astype(np.uint8))
        np.save(root / "test" / f"{name}__puzzle_identifiers.npy", ids.astype(np.int32))
        np.save(root / "test" / f"{name}__puzzle_indices.npy", np.arange(n + 1, dtype=np.int32))
        np.save(root / "test" / f"{name}__group_indices.npy", np.arange(n + 1, dtype=np.int32))
    total = sum(len(v[0]) for v in sets.values())
    meta = {"pad_id": 0, "ignore_label_id": ignore_label_id, "blank_identifier_id": 0, "vocab_size": vocab,
            "seq_len": next(iter(sets.values()))[0].shape[1], "num_puzzle_identifiers": num_ids,
            "total_groups": total, "mean_puzzle_examples": 1.0, "total_puzzles": total, "sets": list(sets)}
    (root / "test" / "dataset.json").write_text(json.dumps(meta))
    if not (root / "identifiers.json").exists():
        (root / "identifiers.json").write_text(json.dumps(["<blank>"] + [f"p{i}" for i in range(1, num_ids)]))


def make_scored_dataset(root: Path, model) -> Path:
    """Labels built from the model's own predictions, so some rows are exactly right, some
    partly, some have ignored tokens, one has no label at all (count 0: not counted)."""
    rng = np.random.default_rng(3)
    sets = {}
    for name, n in (("a", 10), ("b", 5)):
        inputs = rng.integers(1, VOCAB, (n, SEQ))
        ids = rng.integers(1, 4, n)
        preds = trm_ray.predict(model, {"inputs": inputs.astype(np.int32), "puzzle_identifiers": ids.astype(np.int32)})["preds"]
        labels = preds.copy()
        labels[4:7, :2] = (labels[4:7, :2] % (VOCAB - 1)) + 1   # wrong in 2 tokens (never 0 = ignored)
        labels[4:7, :2] = np.where(labels[4:7, :2] == preds[4:7, :2], labels[4:7, :2] % (VOCAB - 2) + 1, labels[4:7, :2])
        labels[7:9, 3:] = 0                                       # ignored tokens, the rest right
        labels[-1] = 0                                            # nothing to score
        sets[name] = (inputs, labels, ids)
    write_split(root, sets, VOCAB, num_ids=4)
    return root


def direct_metrics(model, dataset: Path) -> dict[str, float]:
    """My own loop: predict one example at a time, compare with numpy."""
    meta = json.loads((dataset / "test" / "dataset.json").read_text())
    out, total = {}, {"count": 0, "exact": 0, "acc": 0.0, "q": 0}
    for name in meta["sets"]:
        inputs = np.load(dataset / "test" / f"{name}__inputs.npy")
        labels = np.load(dataset / "test" / f"{name}__labels.npy").astype(np.int64)
        ids = np.load(dataset / "test" / f"{name}__puzzle_identifiers.npy")
        s = {"count": 0, "exact": 0, "acc": 0.0, "q": 0}
        for i in range(len(inputs)):
            p = trm_ray.predict(model, {"inputs": inputs[i:i + 1].astype(np.int32), "puzzle_identifiers": ids[i:i + 1]})
            scored = labels[i] != meta["ignore_label_id"]
            if not scored.any():
                continue
            hits = p["preds"][0][scored] == labels[i][scored]
            s["count"] += 1
            s["exact"] += int(hits.all())
            s["acc"] += hits.mean()
            s["q"] += int((p["q_halt_logits"][0] >= 0) == hits.all())
        for k in s:
            total[k] += s[k]
        out[f"eval/{name}/count"] = s["count"]
        out[f"eval/{name}/exact_accuracy"] = s["exact"] / s["count"]
        out[f"eval/{name}/accuracy"] = s["acc"] / s["count"]
        out[f"eval/{name}/q_halt_accuracy"] = s["q"] / s["count"]
    out["eval/count"] = total["count"]
    out["eval/exact_accuracy"] = total["exact"] / total["count"]
    out["eval/accuracy"] = total["acc"] / total["count"]
    return out


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("scored")
    model = tiny_model(DataShape(seq_len=SEQ, vocab_size=VOCAB, num_puzzle_identifiers=4))
    dataset = make_scored_dataset(root / "data", model)
    (root / "ckpt").mkdir()  # an existing folder gets model.pt (a trailing '/' is lost by Path: known core bug)
    checkpoint = trm_ray.save_checkpoint(model, root / "ckpt")  # a trm-ray checkpoint folder
    assert checkpoint == root / "ckpt" / "model.pt"
    return model, dataset, checkpoint.parent


# --------------------------------------------------------------------------------------------
# Wilson
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("successes,n", [(3, 10), (0, 10), (10, 10), (1, 1), (47, 400), (400, 400)])
def test_wilson_interval_matches_its_formula(successes, n):
    z = 1.96
    p = successes / n
    # (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), written out by hand
    low = (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    high = (p + z * z / (2 * n) + z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    assert wilson_interval(successes, n) == pytest.approx((max(low, 0.0), min(high, 1.0)), abs=1e-12)
    assert wilson_interval(successes, n)[0] <= p <= wilson_interval(successes, n)[1]


def test_wilson_interval_known_values_and_edges():
    assert wilson_interval(3, 10) == pytest.approx((0.1078, 0.6032), abs=1e-4)  # textbook example
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low99, high99 = wilson_interval(3, 10, z=2.5758)
    assert low99 < 0.1078 and high99 > 0.6032
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


# --------------------------------------------------------------------------------------------
# evaluate() and evaluate_checkpoint()
# --------------------------------------------------------------------------------------------
def test_saved_checkpoint_evaluates_to_the_direct_computation(scored):
    model, dataset, checkpoint = scored
    expected = direct_metrics(model, dataset)
    assert expected["eval/a/count"] == 9 and 0 < expected["eval/a/exact_accuracy"] < 1  # the case is not trivial
    run = evaluate_checkpoint(checkpoint, dataset, batch_size=4, num_workers=0)  # 10 rows: last batch padded
    for key, value in expected.items():
        assert run.metrics[key] == pytest.approx(value, abs=1e-6), key
    assert run.metrics["eval/a/steps"] == 2.0
    n, k = run.metrics["eval/count"], round(run.metrics["eval/exact_accuracy"] * run.metrics["eval/count"])
    assert (run.metrics["eval/exact_accuracy_low"], run.metrics["eval/exact_accuracy_high"]) == \
        pytest.approx(wilson_interval(k, n))
    assert run.submission is None and run.num_examples == 15


def test_padding_rows_are_ignored_and_training_mode_is_restored(scored):
    model, dataset, _ = scored
    reference = evaluate(model, PuzzleLoader([dataset], "test", global_batch_size=15, to_torch=True))
    loader = PuzzleLoader([dataset], "test", global_batch_size=4, to_torch=True)
    items = []
    for item in loader:  # poison the padding: a correct implementation never looks at it
        batch = {k: v.clone() for k, v in item.batch.items()}
        batch["labels"][item.num_real_rows:] = 3
        batch["inputs"][item.num_real_rows:] = 5
        items.append((item.set_name, batch, item.num_real_rows))
    model.train()
    metrics = evaluate(model, items)
    assert model.training
    model.eval()
    assert metrics == pytest.approx(reference)


def test_evaluators_see_only_real_rows_and_are_reset():
    seen = []

    class Recorder:
        def reset(self): seen.clear()
        def update(self, batch, outputs): seen.append((len(batch["inputs"]), outputs["preds"].shape))
        def state(self): return list(seen)
        def merge(self, states): pass
        def result(self): return {"rows": float(sum(n for n, _ in seen))}

    shape = DataShape(seq_len=SEQ, vocab_size=VOCAB, num_puzzle_identifiers=4)
    model = tiny_model(shape)
    batch = {"inputs": np.ones((4, SEQ), np.int32), "labels": np.ones((4, SEQ), np.int32),
             "puzzle_identifiers": np.ones(4, np.int32)}
    seen.append("stale")
    metrics = evaluate(model, [("x", batch, 3), ("x", batch, 0)], [Recorder()])
    assert metrics["rows"] == 3.0 and seen == [(3, (3, SEQ))] and metrics["eval/x/count"] == 3


def _distributed_worker(rank, world_size, dataset, init_file, result_dir):
    from gloo_util import gloo_rank

    with gloo_rank(rank, world_size, init_file):
        model = trm_ray.load_checkpoint(Path(result_dir) / "ckpt")
        loader = PuzzleLoader([dataset], "test", global_batch_size=4, rank=rank, world_size=world_size)
        arc = ARCEvaluator(dataset, pass_Ks=(1, 2))
        metrics = evaluate(model, loader, [arc])
        (Path(result_dir) / f"rank{rank}.json").write_text(json.dumps({"metrics": metrics, "submission": arc.submission()}))


def test_distributed_ranks_all_get_the_single_process_metrics(tmp_path, arc_setup):
    dataset, model = arc_setup
    (tmp_path / "ckpt").mkdir()
    trm_ray.save_checkpoint(model, tmp_path / "ckpt")
    arc = ARCEvaluator(dataset, pass_Ks=(1, 2))
    single = evaluate(model, PuzzleLoader([dataset], "test", global_batch_size=4), [arc])
    # fork: no re-import of this module per rank (spawn costs ~10 s on a shared 2-core box)
    torch.multiprocessing.start_processes(_distributed_worker, nprocs=2, join=True, start_method="fork",
                                          args=(2, str(dataset), str(tmp_path / "init"), str(tmp_path)))
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["metrics"] == pytest.approx(single)
        assert result["submission"] == arc.submission()


# --------------------------------------------------------------------------------------------
# an ARC dataset and a reference-style checkpoint through the CLI
# --------------------------------------------------------------------------------------------
def write_arc_test_split(root: Path) -> Path:
    """Every variant of IDENTIFIERS gets its puzzle's test pairs, transformed as its name says."""
    write_arc_dataset(root)
    inputs, labels, ids, puzzle_indices, group_indices = [], [], [], [0], [0]
    current = None
    for identifier, name in enumerate(IDENTIFIERS[1:], start=1):
        parts = name.split("|||")
        t, cmap = (int(parts[1][1:]), np.array([int(c) for c in parts[2]], np.uint8)) if len(parts) == 3 \
            else (0, np.arange(10, dtype=np.uint8))
        if current is not None and parts[0] != current:
            group_indices.append(identifier - 1)
        current = parts[0]
        for pair in TEST_PUZZLES[parts[0]]["test"]:
            i, o = (apply_arc_variant(np.array(pair[k], np.uint8), t, cmap) for k in ("input", "output"))
            encoded = arc_encode_example(i, o)
            inputs.append(encoded[0])
            labels.append(encoded[1])
        ids.append(identifier)
        puzzle_indices.append(len(inputs))
    group_indices.append(len(ids))
    (root / "test").mkdir(exist_ok=True)
    for field, array in (("inputs", np.stack(inputs)), ("labels", np.stack(labels)), ("puzzle_identifiers", np.array(ids, np.int32)),
                         ("puzzle_indices", np.array(puzzle_indices, np.int32)), ("group_indices", np.array(group_indices, np.int32))):
        np.save(root / "test" / f"all__{field}.npy", array)
    meta = {"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": 12, "seq_len": 900,
            "num_puzzle_identifiers": len(IDENTIFIERS), "total_groups": 3, "mean_puzzle_examples": len(inputs) / len(ids),
            "total_puzzles": len(ids), "sets": ["all"]}
    (root / "test" / "dataset.json").write_text(json.dumps(meta))
    return root


ARC_SHAPE = DataShape(seq_len=900, vocab_size=12, num_puzzle_identifiers=len(IDENTIFIERS))


@pytest.fixture(scope="module")
def arc_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("arc")
    return write_arc_test_split(root / "arc"), tiny_model(ARC_SHAPE, seed=1)


def write_reference_checkpoint(model, folder: Path) -> Path:
    """A compiled reference run's leftovers: `_orig_mod.` keys in step_N, all_config.yaml beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"_orig_mod." + k: v.clone() for k, v in model.state_dict().items()}, folder / "step_100")
    a = model.model.arch
    (folder / "all_config.yaml").write_text(textwrap.dedent(f"""\
        arch:
          name: recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1
          loss: {{name: losses@ACTLossHead, loss_type: stablemax_cross_entropy}}
          halt_exploration_prob: 0.1
          halt_max_steps: {a.halt_max_steps}
          H_cycles: {a.H_cycles}
          L_cycles: {a.L_cycles}
          H_layers: 0
          L_layers: {a.L_layers}
          hidden_size: {a.hidden_size}
          num_heads: {a.num_heads}
          expansion: {a.expansion}
          puzzle_emb_ndim: {a.puzzle_emb_ndim}
          pos_encodings: {a.pos_encodings}
          forward_dtype: float32
          mlp_t: false
          puzzle_emb_len: {a.puzzle_emb_len}
          no_ACT_continue: true
        data_paths: [data/arc1concept-aug-1000]
        global_batch_size: 768
        ema: true
        evaluators: [{{name: arc@ARC}}]
        """))
    return folder / "step_100"


def test_reference_checkpoint_evaluates_through_the_cli(tmp_path, arc_setup):
    dataset, model = arc_setup
    checkpoint = write_reference_checkpoint(model, tmp_path / "ref")
    outdir, png = tmp_path / "out", tmp_path / "pics" / "arc.png"
    result = CliRunner().invoke(cli, ["eval", "--checkpoint", str(checkpoint), "--dataset", str(dataset),
                                      "--num-workers", "0", "--outdir", str(outdir), "--png", str(png),
                                      "--save-outputs", "inputs", "preds", "q_halt_logits", "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    assert "95% interval" in result.output and "ARC/pass@2" in result.output
    expected = evaluate(model, PuzzleLoader([dataset], "test", global_batch_size=5), [ARCEvaluator(dataset)])
    written = json.loads((outdir / "metrics.json").read_text())
    assert written["metrics"] == pytest.approx(expected)
    submission = json.loads((outdir / "submission.json").read_text())
    assert list(submission) == ["p1", "p2", "p3"] and len(submission["p2"]) == 2
    outputs = np.load(outdir / "outputs.npz")
    assert sorted(outputs.files) == ["all__inputs", "all__preds", "all__q_halt_logits"]
    assert np.array_equal(outputs["all__inputs"], np.load(dataset / "test" / "all__inputs.npy"))  # dataset order
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["out", "pics", "ref"] and os.listdir(tmp_path / "pics") == ["arc.png"]


def test_cli_errors_are_one_line_and_leave_nothing(tmp_path, scored, arc_setup):
    _, dataset, checkpoint = scored
    arc_dataset, _ = arc_setup
    runner = CliRunner()
    cases = [
        (["--checkpoint", str(tmp_path / "missing"), "--dataset", str(dataset)], "does not exist"),
        (["--checkpoint", str(checkpoint), "--dataset", str(tmp_path / "nodata")], "does not exist"),
        (["--checkpoint", str(checkpoint), "--dataset", str(arc_dataset)], "puzzle identifiers"),  # mismatch
        (["--checkpoint", str(checkpoint), "--dataset", str(dataset), "--no-ema"], "--ema"),  # one set of weights
        (["--checkpoint", str(checkpoint), "--dataset", str(dataset), "--png", "x.png"], "ARC datasets only"),
        (["--checkpoint", str(checkpoint), "--dataset", str(dataset), "--save-outputs", "logits"], "unknown logits"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        result = runner.invoke(cli, ["eval", *args, "--num-workers", "0", "--outdir", str(out)])
        assert result.exit_code != 0 and message in result.output, (args, result.output)
        assert result.output.strip().count("\n") == 0, result.output  # one line
        assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())
    (tmp_path / "out").mkdir()
    result = runner.invoke(cli, ["eval", "--checkpoint", str(checkpoint), "--dataset", str(dataset),
                                 "--num-workers", "0", "--outdir", str(tmp_path / "out")])
    assert result.exit_code != 0 and "--overwrite" in result.output
    help_text = runner.invoke(cli, ["eval", "--help"]).output
    assert help_text.rstrip().splitlines()[-1].strip().startswith("trm-ray eval --checkpoint")


def test_one_batch_and_live_weights(tmp_path, scored):
    model, dataset, checkpoint = scored
    run = evaluate_checkpoint(checkpoint, dataset, batch_size=4, one_batch=True, num_workers=0)
    assert run.metrics["eval/a/count"] == 4 and run.metrics["eval/b/count"] == 4  # first 4 rows of each set
    # A training checkpoint folder: model.pt holds the EMA weights, train_state.pt the live ones.
    folder = tmp_path / "train_ckpt"
    folder.mkdir()
    trm_ray.save_checkpoint(tiny_model(model.model.inner.shape, seed=5), folder)
    torch.save({"model": model.state_dict(), "step": 7}, folder / "train_state.pt")
    live = evaluate_checkpoint(folder, dataset, ema=False, num_workers=0).metrics
    ema = evaluate_checkpoint(folder, dataset, ema=True, num_workers=0).metrics
    assert live == pytest.approx(evaluate_checkpoint(checkpoint, dataset, num_workers=0).metrics)
    assert ema != pytest.approx(live)
