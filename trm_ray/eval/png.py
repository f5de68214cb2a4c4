"""The --png of `trm-ray eval`: a few un-augmented ARC test rows drawn side by side (input,
truth, prediction), on a figure of trm_ray.figures, so the caller's matplotlib backend stays
as it is (a notebook keeps its inline plots)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

NUM_PNG_EXAMPLES = 4  # rows an eval-only run keeps for the picture


def render_predictions_png(examples: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """ARC rows side by side: input, truth, prediction (cropped grids, the puzzle's own colours).
    `path` names a .png file."""
    from matplotlib.colors import ListedColormap

    from trm_ray.data.inspect import _ARC_COLOURS
    from trm_ray.eval.arc import crop_arc_grid
    from trm_ray.figures import new_figure, save_png

    if not examples:
        raise ValueError("--png: no un-augmented ARC test rows were evaluated; nothing to render")
    cmap = ListedColormap(_ARC_COLOURS)
    fig, axes = new_figure(len(examples), 3, figsize=(7.5, 2.6 * len(examples)), squeeze=False)
    for example, row in zip(examples, axes):
        truth = crop_arc_grid(np.where(example["labels"] < 0, 0, example["labels"]))
        pred = crop_arc_grid(example["preds"])
        solved = truth.shape == pred.shape and bool(np.all(truth == pred))
        for ax, grid, title in ((row[0], crop_arc_grid(example["inputs"]), "input"), (row[1], truth, "truth"),
                                (row[2], pred, "prediction" + (" (solved)" if solved else ""))):
            if grid.size:
                ax.imshow(grid, cmap=cmap, vmin=0, vmax=9, interpolation="nearest")
            ax.set_title(f"{example['name'][:30]}\n{title}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    return Path(save_png(fig, path, dpi=80))
