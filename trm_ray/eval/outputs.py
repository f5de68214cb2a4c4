"""The files of an eval-only run, in one place: what `trm-ray eval --outdir` writes, local or at
a URI, written whole or not at all.

    <outdir>/
        metrics.json      {"metrics": {...}, "num_examples", "seconds", plus the command's settings
                          (checkpoint, dataset, ema, ...)}; written last to an object store: its
                          presence says the evaluation finished
        submission.json   ARC datasets: the ARC Prize submission, {task: [{"attempt_1": grid, ...}
                          per test pair]} (ARCEvaluator.submission)
        outputs.npz       the requested outputs (save_outputs), one array `<set>__<name>` each
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from trm_ray import storage

if TYPE_CHECKING:
    from trm_ray.eval.run import EvalRun

METRICS_FILE = "metrics.json"
SUBMISSION_FILE = "submission.json"
OUTPUTS_FILE = "outputs.npz"
# The per-row arrays save_outputs may name (the arrays of outputs.npz, per set).
SAVABLE_OUTPUTS = ("inputs", "labels", "puzzle_identifiers", "preds", "q_halt_logits", "q_continue_logits")


def output_key(set_name: str, name: str) -> str:
    """The outputs.npz array of one set's output `name`."""
    return f"{set_name}__{name}"


def write_outputs(run: "EvalRun", outdir: str | os.PathLike, overwrite: bool = False,
                  png: Optional[str | os.PathLike] = None, extra: Optional[dict[str, Any]] = None) -> Path | str:
    """metrics.json, submission.json (ARC), outputs.npz (`<set>__<name>` arrays) in `outdir`,
    and the PNG at `png`; everything is written to temporary names first and renamed into
    place at the end, so a failure leaves nothing half-written. `outdir` and `png` may be URIs
    (s3://...): see _write_outputs_remote."""
    if storage.is_uri(outdir) or (png is not None and storage.is_uri(png)):
        return _write_outputs_remote(run, str(outdir), overwrite, png, extra)
    outdir = Path(outdir)
    if outdir.exists() and not overwrite:
        raise FileExistsError(f"output folder {str(outdir)!r} exists: pass --overwrite or another --outdir")
    outdir.parent.mkdir(parents=True, exist_ok=True)
    staging = outdir.parent / f".{outdir.name}.tmp-{uuid.uuid4().hex[:8]}"
    png_tmp = None
    staging.mkdir()
    try:
        record = {"metrics": run.metrics, "num_examples": run.num_examples, "seconds": run.seconds, **(extra or {})}
        (staging / METRICS_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
        if run.submission is not None:
            (staging / SUBMISSION_FILE).write_text(json.dumps(run.submission))
        if run.outputs:
            import numpy as np

            np.savez(staging / OUTPUTS_FILE,
                     **{output_key(s, k): v for s, arrays in run.outputs.items() for k, v in arrays.items()})
        if png is not None:
            png = Path(png)
            png.parent.mkdir(parents=True, exist_ok=True)
            # ends in .png: the figure's format is taken from the name
            png_tmp = png.parent / f".{png.stem}.tmp-{uuid.uuid4().hex[:8]}.png"
            from trm_ray.eval.png import render_predictions_png

            render_predictions_png(run.examples, png_tmp)
        if outdir.exists():
            shutil.rmtree(outdir)
        os.rename(staging, outdir)
        if png_tmp is not None:
            os.replace(png_tmp, png)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if png_tmp is not None:
            png_tmp.unlink(missing_ok=True)
        raise
    return outdir


def _write_outputs_remote(run: "EvalRun", outdir: str, overwrite: bool, png: Optional[str | os.PathLike],
                          extra: Optional[dict[str, Any]]) -> Path | str:
    """write_outputs to a local scratch folder, then up to the store. An object store has no
    folder rename: the files go up one by one and metrics.json, which says the evaluation
    finished, goes last."""
    import tempfile

    if storage.is_uri(outdir) and storage.exists(outdir) and not overwrite:
        raise FileExistsError(f"output folder {outdir!r} exists: pass --overwrite or another --outdir")
    with tempfile.TemporaryDirectory(prefix="trm-ray-eval-") as scratch:
        local_out = Path(scratch, "out") if storage.is_uri(outdir) else Path(outdir)
        local_png = Path(scratch, "png", storage.name_of(png)) if png is not None and storage.is_uri(png) else png
        write_outputs(run, local_out, overwrite=overwrite, png=local_png, extra=extra)
        if storage.is_uri(outdir):
            if overwrite:
                storage.delete_dir(outdir)  # no file of an earlier evaluation stays beside the new ones
            storage.upload_dir(local_out, outdir, skip=(METRICS_FILE,))
            storage.write_bytes(storage.join(outdir, METRICS_FILE), (local_out / METRICS_FILE).read_bytes())
        if png is not None and storage.is_uri(png):
            storage.write_bytes(str(png), Path(local_png).read_bytes())
    return outdir if storage.is_uri(outdir) else Path(outdir)
