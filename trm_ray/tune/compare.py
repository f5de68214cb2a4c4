"""Compare the trials of a sweep: a ranked table, every trial's curve, the winner as a recipe.

    summary = summarize_sweep("runs/sweeps/quickstart-sweep")      # or s3://bucket/sweeps/quickstart-sweep
    print(format_table(summary))
    plot_curves(summary, "curves.png")
    write_best_config(summary, "best.yaml")      # `trm-ray train best.yaml` runs the winner
    print(format_summary(summary, "csv"))        # or "json": the same rows, full precision

Every trial's row names its architecture (arch.name's short name; a sweep over `arch` shows
each trial's label, e.g. `hrm` or `trm(L_cycles=6)`) and its parameter count, which training
reports with every evaluation (trm_ray.run_folder.NUM_PARAMETERS_KEY) and the sweep records keep.
When the architecture varies, those two columns come first and a last line ranks the
architectures by their best trial; otherwise they stand before the wall time.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from trm_ray.config import ConfigError, TrainConfig, build, to_yaml
from trm_ray.storage import StorageError
from trm_ray.tune.records import TrialHistory, read_records, read_sweep_info, trial_histories


@dataclass
class TrialRow:
    history: TrialHistory
    best: Optional[float]
    best_epoch: Optional[float]
    arch: str = "-"  # architecture label: the short name (a sweep over `arch`: the trial's label)
    num_parameters: Optional[int] = None  # as training reported it; None for records without it


@dataclass
class SweepSummary:
    sweep_dir: str
    info: dict[str, Any]
    metric: str
    mode: str
    varied: list[str]
    rows: list[TrialRow]  # best first; trials without the metric last

    @property
    def winner(self) -> Optional[TrialRow]:
        return self.rows[0] if self.rows and self.rows[0].best is not None else None

    @property
    def arch_varies(self) -> bool:
        """The trials differ in architecture (a sweep over arch or arch.name)."""
        return len({row.arch for row in self.rows}) > 1


def summarize_sweep(sweep_dir: str | os.PathLike, metric: Optional[str] = None) -> SweepSummary:
    """Read a sweep folder's records (a local folder or a URI); rank its trials by `metric`
    (default: the sweep's)."""
    try:
        info = read_sweep_info(sweep_dir)
        records = read_records(sweep_dir)
    except (FileNotFoundError, StorageError) as error:
        raise ConfigError(str(error)) from None
    metric = metric or info["metric"]
    mode = info["mode"]
    histories = trial_histories(records)
    reported = {k for h in histories.values() for r in h.results for k in r}
    if histories and any(h.results for h in histories.values()) and metric not in reported:
        known = sorted(k for k in reported if "/" in k)
        raise ConfigError(f"metric {metric!r} was not reported by any trial; reported: {', '.join(known)}")
    rows = []
    labels = _arch_labels(info, list(histories.values()))
    for history, label in zip(histories.values(), labels):
        best = history.best(metric, mode)
        rows.append(TrialRow(history, best[0] if best else None, best[1] if best else None, label,
                             _num_parameters(history)))
    sign = -1.0 if mode == "max" else 1.0
    rows.sort(key=lambda r: (r.best is None, sign * r.best if r.best is not None else 0.0,
                             r.history.index if r.history.index is not None else 1 << 30))
    varied = list(info.get("varied") or [])
    return SweepSummary(str(sweep_dir), info, metric, mode, varied, rows)


def _num_parameters(history: TrialHistory) -> Optional[int]:
    """The parameter count the trial's training reported (every evaluation report carries it)."""
    from trm_ray.run_folder import NUM_PARAMETERS_KEY

    counts = [r[NUM_PARAMETERS_KEY] for r in history.results if isinstance(r.get(NUM_PARAMETERS_KEY), (int, float))]
    return int(counts[-1]) if counts else None


def _arch_labels(info: dict[str, Any], histories: list[TrialHistory]) -> list[str]:
    """Each trial's architecture label: its arch section's short name, from the sweep's base
    recipe with the trial's values; for a sweep over `arch`, the labels the sweep showed."""
    from trm_ray.tune.spec import ARCH_KEY, arch_label, arch_labels, set_key

    if histories and all(isinstance(h.params.get(ARCH_KEY), dict) for h in histories):
        return arch_labels([h.params[ARCH_KEY] for h in histories])
    labels = []
    for history in histories:
        data = info.get("trial_base") or {}
        try:
            for key, value in history.params.items():
                data = set_key(data, key, value)
            labels.append(arch_label((data.get(ARCH_KEY) or {}).get("name")))
        except (ConfigError, ValueError, AttributeError):  # records of another version: show what is there
            labels.append(str(history.params.get(f"{ARCH_KEY}.name", "-")))
    return labels


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_count(count: Optional[int]) -> str:
    """1234567 -> '1.23M', 34210 -> '34.2K', 512 -> '512'; None -> '-'."""
    if count is None:
        return "-"
    if count >= 1_000_000:
        return f"{count / 1e6:.3g}M"
    if count >= 1_000:
        return f"{count / 1e3:.3g}K"
    return str(count)


def _shown_varied(summary: SweepSummary) -> list[str]:
    """Varied keys with a column of their own: the architecture has its own column."""
    from trm_ray.tune.spec import ARCH_KEY

    return [k for k in summary.varied if not (summary.arch_varies and k in (ARCH_KEY, f"{ARCH_KEY}.name"))]


def format_table(summary: SweepSummary) -> str:
    """One line per trial, best first. The arch and params columns lead when the architecture
    varies (what the sweep compares), else they stand before the wall time."""
    varied = _shown_varied(summary)
    lead = summary.arch_varies
    header = ["trial", *(["arch", "params"] if lead else []), *varied, f"best {summary.metric}", "at epoch",
              "epochs run", "stopped early", "status", *([] if lead else ["arch", "params"]), "wall time"]
    lines = [header]
    for row in summary.rows:
        h = row.history
        arch = [row.arch, format_count(row.num_parameters)]
        lines.append([
            h.trial_id,
            *(arch if lead else []),
            *(_format_value(h.params.get(k)) for k in varied),
            "-" if row.best is None else f"{row.best:.4f}",
            "-" if row.best_epoch is None else str(int(row.best_epoch)),
            str(h.epochs_run),
            "yes" if h.stopped_early else "no",
            h.status,
            *([] if lead else arch),
            _format_duration(h.wall_time_s),
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    epochs = sum(row.history.epochs_run for row in summary.rows)
    stopped = sum(row.history.stopped_early for row in summary.rows)
    out.append(f"{len(summary.rows)} trials, {stopped} stopped early, {epochs} trial-epochs "
               f"({summary.mode} {summary.metric})")
    if lead:
        out.append(architecture_ranking(summary))
    return "\n".join(out)


def trial_records(summary: SweepSummary) -> list[dict[str, Any]]:
    """One mapping per trial, best first: what the table shows, with full-precision numbers
    (the CSV and JSON formats)."""
    varied = _shown_varied(summary)
    records = []
    for rank, row in enumerate(summary.rows, 1):
        h = row.history
        records.append({
            "rank": rank if row.best is not None else None,
            "trial": h.trial_id,
            "arch": row.arch,
            "params": row.num_parameters,
            **{k: row.arch if isinstance(h.params.get(k), dict) else h.params.get(k) for k in varied},
            f"best {summary.metric}": row.best,
            "at epoch": row.best_epoch,
            "epochs run": h.epochs_run,
            "stopped early": h.stopped_early,
            "status": h.status,
            "wall time s": round(h.wall_time_s, 3),
        })
    return records


def format_summary(summary: SweepSummary, fmt: str = "table") -> str:
    """The ranked trials as `table` (format_table), `csv` (a header line, one line per trial)
    or `json` ({"sweep_dir", "name", "metric", "mode", "varied", "trials": [...]})."""
    if fmt == "table":
        return format_table(summary)
    records = trial_records(summary)
    if fmt == "json":
        return json.dumps({"sweep_dir": summary.sweep_dir, "name": summary.info.get("name"), "metric": summary.metric,
                           "mode": summary.mode, "varied": summary.varied, "trials": records},
                          indent=1, default=str)
    if fmt == "csv":
        columns = list(records[0]) if records else ["rank", "trial", "arch", "params", f"best {summary.metric}",
                                                     "at epoch", "epochs run", "stopped early", "status",
                                                     "wall time s"]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for record in records:
            writer.writerow(["" if record[c] is None else record[c] for c in columns])
        return out.getvalue().rstrip("\n")
    raise ConfigError(f"format {fmt!r}: use table, csv or json")


def architecture_ranking(summary: SweepSummary) -> str:
    """One line: each architecture's best trial, best first (rows are ranked already)."""
    seen: dict[str, TrialRow] = {}
    for row in summary.rows:
        seen.setdefault(row.arch, row)
    ranked = [f"{arch} {'-' if row.best is None else f'{row.best:.4f}'} ({format_count(row.num_parameters)} params)"
              for arch, row in seen.items()]
    return f"architectures by best {summary.metric}: " + " > ".join(ranked)


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def plot_curves(summary: SweepSummary, path: str | os.PathLike) -> None:
    """Every trial's metric against epochs; trials ASHA stopped are dashed."""
    from trm_ray.figures import new_figure, save_png

    figure, axes = new_figure(figsize=(8, 5))
    for row in summary.rows:
        curve = row.history.curve(summary.metric)
        if not curve:
            continue
        label = row.history.trial_id + (f" {row.arch} ({format_count(row.num_parameters)})"
                                        if summary.arch_varies else "")
        label += "".join(f" {k.split('.')[-1]}={_format_value(row.history.params.get(k))}"
                         for k in _shown_varied(summary))
        axes.plot([p[0] for p in curve], [p[1] for p in curve], marker="o", markersize=3,
                  linestyle="--" if row.history.stopped_early else "-", label=label)
    axes.set_xlabel("epoch")
    axes.set_ylabel(summary.metric)
    axes.set_title(f"sweep {summary.info.get('name', '')}: {summary.metric} ({summary.mode}); dashed = stopped early")
    axes.grid(alpha=0.3)
    if summary.rows:
        axes.legend(fontsize=7, loc="best")
    save_png(figure, path, dpi=120)


def best_config(summary: SweepSummary) -> TrainConfig:
    """The winner's full recipe: the sweep's base and overrides with the trial's values."""
    from trm_ray.tune.spec import set_key

    winner = summary.winner
    if winner is None:
        raise ConfigError(f"no trial of {summary.sweep_dir!r} reported {summary.metric!r} yet: no winner to write")
    data = summary.info["trial_base"]
    for key, value in winner.history.params.items():
        data = set_key(data, key, value)
    # A recipe for a fresh run: not the trial's run name / sweep group.
    data = set_key(data, "run_name", None)
    data = set_key(data, "tracking.group", None)
    return build(TrainConfig, data, f"best trial {winner.history.trial_id}")


def write_best_config(summary: SweepSummary, path: str | os.PathLike) -> TrainConfig:
    config = best_config(summary)
    winner = summary.winner
    assert winner is not None
    params = ", ".join(f"{k}={winner.arch if k == 'arch' and isinstance(v, dict) else _format_value(v)}"
                       for k, v in winner.history.params.items())
    header = (f"# Winner of sweep {summary.info.get('name')} ({summary.sweep_dir}):\n"
              f"#   trial {winner.history.trial_id}: {params}\n"
              f"#   best {summary.metric} = {winner.best:.6g} at epoch {int(winner.best_epoch)}"
              f"{' (stopped early)' if winner.history.stopped_early else ''}\n"
              f"#   trm-ray train {path}\n")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(header + to_yaml(config))
    return config


