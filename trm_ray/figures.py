"""Figures drawn to PNG files without pyplot: the caller's matplotlib backend and open figures
are left as they were (a notebook keeps its inline backend, a GUI session its windows).

    figure, axes = new_figure(nrows=2, ncols=2, figsize=(6, 6))
    axes[0][0].plot(...)
    save_png(figure, "out/curves.png", dpi=120)
"""

from __future__ import annotations

import os
from typing import Any


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] = (8, 5), squeeze: bool = True
               ) -> tuple[Any, Any]:
    """A matplotlib Figure with its own Agg canvas (never registered with pyplot) and its axes,
    shaped as plt.subplots shapes them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure, figure.subplots(nrows, ncols, squeeze=squeeze)


def save_png(figure: Any, path: str | os.PathLike, *, dpi: int = 100) -> str:
    """Lay out `figure` and write it to `path` (folders created); returns the path as a string."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    return path
