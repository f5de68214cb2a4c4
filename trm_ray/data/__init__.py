"""Puzzle datasets: sources (ARC, Sudoku, Maze), seeded transforms, the builder, the loader.

    from trm_ray.data import build_dataset, load_recipe
    info = build_dataset("datasets/sudoku-4x4-quickstart.yaml", "data/sudoku-4x4-quickstart")

Files: transforms.py (pure seeded transforms), sudoku.py / maze.py (solvers, generators),
sources.py (reading ARC JSON, CSV, the hub), groups.py (one source puzzle -> its encoded
variants), builder.py (the build: Ray Data on a cluster, else local processes), writer.py
(streaming writer of the layout), layout.py (file names, dataset.json), recipe.py
(datasets/*.yaml), inspect.py, loader.py (the training loader), staging.py (a dataset URI
copied once to a local cache).
"""


def __getattr__(name: str):
    # Lazy, so that `import trm_ray.data.layout` (the training loader) does not import Ray Data.
    if name == "build_dataset":
        from trm_ray.data.builder import build_dataset

        return build_dataset
    if name in ("load_recipe", "DatasetRecipe"):
        from trm_ray.data import recipe

        return getattr(recipe, name)
    if name == "DatasetBuildError":
        from trm_ray.data.sources import DatasetBuildError

        return DatasetBuildError
    raise AttributeError(f"module 'trm_ray.data' has no attribute {name!r}")
