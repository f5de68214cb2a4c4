"""Look at a built dataset: counts, shapes, sizes, and a PNG of a few puzzles and their variants.

    print(format_summary(summarize("data/sudoku-4x4-quickstart")))
    render_png("data/sudoku-4x4-quickstart", "sudoku.png")
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from trm_ray.data import layout


def _local(dataset_dir: str) -> str:
    """A local folder for `dataset_dir` (a URI is staged; a finished build is required)."""
    from trm_ray.data.staging import resolve_data_path

    if not layout.is_uri(dataset_dir) and not os.path.isdir(dataset_dir):
        raise layout.DatasetError(f"dataset folder {dataset_dir!r} does not exist: build it with `trm-ray data build`")
    local = str(resolve_data_path(dataset_dir))
    layout.check_complete(local)
    return local


def summarize(dataset_dir: str) -> dict[str, Any]:
    """Per split: metadata, group/puzzle/example counts, bytes on disk; plus build.json's recipe.
    A URI is staged to this machine's dataset cache first, as training does."""
    shown = dataset_dir
    dataset_dir = _local(dataset_dir)
    out: dict[str, Any] = {"path": shown, "splits": {}}
    for split in layout.SPLITS:
        if not layout.metadata_path(dataset_dir, split).is_file():
            continue
        meta = layout.load_metadata(dataset_dir, split)
        entry: dict[str, Any] = {"metadata": meta.model_dump(), "sets": {}}
        for set_name in meta.sets:
            arrays = layout.load_set_arrays(dataset_dir, split, set_name, meta)
            size = sum(layout.array_path(dataset_dir, split, set_name, f).stat().st_size for f in layout.ARRAY_FIELDS)
            entry["sets"][set_name] = {
                "groups": arrays.num_groups,
                "puzzles": arrays.num_puzzles,
                "examples": arrays.num_examples,
                "bytes": size,
                "dtype": str(arrays.inputs.dtype),
            }
        out["splits"][split] = entry
    if not out["splits"]:
        raise layout.DatasetError(f"{dataset_dir!r} has no train/ or test/ split: is it a dataset folder?")
    build_path = os.path.join(dataset_dir, layout.BUILD_FILE)
    if os.path.isfile(build_path):
        with open(build_path) as f:
            build = json.load(f)
        out["build"] = {k: build.get(k) for k in ("kind", "seed", "content_sha256", "ratings")}
    return out


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"dataset {summary['path']}"]
    build = summary.get("build")
    if build:
        lines.append(f"  built by trm-ray: kind {build['kind']}, seed {build['seed']}, content sha256 {str(build['content_sha256'])[:16]}")
    for split, entry in summary["splits"].items():
        m = entry["metadata"]
        lines.append(
            f"  {split}: seq_len {m['seq_len']}, vocab {m['vocab_size']}, identifiers {m['num_puzzle_identifiers']}, "
            f"mean examples/puzzle {m['mean_puzzle_examples']:.3f}"
        )
        for set_name, s in entry["sets"].items():
            lines.append(
                f"    {set_name}: {s['groups']} groups, {s['puzzles']} puzzles, {s['examples']} examples, "
                f"{s['bytes'] / 2**20:.1f} MiB ({s['dtype']})"
            )
        if build and build.get("ratings") and build["ratings"].get(split):
            r = build["ratings"][split]
            lines.append(f"    difficulty: min {r['min']}, median {r['median']}, mean {r['mean']}, max {r['max']}")
    return "\n".join(lines)


# ARC's usual palette for colours 0..9; pad white, end marker grey.
_ARC_COLOURS = ["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00", "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25"]


def render_png(dataset_dir: str, png_path: str, num_groups: int = 3, num_variants: int = 3, split: str = "train") -> str:
    """A grid of images: rows are (group, variant), columns the first example's input and label."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    from trm_ray.figures import new_figure, save_png

    dataset_dir = _local(dataset_dir)
    meta = layout.load_metadata(dataset_dir, split)
    arrays = layout.load_set_arrays(dataset_dir, split, meta.sets[0], meta)
    try:
        names = layout.load_identifiers(dataset_dir)
    except layout.DatasetError:
        names = []
    side = int(round(meta.seq_len**0.5))
    is_arc = meta.vocab_size == 12 and meta.seq_len == 900
    if is_arc:
        cmap = ListedColormap(["#FFFFFF", "#CCCCCC"] + _ARC_COLOURS)
    else:
        cmap = ListedColormap(colormaps["tab20"].colors[: meta.vocab_size])
    rows = []
    for g in range(min(num_groups, arrays.num_groups)):
        first, last = int(arrays.group_indices[g]), int(arrays.group_indices[g + 1])
        for p in range(first, min(last, first + num_variants)):
            example = int(arrays.puzzle_indices[p])
            ident = int(arrays.puzzle_identifiers[p])
            label = names[ident] if 0 < ident < len(names) else f"group {g} variant {p - first}"
            rows.append((label, np.asarray(arrays.inputs[example]), np.asarray(arrays.labels[example])))
    if not rows:
        raise layout.DatasetError(f"{dataset_dir!r} split {split} has no puzzles to render")
    fig, axes = new_figure(len(rows), 2, figsize=(6, 3 * len(rows)), squeeze=False)
    for (label, inp, lab), (ax_in, ax_out) in zip(rows, axes):
        for ax, tokens, title in ((ax_in, inp, "input"), (ax_out, lab, "label")):
            grid = tokens.reshape(side, side)
            ax.imshow(grid, cmap=cmap, vmin=0, vmax=meta.vocab_size - 1, interpolation="nearest")
            if not is_arc and side <= 9:  # Sudoku: show the digits (token t is digit t - 1; 1 is blank)
                for (r, c), t in np.ndenumerate(grid):
                    if t >= 2:
                        ax.text(c, r, str(int(t) - 1), ha="center", va="center", fontsize=8)
            ax.set_title(f"{label[:40]}\n{title}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    save_png(fig, png_path, dpi=80)
    return png_path
