"""`trm-ray repro`: multi-seed runs and their statistics; `trm-ray compare --format`.

Fast (no Ray): the t quantile against table values, Welch on hand numbers, a hand-written repro
folder's statistics against hand-computed ones, the repro's W&B run (offline), compare's CSV and
JSON, bad input. Ray (one local Ray for the module, marked ray + slow): a 3-seed repro through the
CLI checked against an independent computation from its runs' metrics.jsonl, `--resume` of the
finished repro, and `--compare` with an lr=0 repro (which never learns) checked with an
independent Welch interval. Tiny 4x4 Sudoku, 1 worker per run, 1-2 epochs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from trm_ray.cli.main import main

T_975_DF2 = 4.302653  # Student t table, 0.975 quantile, 2 degrees of freedom


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval, written out."""
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def t_quantile_by_integration(p: float, df: float) -> float:
    """Student's t quantile from its density (Simpson's rule) and bisection: another route than
    the incomplete beta function the code uses."""
    scale = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float, panels: int = 2000) -> float:
        h = x / panels
        density = [scale * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(panels + 1)]
        return 0.5 + h / 3 * (density[0] + density[-1] + sum((4 if i % 2 else 2) * density[i]
                                                             for i in range(1, panels)))

    low, high = 0.0, 60.0
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < p else (low, middle)
    return (low + high) / 2


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
def test_t_quantile_matches_the_table():
    from trm_ray.tune.repro import t_cdf, t_quantile

    table = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 10: 2.2281, 30: 2.0423, 1000: 1.9623}
    for df, value in table.items():
        assert t_quantile(0.975, df) == pytest.approx(value, abs=5e-5), df
    assert t_quantile(0.95, 5) == pytest.approx(2.0150, abs=5e-5)
    assert t_quantile(0.025, 4) == pytest.approx(-2.7764, abs=5e-5)
    assert t_cdf(0.0, 3) == 0.5 and t_cdf(12.7062, 1) == pytest.approx(0.975, abs=1e-6)
    assert t_quantile_by_integration(0.975, 2) == pytest.approx(T_975_DF2, abs=1e-5)  # the test's own route


def test_welch_interval_on_hand_numbers():
    from trm_ray.tune.repro import welch_interval

    # equal variances (1) and sizes: df = 4, se = sqrt(1/3 + 1/3), t(0.975, 4) = 2.7764
    result = welch_interval([4, 5, 6], [1, 2, 3])
    assert result.difference == 3 and result.df == pytest.approx(4.0)
    assert result.low == pytest.approx(3 - 2.776445 * math.sqrt(2 / 3), abs=1e-5)
    assert result.high == pytest.approx(3 + 2.776445 * math.sqrt(2 / 3), abs=1e-5) and result.differs
    # unequal: variances 1 and 35/12; se^2 = 1/3 + 35/48 = 1.0625; df = 1.0625^2 / ((1/3)^2/2 + (35/48)^2/3)
    result = welch_interval([1, 2, 3], [4, 5, 6, 8])
    assert result.difference == -3.75 and result.se == pytest.approx(math.sqrt(1.0625))
    assert result.df == pytest.approx(4.849596, abs=1e-6)
    assert 2.5706 < result.t < 2.7764  # between the table's df 5 and df 4
    assert result.high < 0 and result.differs
    # overlapping samples: the interval includes 0
    assert not welch_interval([0.5, 0.6, 0.7], [0.55, 0.65, 0.6]).differs
    # no spread on either side: an interval of no width
    flat = welch_interval([0.0, 0.0], [0.0, 0.0, 0.0])
    assert flat.df is None and flat.low == flat.high == 0.0 and not flat.differs


# --------------------------------------------------------------------------------------------
# A hand-written repro folder (what the driver and the runs write)
# --------------------------------------------------------------------------------------------
BASE = {"data_paths": ["/data/sudoku"], "arch": {"hidden_size": 64, "num_heads": 4}, "global_batch_size": 64,
        "epochs": 4, "eval_interval": 2, "ray": {"num_workers": 1}}
# seed -> its evaluations: (step, exact accuracy, puzzles, token accuracy, ARC/pass@2)
HAND = {
    0: [(2, 0.5, 8, 0.80, 0.50), (4, 0.375, 8, 0.85, 0.25)],
    1: [(2, 0.25, 8, 0.70, 0.25), (4, 0.625, 8, 0.90, 0.75)],
    2: [(2, 0.5, 8, 0.75, 0.50), (4, 0.5, 8, 0.80, 0.50)],  # a tie: the later one is kept as the best
}
KEPT = {0: ["checkpoint_0000002", "checkpoint_0000004"], 1: ["checkpoint_0000004"], 2: ["checkpoint_0000004"]}


def make_repro(tmp_path: Path, name: str = "hand") -> Path:
    from trm_ray.tune.records import append_record, write_sweep_info

    folder = tmp_path / name
    seeds = [0, 1, 2, 3]  # seed 3 never started
    write_sweep_info(folder, {"name": name, "source": "hand.yaml", "overrides": ["lr=1e-3"],
                              "spec": {"base": "/recipes/base.yaml"}, "metric": "eval/exact_accuracy", "mode": "max",
                              "trial_base": BASE, "trials": [{"index": i, "params": {"seed": s}} for i, s in
                                                             enumerate(seeds)], "varied": ["seed"]})
    for seed, evaluations in HAND.items():
        trial = f"t{seed}"
        append_record(folder, {"event": "trial", "trial_id": trial, "index": seed, "params": {"seed": seed}})
        run = folder / "train" / trial
        run.mkdir(parents=True)
        lines = [{"train/lm_loss": 1.0, "step": 1}]
        for step, exact, count, accuracy, pass2 in evaluations:
            lines.append({"step": step, "epoch": step, "eval/exact_accuracy": exact, "eval/count": count,
                          "eval/accuracy": accuracy, "ARC/pass@2": pass2, "checkpoint": f"checkpoint_{step:07d}"})
            append_record(folder, {"event": "result", "trial_id": trial, "epoch": step, "eval/exact_accuracy": exact})
        (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        for kept in KEPT[seed]:
            (run / kept).mkdir()
        append_record(folder, {"event": "complete", "trial_id": trial})
    (folder / "repro.json").write_text(json.dumps({"kind": "repro"}))
    return folder


def test_statistics_of_a_repro_folder_match_hand_computation(tmp_path):
    from trm_ray.tune.repro import summarize_repro

    report = summarize_repro(make_repro(tmp_path))
    assert report.seeds == [0, 1, 2, 3] and [r.status for r in report.runs] == ["complete"] * 3 + ["pending"]
    assert [m.metric for m in report.metrics][::2] == ["eval/exact_accuracy", "eval/accuracy", "ARC/pass@2"]
    best = report.stats("eval/exact_accuracy", "best")
    assert best.values == {"0": 0.5, "1": 0.625, "2": 0.5, "3": None} and best.n == 3
    # mean 13/24, std sqrt(((1/24)^2 * 2 + (1/12)^2) / 2), interval mean +- 4.302653 * std / sqrt(3)
    assert best.mean == pytest.approx(0.5416667, abs=1e-7) and best.std == pytest.approx(0.0721688, abs=1e-7)
    assert (best.t_low, best.t_high) == pytest.approx((0.3623895, 0.7209439), abs=1e-6)
    assert (best.correct, best.count) == (13, 24)  # 4 + 5 + 4 of 3 x 8 puzzles
    assert (best.wilson_low, best.wilson_high) == pytest.approx(wilson(13, 24), abs=1e-12)
    final = report.stats("eval/exact_accuracy", "final")
    assert final.values == {"0": 0.375, "1": 0.625, "2": 0.5, "3": None}
    assert (final.mean, final.std) == pytest.approx((0.5, 0.125))
    assert (final.t_low, final.t_high) == pytest.approx((0.1894828, 0.8105172), abs=1e-6)
    assert (final.correct, final.count) == (12, 24)
    # token accuracy and pass@K at the best evaluation; no Wilson interval (they do not count puzzles)
    assert report.stats("eval/accuracy", "best").values == {"0": 0.80, "1": 0.90, "2": 0.80, "3": None}
    assert report.stats("ARC/pass@2", "best").mean == pytest.approx(1.75 / 3)
    assert report.stats("ARC/pass@2", "best").wilson_low is None
    # the best checkpoint each run kept
    assert [Path(r.best_checkpoint).name if r.best_checkpoint else None for r in report.runs] == \
        ["checkpoint_0000002", "checkpoint_0000004", "checkpoint_0000004", None]
    assert "seed(s) 3" in report.notes[0]


def test_compare_shows_a_repro_per_seed_in_three_formats(tmp_path):
    folder = make_repro(tmp_path)
    table = cli("compare", folder)
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[1].split()[:6] == ["metric", "at", "seed", "0", "seed", "1"]
    row = next(line for line in lines if line.startswith("eval/exact_accuracy") and " best " in line).split()
    assert row[2:9] == ["0.5000", "0.6250", "0.5000", "-", "0.5417", "0.0722", "[0.3624,"]
    assert f"{folder}/train/t0/checkpoint_0000002" in table.output

    rows = list(csv.DictReader(io.StringIO(cli("compare", folder, "--format", "csv").output)))
    assert [(r["metric"], r["at"]) for r in rows[:2]] == [("eval/exact_accuracy", "best"),
                                                           ("eval/exact_accuracy", "final")]
    assert float(rows[1]["seed_0"]) == 0.375 and rows[1]["seed_3"] == "" and rows[1]["n"] == "3"
    assert float(rows[0]["wilson_high"]) == pytest.approx(wilson(13, 24)[1], abs=1e-12)

    data = json.loads(cli("compare", folder, "--format", "json", "--metric", "eval/accuracy").output)
    assert {m["metric"] for m in data["metrics"]} == {"eval/accuracy"}
    assert data["metrics"][1]["values"] == {"0": 0.85, "1": 0.90, "2": 0.80, "3": None}  # final
    assert data["runs"][0]["best_step"] == 2 and data["runs"][0]["final_step"] == 4
    result = cli("compare", folder, "--best-config", tmp_path / "best.yaml")
    assert result.exit_code != 0 and "repro" in result.output and not (tmp_path / "best.yaml").exists()


def test_compare_formats_a_sweep_as_csv_and_json(tmp_path):
    from test_compare import make_sweep

    folder = make_sweep(tmp_path)
    result = cli("compare", folder, "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [r["trial"] for r in rows] == ["t2", "t1", "t0", "t3"]
    assert [r["best eval/accuracy"] for r in rows] == ["0.95", "0.9", "0.03", ""]
    assert rows[0]["lr"] == "0.001" and rows[0]["arch.H_cycles"] == "1" and rows[2]["stopped early"] == "True"
    assert rows[0]["wall time s"] == "41.0" and rows[0]["rank"] == "1" and rows[3]["rank"] == ""
    data = json.loads(cli("compare", folder, "--format", "json").output)
    assert data["metric"] == "eval/accuracy" and data["mode"] == "max"
    assert [t["trial"] for t in data["trials"]] == ["t2", "t1", "t0", "t3"]
    assert data["trials"][0]["best eval/accuracy"] == 0.95 and data["trials"][0]["at epoch"] == 8
    assert data["trials"][3]["best eval/accuracy"] is None


def test_repro_run_in_wandb_offline(tmp_path):
    from trm_ray import tracking
    from trm_ray.tune.repro import summarize_repro, track_repro

    report = summarize_repro(make_repro(tmp_path))
    where = track_repro(report)
    assert where is not None and Path(where).parent == tmp_path / "hand" / "wandb"
    wandb_id = tracking.run_id("sudoku-ACT-torch", "repro-hand")  # project from the dataset's name
    state = tracking.logged_state(str(tmp_path / "hand"), wandb_id)
    assert state.summary["repro/eval/exact_accuracy/best/mean"] == pytest.approx(13 / 24)
    assert state.summary["repro/eval/exact_accuracy/final/std"] == pytest.approx(0.125)
    assert state.summary["repro/num_seeds"] == 4
    _, logs = tracking.run_logs(str(tmp_path / "hand"), wandb_id)
    records = list(tracking.read_transaction_log((tmp_path / "hand" / "wandb" / logs[-1]).read_bytes()))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.job_type, run.run_group) == ("repro", "hand")


# --------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, nothing written
# --------------------------------------------------------------------------------------------
def write_base(folder: Path, dataset: str, epochs: int = 2, wandb: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "base.yaml"
    path.write_text(textwrap.dedent(f"""\
        data_paths: [{dataset}]
        arch: {{hidden_size: 32, num_heads: 2, L_layers: 1, H_cycles: 1, L_cycles: 2, halt_max_steps: 2,
                puzzle_emb_ndim: 0, mlp_t: true, pos_encodings: none, forward_dtype: float32}}
        global_batch_size: 64
        epochs: {epochs}
        eval_interval: 1
        lr: 3.0e-3
        lr_warmup_steps: 1
        lr_min_ratio: 1.0
        checkpoint: {{num_to_keep: 1}}
        ray: {{num_workers: 1, resources_per_worker: {{CPU: 0.25}}, storage_path: {folder / 'runs'}}}
        tracking: {{wandb: {str(wandb).lower()}}}
        """))
    return path


@pytest.mark.parametrize("args, words", [
    (["--seeds", "0"], "--seeds 0"),
    (["--seeds", "two"], "not a number"),
    (["--seeds", "1,1"], "listed twice"),
    (["seed=4", "--seeds", "3"], "--seeds"),
    ([], "which seeds"),
    (["--seeds", "2", "--resume"], "no repro to continue"),
    (["--seeds", "2"], "missing-dataset"),  # the dataset is checked before anything is written
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, words):
    base = write_base(tmp_path, str(tmp_path / "missing-dataset"))
    result = cli("repro", base, *args)
    assert result.exit_code != 0 and result.output.count("\n") == 1 and words in result.output, result.output
    assert not (tmp_path / "runs").exists()


def test_missing_recipe_and_a_sweep_to_compare_are_one_line(tmp_path):
    from test_compare import make_sweep

    result = cli("repro", tmp_path / "nope.yaml", "--seeds", "2")
    assert result.exit_code != 0 and result.output.count("\n") == 1 and "nope.yaml" in result.output
    base = write_base(tmp_path, str(tmp_path / "data"))
    result = cli("repro", base, "--seeds", "2", "--compare", make_sweep(tmp_path))
    assert result.exit_code != 0 and result.output.count("\n") == 1 and "not a repro folder" in result.output


def test_repro_file_and_dry_run(tmp_path):
    base = write_base(tmp_path, str(tmp_path / "data"))
    (tmp_path / "sub").mkdir()
    repro_file = tmp_path / "sub" / "zero.yaml"
    repro_file.write_text("base: ../base.yaml\noverrides: {lr: 0.0}\nseeds: 2\nname: zero-lr\n")
    result = cli("repro", repro_file, "epochs=1", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"repro zero-lr: 2 run(s), seeds 0, 1 -> {tmp_path / 'runs' / 'repro' / 'zero-lr'}"
    result = cli("repro", base, "--seeds", "3,7,11", "--dry-run", "--storage-path", tmp_path / "elsewhere")
    assert f"seeds 3, 7, 11 -> {tmp_path / 'elsewhere' / 'base-seeds'}" in result.output
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------------------
# On Ray
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from ray_util import tiny_sudoku4

    return tiny_sudoku4(tmp_path_factory.mktemp("data") / "sudoku4", num_train=128, num_test=64)


@pytest.fixture(scope="module")
def repros(tmp_path_factory, dataset, ray_instance):
    """Two repros on the module's Ray at once: 3 seeds of a 2-epoch recipe through the CLI in this
    process, and 2 seeds of the same with lr=0 and 1 epoch from a repro file, by a second driver
    (a subprocess). Returns (base recipe, repro file, 3-seed folder, lr=0 folder, 3-seed output);
    each run takes 0.25 + 0.1 CPUs, so all five fit the 2 CPUs together."""
    import ray

    root = tmp_path_factory.mktemp("repro")
    base = write_base(root, str(dataset), epochs=2)
    repro_file = root / "zero.yaml"
    repro_file.write_text("base: base.yaml\noverrides: {lr: 0.0, epochs: 1}\nseeds: [0, 1]\nname: zero-lr\n")
    address = ray.get_runtime_context().gcs_address
    log = open(root / "zero.log", "w")
    other = subprocess.Popen([sys.executable, "-m", "trm_ray.cli.main", "repro", str(repro_file), "--address", address],
                             stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, RAY_ADDRESS=address))
    try:
        result = cli("repro", base, "--seeds", "3", "--name", "three")
        assert result.exit_code == 0, result.output[-3000:]
        assert other.wait(timeout=300) == 0, (root / "zero.log").read_text()[-3000:]
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
        log.close()
    folder = root / "runs" / "repro"
    return base, repro_file, folder / "three", folder / "zero-lr", result.output


def runs_by_seed(folder: Path) -> dict[int, Path]:
    """Each run folder under <repro>/train, by the seed its composed config trained with."""
    return {yaml.safe_load((run / "config.yaml").read_text())["seed"]: run for run in (folder / "train").iterdir()}


def evaluations(run: Path) -> dict[str, dict]:
    """From metrics.jsonl itself: the best evaluation (highest exact accuracy, the later on a
    tie) and the final one."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evaluated = [r for r in records if isinstance(r.get("eval/exact_accuracy"), (int, float))
                 and math.isfinite(r["eval/exact_accuracy"])]
    return {"best": max(evaluated, key=lambda r: (r["eval/exact_accuracy"], r["step"])), "final": evaluated[-1]}


@pytest.mark.ray
@pytest.mark.slow
def test_three_seeds_differ_only_in_seed_and_statistics_match(repros):
    _, _, folder, _, output = repros
    runs = runs_by_seed(folder)
    assert sorted(runs) == [0, 1, 2]
    configs = [yaml.safe_load((runs[s] / "config.yaml").read_text()) for s in (0, 1, 2)]
    for config in configs:
        config.pop("seed"), config.pop("run_name")
    assert configs[0] == configs[1] == configs[2] and configs[0]["epochs"] == 2

    saved = json.loads((folder / "repro.json").read_text())
    by_seed = {s: evaluations(runs[s]) for s in (0, 1, 2)}
    for metric in ("eval/exact_accuracy", "eval/accuracy"):
        for at in ("best", "final"):
            values = [by_seed[s][at][metric] for s in (0, 1, 2)]
            mean, std = statistics.mean(values), statistics.stdev(values)
            half = T_975_DF2 * std / math.sqrt(3)
            row = next(m for m in saved["metrics"] if m["metric"] == metric and m["at"] == at)
            assert row["values"] == {str(s): pytest.approx(v, abs=1e-12) for s, v in zip((0, 1, 2), values)}
            assert (row["mean"], row["std"]) == pytest.approx((mean, std), abs=1e-12)
            assert (row["t_low"], row["t_high"]) == pytest.approx((mean - half, mean + half), abs=1e-6)
            printed = next(line for line in output.splitlines() if line.startswith(metric + " ") and f" {at} " in line)
            assert f"{mean:.4f}" in printed and f"[{mean - half:.4f}, {mean + half:.4f}]" in printed
            if metric == "eval/exact_accuracy":
                correct = sum(round(by_seed[s][at][metric] * by_seed[s][at]["eval/count"]) for s in (0, 1, 2))
                count = sum(round(by_seed[s][at]["eval/count"]) for s in (0, 1, 2))
                assert (row["correct"], row["count"]) == (correct, count) and count == 3 * 64
                assert (row["wilson_low"], row["wilson_high"]) == pytest.approx(wilson(correct, count), abs=1e-12)
    # every seed's best checkpoint, listed and kept
    for run in saved["runs"]:
        assert Path(run["best_checkpoint"]).is_dir() and f"seed {run['seed']}: {run['best_checkpoint']}" in output


@pytest.mark.ray
@pytest.mark.slow
def test_resume_of_a_finished_repro_reruns_nothing(repros):
    base, _, folder, _, _ = repros

    def fingerprint() -> dict[str, str]:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted((folder / "train").rglob("*")) if p.is_file() and "wandb" not in p.parts}

    before = fingerprint()
    result = cli("repro", base, "--name", "three", "--resume")  # the seeds: the repro's own
    assert result.exit_code == 0, result.output[-3000:]
    assert "3 of 3 trials finished" in result.output
    assert fingerprint() == before


@pytest.mark.ray
@pytest.mark.slow
def test_compare_with_an_lr0_repro_gives_welch_interval(repros):
    _, repro_file, three, zero, _ = repros
    train = {p: p.stat().st_mtime_ns for p in (zero / "train").rglob("*") if "wandb" not in p.parts}
    # a finished repro compared afterwards: --resume reruns nothing and adds the comparison
    result = cli("repro", repro_file, "--resume", "--compare", three)
    assert result.exit_code == 0, result.output[-3000:]
    assert "2 of 2 trials finished" in result.output
    assert {p: p.stat().st_mtime_ns for p in (zero / "train").rglob("*") if "wandb" not in p.parts} == train
    saved = json.loads((zero / "repro.json").read_text())
    assert saved["comparison"]["other_dir"] == str(three)

    ours = [evaluations(run)["best"]["eval/accuracy"] for run in runs_by_seed(zero).values()]
    theirs = [evaluations(run)["best"]["eval/accuracy"] for run in runs_by_seed(three).values()]
    va, vb = statistics.variance(ours) / 2, statistics.variance(theirs) / 3
    df = (va + vb) ** 2 / (va ** 2 / 1 + vb ** 2 / 2)
    difference = statistics.mean(ours) - statistics.mean(theirs)
    half = t_quantile_by_integration(0.975, df) * math.sqrt(va + vb)
    row = next(r for r in saved["comparison"]["rows"] if r["metric"] == "eval/accuracy" and r["at"] == "best")
    assert row["difference"] == pytest.approx(difference, abs=1e-12) and row["df"] == pytest.approx(df, rel=1e-9)
    assert (row["low"], row["high"]) == pytest.approx((difference - half, difference + half), abs=1e-6)
    # lr=0 never learns: well below the trained seeds, and the interval says so
    assert row["high"] < 0 and row["differs"] is True
    assert "eval/accuracy (best)" in result.output and "they differ" in row["sentence"]
    # compare re-reads both repros; the comparison stays with the repro that asked for it
    # (raw_decode: log lines of Ray's workers may follow on this process's stdout)
    data, _ = json.JSONDecoder().raw_decode(cli("compare", zero, "--format", "json").output)
    assert data["comparison"]["rows"] == saved["comparison"]["rows"]
