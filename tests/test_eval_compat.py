"""`trm-ray eval` with the command lines of the alphaXiv fork's scripts/run_eval_only.py
(--apply-ema, --global-batch-size, --eval-save-outputs, --config, ...) and its Wilson interval
lines, checked against a Wilson formula written out here. No Ray: --num-workers 0, or a
stand-in for evaluate_checkpoint where a worker count only has to reach it."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import trm_ray
import trm_ray.eval.run as eval_run
from trm_ray.cli.main import main as cli
from trm_ray.config import DataShape

from test_eval import SEQ, VOCAB, make_scored_dataset, tiny_model, write_split
from test_tracking_wandb import log_records, of_kind, offline, run_files, summary_of  # noqa: F401 (offline: a fixture)

Z = 1.96  # the fork's run_eval_only.py uses 1.96 for its 95% intervals
WILSON_LINE = re.compile(r"^  (\S+)\.exact_accuracy 95% Wilson CI \[(\d+\.\d\d)%, (\d+\.\d\d)%\] \(N=(\d+)\)$")
APPROX_LINE = re.compile(r"^    -> approx: (\d+\.\d\d) ± (\d+\.\d\d) %$")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A dataset whose labels are the predictions of `ema_model` (sets a: 10 rows, b: 5), and a
    training checkpoint folder: model.pt holds `ema_model`, train_state.pt the live `live_model`."""
    root = tmp_path_factory.mktemp("compat")
    shape = DataShape(seq_len=SEQ, vocab_size=VOCAB, num_puzzle_identifiers=4)
    ema_model, live_model = tiny_model(shape, seed=0), tiny_model(shape, seed=5)
    dataset = make_scored_dataset(root / "data", ema_model)
    folder = root / "ckpt"
    folder.mkdir()
    trm_ray.save_checkpoint(ema_model, folder)
    torch.save({"model": live_model.state_dict(), "step": 7}, folder / "train_state.pt")
    return {"dataset": dataset, "checkpoint": folder, "ema": ema_model, "live": live_model}


def run_eval(setup, outdir: Path, *args: str, checkpoint=None, dataset=None, wandb: bool = False):
    # W&B off unless a test is about it: an offline run costs seconds and says nothing about flags
    result = CliRunner().invoke(cli, ["eval", "--checkpoint", str(checkpoint or setup["checkpoint"]),
                                      "--dataset", str(dataset or setup["dataset"]), "--outdir", str(outdir), *args,
                                      *([] if wandb else ["--no-wandb"])])
    return result


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def written(outdir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    record = json.loads((outdir / "metrics.json").read_text())
    npz = outdir / "outputs.npz"
    arrays = dict(np.load(npz)) if npz.exists() else {}
    return record, arrays


def dataset_rows(dataset: Path, set_name: str, name: str) -> np.ndarray:
    return np.load(dataset / "test" / f"{set_name}__{name}.npy")


def predicted(model, dataset: Path, set_name: str) -> np.ndarray:
    inputs = dataset_rows(dataset, set_name, "inputs").astype(np.int32)
    ids = dataset_rows(dataset, set_name, "puzzle_identifiers").astype(np.int32)
    return trm_ray.predict(model, {"inputs": inputs, "puzzle_identifiers": ids})["preds"]


def hand_wilson(k: int, n: int) -> tuple[float, float]:
    """(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), clipped to [0, 1]."""
    p = k / n
    centre = (p + Z ** 2 / (2 * n)) / (1 + Z ** 2 / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z ** 2 / (4 * n ** 2)) / (1 + Z ** 2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def exact_hits(labels: np.ndarray, preds: np.ndarray) -> tuple[int, int]:
    """(rows exactly right, rows with a label); label 0 is the test datasets' ignore_label_id."""
    k = n = 0
    for row_labels, row_preds in zip(labels, preds):
        scored = row_labels != 0
        if scored.any():
            n += 1
            k += int(np.array_equal(row_preds[scored], row_labels[scored]))
    return k, n


# --------------------------------------------------------------------------------------------
# flags
# --------------------------------------------------------------------------------------------
def test_apply_ema_flags_are_the_ema_flags(tmp_path, setup):
    dataset = setup["dataset"]
    preds = {}
    for flag in ("--apply-ema", "--ema", "--no-apply-ema", "--no-ema"):
        out = tmp_path / flag.strip("-")
        ok(run_eval(setup, out, flag, "--num-workers", "0", "--save-outputs", "preds"))
        record, arrays = written(out)
        assert record["ema"] == (flag in ("--apply-ema", "--ema"))
        preds[flag] = arrays
    for set_name in ("a", "b"):
        live, ema = predicted(setup["live"], dataset, set_name), predicted(setup["ema"], dataset, set_name)
        assert not np.array_equal(live, ema)  # the two weight sets really differ
        for flag in ("--no-apply-ema", "--no-ema"):
            assert np.array_equal(preds[flag][f"{set_name}__preds"], live), flag
        for flag in ("--apply-ema", "--ema"):
            assert np.array_equal(preds[flag][f"{set_name}__preds"], ema), flag


def test_global_batch_size_in_process_is_the_batch_size(tmp_path, setup):
    dataset = setup["dataset"]
    ok(run_eval(setup, tmp_path / "g", "--global-batch-size", "8", "--num-workers", "0", "--one-batch",
                "--save-outputs", "inputs"))
    ok(run_eval(setup, tmp_path / "b", "--batch-size", "8", "--num-workers", "0", "--one-batch",
                "--save-outputs", "inputs"))
    (record, arrays), (reference, reference_arrays) = written(tmp_path / "g"), written(tmp_path / "b")
    assert record["batch_size"] == 8 and record["metrics"] == reference["metrics"]
    # One batch of 8 rows per set: a's first 8 rows (all labelled), all 5 of b (its last has no label).
    assert np.array_equal(arrays["a__inputs"], dataset_rows(dataset, "a", "inputs")[:8])
    assert np.array_equal(arrays["b__inputs"], dataset_rows(dataset, "b", "inputs"))
    assert record["metrics"]["eval/a/count"] == 8 and record["metrics"]["eval/b/count"] == 4
    assert sorted(arrays) == sorted(reference_arrays)


def test_global_batch_size_is_split_over_the_workers(tmp_path, setup, monkeypatch):
    """4 rows per worker for --global-batch-size 8 over 2 workers; the stand-in runs the real
    evaluation in this process (no Ray) with what the CLI asked for."""
    real, seen = eval_run.evaluate_checkpoint, {}

    def in_process(checkpoint, dataset, **kwargs):
        seen.update(kwargs)
        return real(checkpoint, dataset, **{**kwargs, "num_workers": 0})

    monkeypatch.setattr(eval_run, "evaluate_checkpoint", in_process)
    ok(run_eval(setup, tmp_path / "out", "--global-batch-size", "8", "--num-workers", "2", "--one-batch",
                "--save-outputs", "inputs"))
    assert seen["batch_size"] == 4 and seen["num_workers"] == 2
    record, arrays = written(tmp_path / "out")
    assert record["batch_size"] == 4 and len(arrays["a__inputs"]) == 4 and len(arrays["b__inputs"]) == 4


@pytest.mark.parametrize("style", [["inputs", "preds"], ["inputs,preds"], ["inputs, preds"], ["=inputs", "preds"]])
def test_eval_save_outputs_writes_exactly_those_arrays(tmp_path, setup, style):
    dataset = setup["dataset"]
    args = ["--eval-save-outputs" + style[0], *style[1:]] if style[0].startswith("=") else \
        ["--eval-save-outputs", *style]
    ok(run_eval(setup, tmp_path / "out", *args, "--num-workers", "0"))
    _, arrays = written(tmp_path / "out")
    assert sorted(arrays) == ["a__inputs", "a__preds", "b__inputs", "b__preds"]
    for set_name in ("a", "b"):
        assert np.array_equal(arrays[f"{set_name}__inputs"], dataset_rows(dataset, set_name, "inputs"))
        assert np.array_equal(arrays[f"{set_name}__preds"], predicted(setup["ema"], dataset, set_name))


def test_one_batch_evaluates_batch_size_rows(tmp_path, setup):
    result = ok(run_eval(setup, tmp_path / "out", "--one-batch", "--batch-size", "3", "--num-workers", "0",
                         "--eval-save-outputs", "preds"))
    record, arrays = written(tmp_path / "out")
    assert [len(arrays[f"{s}__preds"]) for s in ("a", "b")] == [3, 3]
    assert record["metrics"]["eval/a/count"] == 3 and record["metrics"]["eval/count"] == 6
    assert "\n6 examples in " in result.output


def test_the_forks_readme_command_line_runs_as_typed(tmp_path, setup):
    """The README's multi-GPU eval line, minus torchrun, plus --num-workers 0, plus the fork's
    always-on toggles."""
    out = tmp_path / "sudoku_eval_run"
    ok(run_eval(setup, out, "--eval-save-outputs", "inputs", "labels", "puzzle_identifiers", "preds",
                "--global-batch-size", "4", "--apply-ema", "--eval-only", "--bf16", "--repeats", "1",
                "--num-workers", "0"))
    record, arrays = written(out)
    assert record["ema"] is True and record["batch_size"] == 4
    assert sorted(arrays) == sorted(f"{s}__{k}" for s in "ab" for k in ("inputs", "labels", "puzzle_identifiers",
                                                                       "preds"))
    assert record["metrics"]["eval/a/count"] == 9 and record["metrics"]["eval/b/count"] == 4  # the whole split


def test_config_flag_gives_the_arch_of_a_checkpoint_without_one(tmp_path, setup):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(setup["checkpoint"] / "model.pt", bare / "model.pt")
    result = run_eval(setup, tmp_path / "none", "--num-workers", "0", checkpoint=bare)
    assert result.exit_code != 0 and "all_config.yaml" in result.output
    ok(run_eval(setup, tmp_path / "with", "--num-workers", "0", "--config",
                str(setup["checkpoint"] / "all_config.yaml"), checkpoint=bare))
    ok(run_eval(setup, tmp_path / "beside", "--num-workers", "0"))
    assert written(tmp_path / "with")[0]["metrics"] == written(tmp_path / "beside")[0]["metrics"]


# --------------------------------------------------------------------------------------------
# Wilson lines
# --------------------------------------------------------------------------------------------
def wilson_lines(output: str) -> list[tuple[str, float, float, int, float, float]]:
    """(set, low %, high %, N, approx centre, approx half-width) per printed interval."""
    lines = output.splitlines()
    found = []
    for i, line in enumerate(lines):
        if match := WILSON_LINE.match(line):
            approx = APPROX_LINE.match(lines[i + 1])
            assert approx, lines[i + 1]
            found.append((match[1], float(match[2]), float(match[3]), int(match[4]),
                          float(approx[1]), float(approx[2])))
    return found


def test_wilson_lines_match_the_formula(tmp_path, setup):
    dataset = setup["dataset"]
    result = ok(run_eval(setup, tmp_path / "out", "--num-workers", "0", "--save-outputs", "preds"))
    assert "95% interval" in result.output  # the table stays
    _, arrays = written(tmp_path / "out")
    counts = {s: exact_hits(dataset_rows(dataset, s, "labels"), arrays[f"{s}__preds"]) for s in ("a", "b")}
    # The dataset's construction: a has 3 rows wrong and 1 without labels, b 1 without labels.
    assert counts == {"a": (6, 9), "b": (4, 4)}
    counts["all_sets"] = (10, 13)
    printed = wilson_lines(result.output)
    assert [p[0] for p in printed] == ["a", "b", "all_sets"]
    for name, low, high, n, centre, half in printed:
        k, expected_n = counts[name]
        lo, hi = hand_wilson(k, expected_n)
        assert n == expected_n
        assert abs(low - 100 * lo) <= 0.005 + 1e-9 and abs(high - 100 * hi) <= 0.005 + 1e-9, (name, low, high)
        assert abs(centre - 50 * (lo + hi)) <= 0.005 + 1e-9 and abs(half - 50 * (hi - lo)) <= 0.005 + 1e-9
    # Worked by hand: 6 of 9, p = 2/3, z² = 3.8416, z²/n = 0.426844, so centre = (0.666667 + 0.213422)
    # / 1.426844 = 0.616805 and half = 1.96 * sqrt(0.024691 + 0.011857) / 1.426844 = 0.262610.
    assert printed[0][1:4] == (35.42, 87.94, 9)
    assert printed[1][1:4] == (51.01, 100.00, 4)  # 4 of 4: the upper bound is clipped at 100%


def test_one_set_prints_one_wilson_line(tmp_path, setup):
    """A single-set dataset (the fork's `all`) gets the fork's single line, no `all_sets` repeat."""
    source = setup["dataset"] / "test"
    single = tmp_path / "single"
    write_split(single, {"all": tuple(np.load(source / f"a__{k}.npy").astype(np.int64)
                                      for k in ("inputs", "labels", "puzzle_identifiers"))}, VOCAB, num_ids=4)
    result = ok(run_eval(setup, tmp_path / "out", "--num-workers", "0", dataset=single))
    lo, hi = hand_wilson(6, 9)
    assert wilson_lines(result.output) == [("all", round(100 * lo, 2), round(100 * hi, 2), 9,
                                            round(50 * (lo + hi), 2), round(50 * (hi - lo), 2))]


# --------------------------------------------------------------------------------------------
# errors and help
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["--batch-size", "8", "--global-batch-size", "8"], "either --batch-size"),
    (["--global-batch-size", "8", "--batch-size", "4"], "not both"),
    (["--global-batch-size", "8", "--num-workers", "3"], "--global-batch-size 8 is not divisible by --num-workers 3"),
    (["--global-batch-size", "0"], "--global-batch-size 0 must be >= 1"),
    (["--ema-shadow", "ema.pt"], "drop --ema-shadow"),
    (["--repeats", "3"], "drop --repeats"),
    (["--seed-start", "1"], "drop --seed-start"),
    (["--no-eval-only"], "drop --no-eval-only"),
    (["--no-bf16"], "forward_dtype: float32"),
    (["--nproc_per_node=8"], "pass --num-workers N"),
    (["--nproc-per-node", "8"], "pass --num-workers N"),
    (["--config", "config/cfg_pretrain.yaml"], "does not exist"),
])
def test_errors_are_one_line_and_write_nothing(tmp_path, setup, args, message):
    out = tmp_path / "out"
    result = run_eval(setup, out, *args)
    assert result.exit_code != 0 and message in result.output, result.output
    assert result.output.strip().count("\n") == 0 and "Traceback" not in result.output, result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_hydra_config_is_refused(tmp_path, setup):
    hydra = tmp_path / "cfg_pretrain.yaml"
    hydra.write_text("defaults:\n  - arch: trm\n  - _self_\nglobal_batch_size: 768\nema: true\n")
    result = run_eval(setup, tmp_path / "out", "--num-workers", "0", "--config", str(hydra))
    assert result.exit_code != 0 and "Hydra file" in result.output and "all_config.yaml" in result.output
    assert result.output.strip().count("\n") == 0 and not (tmp_path / "out").exists()


def test_help_lists_the_aliases_with_their_main_flag():
    help_text = CliRunner().invoke(cli, ["eval", "--help"]).output
    assert "--ema, --apply-ema / --no-ema, --no-apply-ema" in help_text
    assert "--save-outputs, --eval-save-outputs" in help_text and "--global-batch-size" in help_text
    options = help_text.split("Options:")[1].split("Examples:")[0]
    for hidden in ("--ema-shadow", "--repeats", "--seed-start", "--no-eval-only", "--bf16", "--nproc"):
        assert hidden not in options, hidden  # accepted or refused, but not listed


# --------------------------------------------------------------------------------------------
# The eval as a W&B run
# --------------------------------------------------------------------------------------------
def test_eval_of_a_run_checkpoint_is_a_wandb_eval_run_beside_the_training_run(tmp_path, setup, offline):
    """A checkpoint inside a run folder: the eval run takes the training run's project and tags
    and holds exactly the metrics metrics.json holds."""
    from trm_ray.config import TrainConfig, to_yaml

    run = tmp_path / "runs" / "sudoku-a"
    shutil.copytree(setup["checkpoint"], run / "checkpoint_0000007")
    recipe = TrainConfig(run_name="sudoku-a", data_paths=[str(setup["dataset"])],
                         tracking={"project": "my-proj", "tags": ["paper"]})
    (run / "config.yaml").write_text(to_yaml(recipe))
    result = ok(run_eval(setup, tmp_path / "out", "--num-workers", "0", checkpoint=run / "checkpoint_0000007",
                         wandb=True))
    [log] = run_files(tmp_path / "out")
    assert f"W&B eval run: {log.parent}" in result.output
    records = log_records(log.read_bytes())
    [header] = of_kind(records, "run")
    assert (header.job_type, header.project, header.display_name) == ("eval", "my-proj",
                                                                     "eval-sudoku-a-checkpoint_0000007")
    assert "paper" in header.tags
    metrics = written(tmp_path / "out")[0]["metrics"]
    summary = summary_of(records)
    assert {k: summary[k] for k in metrics} == metrics

    # --no-wandb: nothing of W&B's
    ok(run_eval(setup, tmp_path / "quiet", "--num-workers", "0"))
    assert not (tmp_path / "quiet" / "wandb").exists()
