"""`trm-ray compare` on a hand-written sweep folder (no Ray): ranking, table, plot, winner recipe."""

from __future__ import annotations

from click.testing import CliRunner

from trm_ray.cli.main import main
from trm_ray.config import load_train_config
from trm_ray.tune.records import append_record, write_sweep_info

METRIC = "eval/accuracy"
BASE = {"data_paths": ["/data/sudoku"], "arch": {"hidden_size": 64, "num_heads": 4}, "global_batch_size": 64,
        "epochs": 8, "eval_interval": 2, "lr": 1e-3, "ray": {"num_workers": 2}}


def make_sweep(tmp_path):
    folder = tmp_path / "sweep"
    trials = [{"lr": 0.0, "arch.H_cycles": 1}, {"lr": 3e-3, "arch.H_cycles": 2}, {"lr": 1e-3, "arch.H_cycles": 1},
              {"lr": 0.0, "arch.H_cycles": 2}]
    write_sweep_info(folder, {"name": "demo", "metric": METRIC, "mode": "max", "trial_base": BASE,
                              "trials": [{"index": i, "params": p} for i, p in enumerate(trials)],
                              "varied": ["lr", "arch.H_cycles"]})
    curves = {"t0": [0.03, 0.03], "t1": [0.2, 0.5, 0.7, 0.9], "t2": [0.15, 0.45, 0.6, 0.95], "t3": []}
    for index, (trial_id, curve) in enumerate(curves.items()):
        append_record(folder, {"event": "trial", "trial_id": trial_id, "index": index, "params": trials[index]})
        for k, value in enumerate(curve):
            append_record(folder, {"event": "result", "trial_id": trial_id, "epoch": 2 * (k + 1), METRIC: value,
                                   "eval/exact_accuracy": value / 2, "time_this_iter_s": 10.0})
        if trial_id == "t0":
            append_record(folder, {"event": "stop", "trial_id": trial_id, "time": 4, "early": True})
        elif curve:
            append_record(folder, {"event": "stop", "trial_id": trial_id, "time": 8, "early": False})
        append_record(folder, {"event": "complete", "trial_id": trial_id})
    # a resumed Train run repeating epoch 8 of t2 with a later value: the latest counts once
    append_record(folder, {"event": "result", "trial_id": "t2", "epoch": 8, METRIC: 0.95, "time_this_iter_s": 1.0})
    return folder


def run(*args):
    return CliRunner().invoke(main, ["compare", *map(str, args)], catch_exceptions=False)


def test_table_is_sorted_by_metric_with_early_stops_and_epochs(tmp_path):
    folder = make_sweep(tmp_path)
    result = run(folder)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["trial", "lr", "arch.H_cycles"]
    body = [line.split() for line in lines[2:6]]
    assert [row[0] for row in body] == ["t2", "t1", "t0", "t3"]  # 0.95 > 0.9 > 0.03 > none
    assert body[0][3:6] == ["0.9500", "8", "8"]  # best, at epoch, epochs run
    assert body[2][6] == "yes" and body[0][6] == "no"  # t0 stopped early
    assert body[0][-1] == "0:41"  # 4 x 10 s + the repeated report's 1 s
    assert "4 trials, 1 stopped early, 20 trial-epochs" in result.output


def test_other_metric_reranks_and_unknown_metric_is_one_line(tmp_path):
    folder = make_sweep(tmp_path)
    assert "best eval/exact_accuracy" in run(folder, "--metric", "eval/exact_accuracy").output
    result = run(folder, "--metric", "eval/acc")
    assert result.exit_code != 0 and result.output.count("\n") == 1 and "eval/acc" in result.output
    result = run(tmp_path / "nothing")
    assert result.exit_code != 0 and "not a sweep folder" in result.output


def test_plot_and_best_config_that_train_accepts(tmp_path):
    folder = make_sweep(tmp_path)
    png, best = tmp_path / "curves.png", tmp_path / "best.yaml"
    result = run(folder, "--plot", png, "--best-config", best)
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    config = load_train_config(best)  # what `trm-ray train best.yaml` loads
    assert config.lr == 1e-3 and config.arch.H_cycles == 1  # t2's values
    assert config.arch.hidden_size == 64 and config.epochs == 8 and config.ray.num_workers == 2
    assert config.run_name is None and config.tracking.group is None
    assert "trial t2" in best.read_text().splitlines()[1]
