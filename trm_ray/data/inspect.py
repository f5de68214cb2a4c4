"""Look at a built dataset: counts, shapes, sizes, and a PNG of a few puzzles and their variants;
for a text dataset (text.json at its root, trm_ray/text/info.py) the tokenizer, the documents,
windows and tokens per split, and the first windows decoded back to text.

    print(format_summary(summarize("data/sudoku-4x4-quickstart")))
    render_png("data/sudoku-4x4-quickstart", "sudoku.png")
    print(format_summary(summarize("data/stories")))
    print("\n".join(text_window_lines("data/stories", num_windows=3)))
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from trm_ray.data import layout
from trm_ray.text.info import SPLIT_NAMES, is_text_dataset
from trm_ray.text.tokenizer import BOS_ID, EOS_ID, PAD_ID


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
    if is_text_dataset(dataset_dir):
        out["text"] = _text_summary(dataset_dir, out["splits"])
    return out


def _text_summary(dataset_dir: str, splits: dict[str, Any]) -> dict[str, Any]:
    """text.json's facts, checked against tokenizer.json (a mismatch is load_tokenizer's one-line
    DatasetError), with the windows per split counted from the arrays on disk."""
    from trm_ray.text.info import load_text_info, load_tokenizer

    info = load_text_info(dataset_dir)
    load_tokenizer(dataset_dir, info)
    per_split = {}
    for split in layout.SPLITS:
        name = SPLIT_NAMES.get(split, split)
        if split not in splits:  # no documents there (e.g. --validation-fraction 0): no folder written
            per_split[split] = {"name": name, "documents": info.documents.get(name, 0),
                                "tokens": info.tokens.get(name, 0), "missing": True}
            continue
        entry = splits[split]
        per_split[split] = {
            "name": name,
            "documents": info.documents.get(name, 0),
            "tokens": info.tokens.get(name, 0),
            "windows": sum(s["examples"] for s in entry["sets"].values()),
            "bytes": sum(s["bytes"] for s in entry["sets"].values()),
            "dtype": next(iter(entry["sets"].values()))["dtype"] if entry["sets"] else "-",
        }
    return {
        "tokenizer": info.tokenizer.kind,
        "vocab_size": info.tokenizer.vocab_size,
        "tokenizer_sha256": info.tokenizer.sha256,
        "seq_len": info.seq_len,
        "lowercase": info.lowercase,
        "sources": list(info.sources),
        "validation_fraction": info.validation_fraction,
        "seed": info.seed,
        "splits": per_split,
    }


def format_summary(summary: dict[str, Any]) -> str:
    if "text" in summary:
        return _format_text_summary(summary)
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


def _format_text_summary(summary: dict[str, Any]) -> str:
    text, build = summary["text"], summary.get("build") or {}
    lines = [
        f"text dataset {summary['path']}",
        f"  tokenizer {text['tokenizer']}, vocab {text['vocab_size']} (sha256 {text['tokenizer_sha256'][:16]}), "
        f"seq_len {text['seq_len']}, lowercase {'yes' if text['lowercase'] else 'no'}",
        f"  sources: {', '.join(text['sources']) or '-'}",
        f"  seed {text['seed']}, validation fraction {text['validation_fraction']:g}",
    ]
    if build:
        lines.append(f"  built by trm-ray: kind {build['kind']}, seed {build['seed']}, "
                     f"content sha256 {str(build['content_sha256'])[:16]}")
    for split, s in text["splits"].items():
        where = "" if s["name"] == split else f" ({split}/)"
        if s.get("missing"):
            lines.append(f"  {s['name']}{where}: {s['documents']} documents, no {split}/ folder")
            continue
        lines.append(f"  {s['name']}{where}: {s['documents']} documents, {s['windows']} windows, {s['tokens']} tokens, "
                     f"{s['bytes'] / 2**20:.1f} MiB ({s['dtype']})")
    return "\n".join(lines)


# How the special ids show in a decoded window (outside the quoted text, so they cannot be
# mistaken for text that happens to read "<bos>").
_SPECIAL_MARKS = {PAD_ID: "<pad>", BOS_ID: "<bos>", EOS_ID: "<eos>"}
# Characters of a decoded window shown on its line; the rest is cut and marked.
WINDOW_WIDTH = 160


def decode_window(tokens: Any, tokenizer: Any) -> str:
    """One window's tokens as one line: the runs of text tokens decoded and shown with repr()
    (newlines stay visible), the specials as <bos>, <eos>, and a run of padding as <pad>*N."""
    pieces: list[str] = []
    run: list[int] = []

    def flush() -> None:
        if run:
            pieces.append(repr(tokenizer.decode(run)))
            run.clear()

    ids = [int(t) for t in np.asarray(tokens).reshape(-1)]
    i = 0
    while i < len(ids):
        token = ids[i]
        if token in _SPECIAL_MARKS:
            flush()
            j = i
            while j < len(ids) and ids[j] == token:
                j += 1
            count = j - i if token == PAD_ID else 1
            pieces.append(_SPECIAL_MARKS[token] + (f"*{count}" if count > 1 else ""))
            i += count
            continue
        run.append(token)
        i += 1
    flush()
    return " ".join(pieces)


def text_window_lines(dataset_dir: str, num_windows: int = 3, split: str = "train",
                      width: int = WINDOW_WIDTH) -> list[str]:
    """The first `num_windows` windows of a text dataset's `split`, decoded: what the model reads
    (a window's inputs; its labels are the same tokens shifted by one). A header line, then one
    line per window, cut at `width` characters."""
    from trm_ray.text.info import load_text_info, load_tokenizer

    local = _local(dataset_dir)
    info = load_text_info(local)
    tokenizer = load_tokenizer(local, info)
    name = SPLIT_NAMES.get(split, split)
    if not layout.metadata_path(local, split).is_file():
        raise layout.DatasetError(f"{dataset_dir!r} has no {split}/ folder (it holds no {name} "
                                  f"documents): inspect another split (--split)")
    meta = layout.load_metadata(local, split)
    arrays = layout.load_set_arrays(local, split, meta.sets[0], meta)
    shown = min(max(0, num_windows), arrays.num_examples)
    lines = [f"first {shown} of {arrays.num_examples} {name} windows, decoded ({meta.seq_len} input tokens each; "
             f"<bos> <eos> <pad> are ids {info.bos_id} {info.eos_id} {info.pad_id}):"]
    for index in range(shown):
        body = decode_window(arrays.inputs[index], tokenizer)
        if len(body) > width:
            body = body[:width] + " [...]"
        lines.append(f"  {index}: {body}")
    return lines


def png_refusal(dataset_dir: str) -> str:
    return (f"{dataset_dir!r} is a text dataset: PNG rendering is for puzzle datasets; drop --png "
            f"(`trm-ray data inspect` prints its windows decoded to text)")


# ARC's usual palette for colours 0..9; pad white, end marker grey.
_ARC_COLOURS = ["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00", "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25"]


def render_png(dataset_dir: str, png_path: str, num_groups: int = 3, num_variants: int = 3, split: str = "train") -> str:
    """A grid of images: rows are (group, variant), columns the first example's input and label."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    from trm_ray.figures import new_figure, save_png

    shown = dataset_dir
    dataset_dir = _local(dataset_dir)
    if is_text_dataset(dataset_dir):
        raise layout.DatasetError(png_refusal(shown))
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
