"""Reproduction runs: one recipe trained with K seeds, every seed to the end, and what the seeds
say together (mean, spread, intervals), not the luckiest seed.

    repro = load_repro("experiments/quickstart.yaml", ["epochs=20"], seeds=[0, 1, 2])
    repro_dir = run_repro(repro)                        # a sweep over `seed` only, ASHA off
    report = summarize_repro(repro_dir)                 # per seed + mean, std, t and Wilson intervals
    report.comparison = compare_reports(report, summarize_repro("runs/repro/other-seeds"))
    write_report(report); print(format_report(report))

A repro IS a sweep (trm_ray.tune.driver.run_sweep) whose only searched key is `seed`, a grid
over the seeds, with early stopping off: its runs go as parallel as the cluster allows,
`--resume` continues it like a sweep, and its W&B runs share its group. Its folder is a sweep
folder (sweep.json, trials.jsonl, train/<trial>/) plus:
    repro.json   this module's report (format_report(..., "json")); its presence is what makes
                 the folder a repro for `trm-ray compare` and `trm-ray repro --compare`.

Statistics, for eval/exact_accuracy, each eval/<set>/exact_accuracy, eval/accuracy and each
ARC/pass@K the runs report, at two evaluations of every seed: `best` (the report with the best
eval/exact_accuracy: the checkpoint the run keeps as its best) and `final` (the last evaluation):
    mean, std       over seeds; std is the sample standard deviation (n - 1)
    t interval      mean +- t_{0.975, n-1} * std / sqrt(n): where the mean over seeds of this
                    recipe lies, training noise included (not clipped to [0, 1])
    pooled Wilson   wilson_interval(correct puzzles summed over seeds, evaluated puzzles summed):
                    test-set noise only, treating the seeds' evaluations as one bigger sample;
                    exact accuracies only (they count puzzles), where eval counts were reported
A comparison of two repros gives, per metric, the difference of the means with Welch's 95%
interval (unequal variances; Welch-Satterthwaite degrees of freedom) and whether it excludes 0.
The t quantile is computed here (regularized incomplete beta; no scipy).

A repro file (optional, instead of a recipe): base, overrides, seeds, name, and the sweep file's
storage_path, resources and max_concurrent_trials:
    base: ../quickstart.yaml      # relative to this file
    overrides: {epochs: 20}       # or [epochs=20, ...]
    seeds: [0, 1, 2]              # or a count: 3 (seeds 0, 1, 2)
    name: quickstart-seeds
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from trm_ray import storage
from trm_ray.config import ConfigError, TrainConfig, build, read_yaml, set_key
from trm_ray.errors import first_line
from trm_ray.jsonl import json_safe
from trm_ray.overrides import compose, load_recipe
from trm_ray.run_folder import is_metric_value

REPRO_FILE = "repro.json"
REPRO_FORMAT = 1  # repro.json's layout version
SEED_KEY = "seed"
CONFIDENCE = 0.95
REPORT_METRIC = "eval/exact_accuracy"  # what picks a run's best evaluation (the checkpoint it keeps)
AT = ("best", "final")
FORMATS = ("table", "csv", "json")
JOB_REPRO = "repro"  # the W&B job_type of the repro's own run
# Keys of a repro file; anything else means the file is a training recipe.
REPRO_FILE_KEYS = ("base", "overrides", "seeds", "name", "storage_path", "resources", "max_concurrent_trials")


# --------------------------------------------------------------------------------------------
# Statistics over seeds (pure Python)
# --------------------------------------------------------------------------------------------
def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function, evaluated with the
    modified Lentz method; converges fast for x < (a + 1) / (a + b + 2)."""
    tiny, epsilon = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 10_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),        # even term
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # odd term
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            step = c * d
            fraction *= step
        if abs(step - 1.0) < epsilon:
            break
    return fraction


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"regularized_incomplete_beta needs 0 <= x <= 1, got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    # the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) keeps the fraction in its fast range
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df > 0 degrees of freedom (df need not be whole: Welch)."""
    if df <= 0:
        raise ValueError(f"Student's t needs df > 0, got {df}")
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with t_cdf(t, df) = p (0 < p < 1), by bisection: t_quantile(0.975, 2) = 4.3027."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile needs 0 < p < 1, got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


@dataclass
class SeedStats:
    """Mean, sample std and the t interval of values over seeds (std and interval need n >= 2)."""

    n: int
    mean: Optional[float]
    std: Optional[float]
    t: Optional[float]  # t_{0.975, n-1}
    low: Optional[float]
    high: Optional[float]


def seed_stats(values: Sequence[float], confidence: float = CONFIDENCE) -> SeedStats:
    n = len(values)
    if n == 0:
        return SeedStats(0, None, None, None, None, None)
    mean = statistics.fmean(values)
    if n < 2:
        return SeedStats(n, mean, None, None, None, None)
    std = statistics.stdev(values)
    t = t_quantile(0.5 + confidence / 2.0, n - 1)
    half = t * std / math.sqrt(n)
    return SeedStats(n, mean, std, t, mean - half, mean + half)


@dataclass
class WelchResult:
    """mean(a) - mean(b) with Welch's interval; df None when neither side varies (the interval
    then has no width)."""

    difference: float
    se: float
    df: Optional[float]
    t: Optional[float]
    low: float
    high: float

    @property
    def differs(self) -> bool:
        return self.low > 0 or self.high < 0


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> WelchResult:
    """Welch's interval of mean(a) - mean(b) (unequal variances, Welch-Satterthwaite df)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's interval needs 2 or more values on each side, got {len(a)} and {len(b)}")
    difference = statistics.fmean(a) - statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return WelchResult(difference, 0.0, None, None, difference, difference)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    t = t_quantile(0.5 + confidence / 2.0, df)
    return WelchResult(difference, se, df, t, difference - t * se, difference + t * se)


# --------------------------------------------------------------------------------------------
# A repro: the sweep over seeds
# --------------------------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    """`--seeds 3` (seeds 0, 1, 2) or `--seeds 3,7,11` (those seeds)."""
    items = [item.strip() for item in str(text).split(",")]
    usage = "give a count (3: seeds 0, 1, 2) or a comma list of seeds (3,7,11)"
    try:
        numbers = [int(item) for item in items]
    except ValueError:
        raise ConfigError(f"--seeds {text}: not a number; {usage}") from None
    if len(numbers) == 1:
        if numbers[0] < 1:
            raise ConfigError(f"--seeds {text}: a repro needs at least 1 seed (2 or more for an interval); {usage}")
        return list(range(numbers[0]))
    return check_seeds(numbers, f"--seeds {text}")


def check_seeds(seeds: Sequence[Any], where: str) -> list[int]:
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ConfigError(f"{where}: seeds must be integers >= 0, e.g. [0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seed {next(s for s in seeds if list(seeds).count(s) > 1)} is listed twice")
    return list(seeds)


@dataclass
class Repro:
    """A loaded repro: its sweep (search space: seed) and the trials' values."""

    sweep: Any  # trm_ray.tune.spec.Sweep
    seeds: list[int]

    @property
    def trials(self) -> list[dict[str, Any]]:
        return [{SEED_KEY: seed} for seed in self.seeds]

    @property
    def name(self) -> str:
        return self.sweep.name

    def directory(self) -> str:
        return self.sweep.directory()


def is_repro_file(data: dict[str, Any]) -> bool:
    """A repro file (base + repro keys) rather than a training recipe."""
    return "base" in data and all(key in REPRO_FILE_KEYS for key in data)


def load_repro(recipe: str | os.PathLike, overrides: Sequence[str] = (), seeds: Optional[Sequence[int]] = None,
               name: Optional[str] = None, storage_path: Optional[str] = None, *, resume: bool = False) -> Repro:
    """A repro of `recipe` (a training recipe or a repro file) with the overrides (key=value,
    after a repro file's own) over `seeds` (else the repro file's). resume=True: seeds and
    overrides not given are those the repro's folder recorded. Every run's config is
    validated here, before anything starts."""
    path = Path(recipe)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} does not exist; pass a training recipe (experiments/*.yaml) "
                          f"or a repro file")
    data = read_yaml(path)
    file = data if is_repro_file(data) else {}
    for item in [*overrides, *(file.get("overrides") if isinstance(file.get("overrides"), list) else [])]:
        if item.split("=", 1)[0].lstrip("+").strip() == SEED_KEY:
            raise ConfigError(f"override {item}: the seed is what a repro varies; give the seeds with --seeds "
                              f"(e.g. --seeds 3,7,11)")
    if seeds is None and file.get("seeds") is not None:
        file_seeds = file["seeds"]
        seeds = parse_seeds(str(file_seeds)) if isinstance(file_seeds, int) and not isinstance(file_seeds, bool) \
            else check_seeds(file_seeds if isinstance(file_seeds, list) else [file_seeds], f"{path}: seeds")
    if resume and (seeds is None or not overrides):
        # where the folder is does not depend on the seeds: a first look with any seed finds it
        directory = _repro_of(path, file, overrides, [0], name, storage_path).directory()
        recorded = recorded_run(directory)
        if not recorded:
            raise ConfigError(f"--resume: no repro to continue in {directory}; run it without --resume")
        seeds = seeds if seeds is not None else recorded["seeds"]
        overrides = overrides or recorded["overrides"]
    if seeds is None:
        raise ConfigError(f"{path}: which seeds? pass --seeds K (seeds 0..K-1) or --seeds 3,7,11")
    return _repro_of(path, file, overrides, check_seeds(list(seeds), "--seeds"), name, storage_path)


def _repro_of(path: Path, file: dict[str, Any], overrides: Sequence[str], seeds: list[int], name: Optional[str],
              storage_path: Optional[str]) -> Repro:
    from trm_ray.tune.spec import Sweep, SweepSpec, expand_trials

    base_path = path
    if file:
        base_path = Path(file["base"]) if Path(file["base"]).is_absolute() else path.parent / file["base"]
        if not base_path.is_file():
            raise ConfigError(f"{path}: base recipe {file['base']!r} does not exist (paths are relative to the "
                              f"repro file)")
    file_overrides = file.get("overrides") or {}
    base = load_recipe(base_path, list(file_overrides) if isinstance(file_overrides, list) else [])
    if isinstance(file_overrides, dict):
        for key, value in file_overrides.items():
            if key == SEED_KEY:
                raise ConfigError(f"{path}: overrides sets seed, which a repro varies; list the seeds under seeds:")
            base = set_key(base, key, value, source=f"{path}: overrides")
    base = compose(base, list(overrides), base_path.parent, str(base_path))
    config = build(TrainConfig, base, f"{base_path}" + (" with the overrides" if overrides or file_overrides else ""))
    default_name = (file.get("name") or path.stem) if file else f"{path.stem}-seeds"
    spec = build(SweepSpec, {
        "name": name or default_name,
        "base": str(base_path.resolve()),
        "overrides": file_overrides,
        "search_space": {SEED_KEY: {"grid": seeds}},
        "metric": REPORT_METRIC,
        "mode": "max",
        # every seed runs to the end: the rungs sit above max_t, so nothing is judged
        "asha": {"time_attr": "eval_round", "grace_period": 1, "enabled": False},
        "resources": file.get("resources") or {},
        "max_concurrent_trials": file.get("max_concurrent_trials"),
        "storage_path": storage_path or file.get("storage_path") or storage.join(config.ray.storage_path, "repro"),
    }, str(path))
    sweep = Sweep(spec, path, base, list(overrides), base_path.parent)
    expand_trials(sweep)  # every seed's full config validated
    return Repro(sweep, seeds)


def recorded_run(repro_dir: str) -> dict[str, Any]:
    """What an existing repro folder was started with: {"seeds", "overrides"}; {} when none is there."""
    from trm_ray.tune.records import read_sweep_info

    try:
        info = read_sweep_info(repro_dir)
    except (FileNotFoundError, storage.StorageError):
        return {}
    return {"seeds": [t["params"].get(SEED_KEY) for t in info.get("trials", [])],
            "overrides": list(info.get("overrides") or [])}


def check_folder(repro: Repro, resume: bool) -> None:
    """The repro's folder is new (or, with resume, a repro to continue), else a one-line error."""
    from trm_ray.tune.records import read_sweep_info, sweep_started

    directory = repro.directory()
    try:
        started = sweep_started(directory)
        marked = storage.is_file(storage.join(directory, REPRO_FILE))
        searched = {key for t in read_sweep_info(directory).get("trials", []) for key in t["params"]} \
            if started else set()
    except storage.StorageError as error:
        raise ConfigError(f"repro folder {directory}: {error}") from None
    if started and not marked and searched != {SEED_KEY}:
        raise ConfigError(f"{directory} holds a sweep that is not a repro (it searches {', '.join(sorted(searched))})"
                          f"; give the repro another --name")
    if started and not resume:
        raise ConfigError(f"repro folder {directory} already exists: continue it with --resume (nothing finished "
                          f"reruns), or give another --name")
    if resume and not started:
        raise ConfigError(f"--resume: no repro to continue in {directory}; run it without --resume")


def run_repro(repro: Repro, *, resume: bool = False, address: Optional[str] = None,
              log: Callable[[str], None] = print, compare_with: Optional["ReproReport"] = None) -> "ReproReport":
    """Run (or with resume=True continue) the repro's sweep, then write its report (with the
    comparison to `compare_with`) to repro.json and return it. repro.json marks the folder as a
    repro from the launch on (a driver killed mid-way leaves a repro to --resume); a repro
    whose runs failed still gets the report of what they reported."""
    from trm_ray.tune.driver import check_trials, run_sweep
    from trm_ray.tune.records import sweep_started

    directory = repro.directory()
    check_trials(repro.sweep, repro.trials)  # a missing dataset is one line before the folder is made
    marker = storage.join(directory, REPRO_FILE)
    fresh = not storage.is_file(marker)
    if fresh:
        storage.write_text(marker, json.dumps({"kind": JOB_REPRO, "format": REPRO_FORMAT, "name": repro.name,
                                               "seeds": repro.seeds}))
    try:
        run_sweep(repro.sweep, repro.trials, resume=resume, address=address, log=log)
    except BaseException:
        with contextlib.suppress(Exception):  # the error that stopped the sweep is the one to report
            if sweep_started(directory):
                write_report(summarize_repro(directory))
            elif fresh:  # stopped before anything ran (its inputs): leave no folder behind
                storage.delete_file(marker)
                if not storage.is_uri(directory):
                    os.rmdir(directory)  # only when empty
        raise
    if compare_with is None:
        report = load_report(directory)  # a comparison made before is kept, on the new results
    else:
        report = summarize_repro(directory)
        report.comparison = compare_reports(report, compare_with)
    write_report(report)
    return report


# --------------------------------------------------------------------------------------------
# The report: every seed's best and final evaluation, and the statistics over seeds
# --------------------------------------------------------------------------------------------
@dataclass
class SeedRun:
    seed: int
    trial_id: Optional[str]  # None: never started
    run_dir: Optional[str]
    status: str  # pending | running | complete | error (the sweep records' status)
    best_checkpoint: Optional[str] = None  # the kept checkpoint of the best evaluation
    best_step: Optional[int] = None
    best_epoch: Optional[float] = None
    final_step: Optional[int] = None
    final_epoch: Optional[float] = None


@dataclass
class MetricStats:
    """One metric at one evaluation (`best` or `final`) over the seeds."""

    metric: str
    at: str
    values: dict[str, Optional[float]]  # str(seed) -> value (None: that seed did not report it)
    n: int
    mean: Optional[float]
    std: Optional[float]
    t: Optional[float]
    t_low: Optional[float]
    t_high: Optional[float]
    correct: Optional[int] = None  # pooled over seeds (exact accuracies with an eval count)
    count: Optional[int] = None
    wilson_low: Optional[float] = None
    wilson_high: Optional[float] = None


@dataclass
class ComparisonRow:
    """mean(this repro) - mean(the other) for one metric at one evaluation."""

    metric: str
    at: str
    mean: Optional[float]
    other_mean: Optional[float]
    difference: Optional[float]
    df: Optional[float]
    low: Optional[float]
    high: Optional[float]
    differs: Optional[bool]
    sentence: str


@dataclass
class ReproReport:
    name: str
    repro_dir: str
    recipe: str
    overrides: list[str]
    seeds: list[int]
    runs: list[SeedRun]
    metrics: list[MetricStats]
    comparison: Optional[dict[str, Any]] = None  # {"other": name, "other_dir": folder, "rows": [ComparisonRow]}
    kind: str = JOB_REPRO
    format: int = REPRO_FORMAT
    notes: list[str] = field(default_factory=list)

    def stats(self, metric: str, at: str) -> Optional[MetricStats]:
        return next((m for m in self.metrics if m.metric == metric and m.at == at), None)

    def to_json(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def is_repro(folder: str | os.PathLike) -> bool:
    """`folder` holds a repro (its repro.json), a local path or a URI."""
    try:
        return storage.is_file(storage.join(str(folder), REPRO_FILE))
    except storage.StorageError as error:
        raise ConfigError(f"{folder}: {error}") from None


def reported_metrics(records: Sequence[dict[str, Any]]) -> list[str]:
    """The metrics a repro reports on, in table order: eval/exact_accuracy, each set's exact
    accuracy (where there are several sets: one set's is the total again), eval/accuracy,
    ARC/pass@K by K."""
    keys = {k for record in records for k in record if isinstance(record.get(k), (int, float))}
    sets = sorted(k for k in keys if k.startswith("eval/") and k.count("/") == 2 and k.endswith("/exact_accuracy"))
    sets = sets if len(sets) > 1 else []
    passes = sorted((k for k in keys if k.startswith("ARC/pass@")), key=lambda k: int(k.rsplit("@", 1)[1])
                    if k.rsplit("@", 1)[1].isdigit() else 1 << 30)
    return [k for k in (REPORT_METRIC, *sets, "eval/accuracy") if k in keys] + passes


def _count_key(metric: str) -> Optional[str]:
    """eval/count for eval/exact_accuracy, eval/<set>/count for a set's: the puzzles it counts."""
    if metric.startswith("eval/") and metric.endswith("/exact_accuracy"):
        return metric[: -len("exact_accuracy")] + "count"
    return None


def _evaluations(run_dir: str) -> tuple[Optional[dict[str, Any]], Optional[dict[str, Any]], Optional[str]]:
    """(best evaluation, final evaluation, best kept checkpoint) of one run."""
    from trm_ray.run_folder import read_metrics, summarize

    def evaluated(record: dict[str, Any]) -> bool:
        return is_metric_value(record.get(REPORT_METRIC))

    result = summarize(run_dir)  # the best report and the checkpoint the run kept for it
    finals = [r for r in read_metrics(run_dir) if evaluated(r)]
    best = result.best if result.best and evaluated(result.best) else None
    return best, (finals[-1] if finals else None), result.best_checkpoint


def summarize_repro(repro_dir: str | os.PathLike) -> ReproReport:
    """Read a repro folder (local or a URI): each seed's run, and the statistics over seeds."""
    from trm_ray.tune.records import TRAIN_DIR, read_records, read_sweep_info, trial_histories

    repro_dir = str(repro_dir) if storage.is_uri(repro_dir) else os.path.abspath(os.path.expanduser(repro_dir))
    if not is_repro(repro_dir):
        raise ConfigError(f"{repro_dir!r} is not a repro folder (no {REPRO_FILE}); pass the folder "
                          f"`trm-ray repro` printed")
    try:
        info = read_sweep_info(repro_dir)
        histories = trial_histories(read_records(repro_dir))
    except (FileNotFoundError, storage.StorageError) as error:
        raise ConfigError(str(error)) from None
    seeds = [t["params"][SEED_KEY] for t in info.get("trials", [])]
    by_seed = {h.params.get(SEED_KEY): h for h in histories.values()}
    runs, evaluations = [], {}
    for seed in seeds:
        history = by_seed.get(seed)
        if history is None:
            runs.append(SeedRun(seed, None, None, "pending"))
            continue
        run_dir = storage.join(repro_dir, TRAIN_DIR, history.trial_id)
        best, final, checkpoint = _evaluations(run_dir)
        evaluations[seed] = {"best": best, "final": final}
        runs.append(SeedRun(seed, history.trial_id, run_dir, history.status, checkpoint,
                            *(_position(best)), *(_position(final))))
    records = [r for e in evaluations.values() for r in e.values() if r]
    metrics = []
    for metric in reported_metrics(records):
        for at in AT:
            metrics.append(_metric_stats(metric, at, seeds, evaluations))
    notes = []
    missing = [run.seed for run in runs if run.seed not in evaluations or evaluations[run.seed]["best"] is None]
    if missing:
        notes.append(f"seed(s) {', '.join(map(str, missing))} reported no evaluation yet: the statistics are "
                     f"over the other seeds")
    unfinished = [f"{run.seed} ({run.status})" for run in runs
                  if run.seed in evaluations and evaluations[run.seed]["best"] and run.status != "complete"]
    if unfinished:
        notes.append(f"seed(s) {', '.join(unfinished)} did not finish: their final is their last evaluation so far")
    return ReproReport(name=info.get("name", storage.name_of(repro_dir)), repro_dir=repro_dir,
                       recipe=str(info.get("spec", {}).get("base") or info.get("source")),
                       overrides=list(info.get("overrides") or []), seeds=seeds, runs=runs, metrics=metrics,
                       notes=notes)


def _position(record: Optional[dict[str, Any]]) -> tuple[Optional[int], Optional[float]]:
    if not record:
        return None, None
    step = record.get("step")
    return (int(step) if isinstance(step, (int, float)) else None), record.get("epoch")


def _metric_stats(metric: str, at: str, seeds: list[int], evaluations: dict[int, dict[str, Any]]) -> MetricStats:
    from trm_ray.eval.core import wilson_interval  # (imports torch: only once there are runs to read)

    values: dict[str, Optional[float]] = {}
    correct, count, counted = 0, 0, True
    count_key = _count_key(metric)
    for seed in seeds:
        record = (evaluations.get(seed) or {}).get(at)
        value = record.get(metric) if record else None
        value = float(value) if is_metric_value(value) else None
        values[str(seed)] = value
        if value is None:
            continue
        seed_count = record.get(count_key) if count_key else None
        if isinstance(seed_count, (int, float)) and seed_count > 0:
            # the metric is correct / count of whole puzzles: the count of correct ones is exact
            correct += round(value * seed_count)
            count += round(seed_count)
        else:
            counted = False
    present = [v for v in values.values() if v is not None]
    stats = seed_stats(present)
    row = MetricStats(metric, at, values, stats.n, stats.mean, stats.std, stats.t, stats.low, stats.high)
    if present and counted and count_key:
        row.correct, row.count = correct, count
        row.wilson_low, row.wilson_high = wilson_interval(correct, count)
    return row


def compare_reports(report: ReproReport, other: ReproReport) -> dict[str, Any]:
    """Welch's interval of mean(report) - mean(other) for every metric both report, at best and
    final; {"other", "other_dir", "rows": [ComparisonRow as dicts]}."""
    rows = []
    for stats in report.metrics:
        theirs = other.stats(stats.metric, stats.at)
        if theirs is None:
            continue
        ours_values = [v for v in stats.values.values() if v is not None]
        their_values = [v for v in theirs.values.values() if v is not None]
        label = f"{stats.metric} ({stats.at})"
        if len(ours_values) < 2 or len(their_values) < 2:
            rows.append(ComparisonRow(stats.metric, stats.at, stats.mean, theirs.mean, None, None, None, None, None,
                                      f"{label}: no interval: Welch's needs 2 or more seeds in each repro "
                                      f"({len(ours_values)} and {len(their_values)})"))
            continue
        welch = welch_interval(ours_values, their_values)
        verdict = ("the interval excludes 0: they differ" if welch.differs
                   else "the interval includes 0: no difference shown with these seeds")
        spread = " (no spread over seeds in either)" if welch.df is None else f" (df {welch.df:.1f})"
        rows.append(ComparisonRow(
            stats.metric, stats.at, stats.mean, theirs.mean, welch.difference, welch.df, welch.low, welch.high,
            welch.differs,
            f"{label}: {report.name} {stats.mean:.4f} - {other.name} {theirs.mean:.4f} = {welch.difference:+.4f}, "
            f"95% Welch interval [{welch.low:+.4f}, {welch.high:+.4f}]{spread}; {verdict}"))
    return {"other": other.name, "other_dir": other.repro_dir, "rows": [asdict(r) for r in rows]}


def write_report(report: ReproReport) -> str:
    """<repro>/repro.json, replaced whole (a temporary name locally, one PUT on object storage)."""
    location = storage.join(report.repro_dir, REPRO_FILE)
    storage.write_text(location, json.dumps(report.to_json(), indent=1))
    return location


def read_report(repro_dir: str | os.PathLike) -> dict[str, Any]:
    """repro.json as written (the comparison of the last `trm-ray repro --compare` included)."""
    try:
        return json.loads(storage.read_text(storage.join(str(repro_dir), REPRO_FILE)))
    except (FileNotFoundError, storage.StorageError, ValueError) as error:
        raise ConfigError(f"{repro_dir}: {REPRO_FILE} unreadable: {error}") from None


def load_report(repro_dir: str | os.PathLike) -> ReproReport:
    """A repro folder's report, recomputed from its runs (a resumed repro's newer results
    count), with the comparison of its last `--compare` recomputed while that folder is still
    a repro."""
    report = summarize_repro(repro_dir)
    other_dir = (read_report(repro_dir).get("comparison") or {}).get("other_dir")
    with contextlib.suppress(ConfigError):  # the other repro moved or was deleted: no comparison
        if other_dir:
            report.comparison = compare_reports(report, summarize_repro(other_dir))
    return report


# --------------------------------------------------------------------------------------------
# Formats: table, csv, json
# --------------------------------------------------------------------------------------------
def _number(value: Optional[float], digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _interval(low: Optional[float], high: Optional[float]) -> str:
    return "-" if low is None or high is None else f"[{low:.4f}, {high:.4f}]"


def _rows(report: ReproReport, metric: Optional[str]) -> list[MetricStats]:
    rows = [m for m in report.metrics if metric is None or m.metric == metric]
    if metric is not None and not rows:
        known = sorted({m.metric for m in report.metrics})
        raise ConfigError(f"metric {metric!r} is not in repro {report.name}; it has: {', '.join(known) or 'none yet'}")
    return rows


def format_report(report: ReproReport, fmt: str = "table", metric: Optional[str] = None) -> str:
    """The repro as a table (seeds as columns), CSV (one line per metric and evaluation) or JSON
    (repro.json's content); `metric` keeps that metric's rows only."""
    rows = _rows(report, metric)
    if fmt == "json":
        data = report.to_json()
        data["metrics"] = [m for m in data["metrics"] if metric is None or m["metric"] == metric]
        return json.dumps(data, indent=1)
    if fmt == "csv":
        return _csv(report, rows)
    if fmt != "table":
        raise ConfigError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    return _table(report, rows)


def _csv(report: ReproReport, rows: list[MetricStats]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["metric", "at", *(f"seed_{s}" for s in report.seeds), "n", "mean", "std", "t_low", "t_high",
                     "correct", "count", "wilson_low", "wilson_high"])
    for m in rows:
        writer.writerow([m.metric, m.at, *("" if m.values.get(str(s)) is None else repr(m.values[str(s)])
                                           for s in report.seeds),
                         m.n, *("" if v is None else repr(v) for v in (m.mean, m.std, m.t_low, m.t_high, m.correct,
                                                                      m.count, m.wilson_low, m.wilson_high))])
    return out.getvalue().rstrip("\n")


def _table(report: ReproReport, rows: list[MetricStats]) -> str:
    header = ["metric", "at", *(f"seed {s}" for s in report.seeds), "mean", "std", "95% t interval",
              "pooled Wilson 95%"]
    lines = [header]
    for m in rows:
        wilson = "-" if m.count is None else f"{_interval(m.wilson_low, m.wilson_high)} {m.correct}/{m.count}"
        lines.append([m.metric, m.at, *(_number(m.values.get(str(s))) for s in report.seeds), _number(m.mean),
                      _number(m.std), _interval(m.t_low, m.t_high), wilson])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [f"repro {report.name} ({report.repro_dir}): {len(report.seeds)} seed(s), every one run to the end"]
    out += ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(2, "  ".join("-" * w for w in widths))
    if not rows:
        out.append("(no evaluation reported yet)")
    out.append("best = the evaluation with the best eval/exact_accuracy (the checkpoint kept), final = the last; "
               "t interval: mean +- t(0.975, n-1) std/sqrt(n) over seeds (training noise); pooled Wilson: all "
               "seeds' correct puzzles over all evaluated ones (test-set noise only)")
    out.append("best checkpoints:")
    for run in report.runs:
        where = run.best_checkpoint or f"- ({run.status})"
        at = f" (step {run.best_step}, epoch {_format_epoch(run.best_epoch)})" if run.best_checkpoint else ""
        out.append(f"  seed {run.seed}: {where}{at}")
    out += report.notes
    if report.comparison:
        out.append(f"compared with repro {report.comparison['other']} ({report.comparison['other_dir']}):")
        out += [f"  {row['sentence']}" for row in report.comparison["rows"]
                if not rows or row["metric"] in {m.metric for m in rows}]
    return "\n".join(out)


def _format_epoch(epoch: Any) -> str:
    return str(int(epoch)) if isinstance(epoch, (int, float)) and float(epoch).is_integer() else str(epoch)


# --------------------------------------------------------------------------------------------
# W&B: one run of job_type "repro" in the repro's group
# --------------------------------------------------------------------------------------------
def wandb_summary(report: ReproReport) -> dict[str, Any]:
    """repro/<metric>/<at>/{mean, std, t_low, t_high, wilson_low, wilson_high, n}, the number of
    seeds, and with a comparison repro/compare/<metric>/<at>/{difference, low, high, differs}."""
    summary: dict[str, Any] = {"repro/num_seeds": len(report.seeds)}
    for m in report.metrics:
        for key in ("mean", "std", "t_low", "t_high", "wilson_low", "wilson_high", "n"):
            value = getattr(m, key)
            if value is not None:
                summary[f"repro/{m.metric}/{m.at}/{key}"] = value
    for row in (report.comparison or {}).get("rows", []):
        for key in ("difference", "low", "high", "differs"):
            if row[key] is not None:
                summary[f"repro/compare/{row['metric']}/{row['at']}/{key}"] = row[key]
    return json_safe(summary)


def track_repro(report: ReproReport, log: Callable[[str], None] = print) -> Optional[str]:
    """Record the repro in W&B: a run named repro-<name>, job_type "repro", in the group its seeds'
    runs share (the repro's name), with the statistics in its summary and a per-seed table.
    Mode as for training runs (trm_ray.tracking.resolve_mode: offline without credentials);
    files under <repro>/wandb/. Returns the run's URL or offline folder; None when W&B is off
    or failed (a warning, never an error: the repro's own files are written already)."""
    from trm_ray import tracking
    from trm_ray.tune.records import read_sweep_info

    try:
        config = build(TrainConfig, read_sweep_info(report.repro_dir)["trial_base"], "repro base")
    except (ConfigError, FileNotFoundError, KeyError, storage.StorageError):
        return None
    mode = tracking.resolve_mode(config)
    if mode == "disabled":
        return None
    import wandb

    project, name = tracking.project_name(config), f"repro-{report.name}"
    directory, upload_to = tracking.files_location(report.repro_dir)
    try:
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=project, name=name, group=report.name, id=tracking.run_id(project, name),
                         resume="allow", reinit="finish_previous", job_type=JOB_REPRO, mode=mode, dir=directory,
                         tags=[*tracking.run_tags(config, sweep=report.name), JOB_REPRO],
                         config={**config.model_dump(mode="json"), "repro/seeds": report.seeds,
                                 "repro/overrides": report.overrides},
                         settings=wandb.Settings(**tracking._SHORT_RUN_SETTINGS))
        columns = ["metric", "at", *(f"seed {s}" for s in report.seeds), "n", "mean", "std", "t_low", "t_high",
                   "wilson_low", "wilson_high"]
        data = [[m.metric, m.at, *(m.values.get(str(s)) for s in report.seeds), m.n, m.mean, m.std, m.t_low,
                 m.t_high, m.wilson_low, m.wilson_high] for m in report.metrics]
        run.log({"repro/seeds": wandb.Table(columns=columns, data=json_safe(data))})
        run.summary.update(wandb_summary(report))
        where = run.url if mode == "online" else str(Path(run.settings.sync_dir))
        tracking.finish_run(run)
        if upload_to is not None and mode != "online":
            where = storage.join(upload_to, "wandb", Path(where).name)
    except Exception as error:  # W&B's errors (no network, refused credentials)
        log(f"trm-ray: W&B: repro run not recorded: {first_line(error)}")
        return None
    finally:
        tracking._publish(directory, upload_to)
    return where
