"""The ARC evaluator (docs/paper.md#arc-voting): vote over augmented variants, pass@K, ARC Prize submission.

    arc = ARCEvaluator("data/arc1concept-aug-1000")
    metrics = evaluate(model, test_loader, evaluators=[arc])   # ... "ARC/pass@2": 0.45
    json.dump(arc.submission(), open("submission.json", "w"))

For each prediction of a real (non-blank) puzzle identifier:
1. crop: the largest-area top-left rectangle whose cells are all colour tokens (2..11),
   found as the reference does (scan rows, shrinking the column count at the first
   non-colour cell), minus 2;
2. undo the variant's augmentation (inverse dihedral, then inverse colour map:
   trm_ray.data.transforms.invert_arc_variant) on the input and on the prediction;
3. find the original test pair by the hash of the restored input.
Per test pair, identical predictions are grouped: votes = how many variants predicted it,
score = mean sigmoid(q_halt_logits) (float64); candidates rank by (votes, score)
descending, then by grid hash so that the order never depends on how rows were spread over
workers. pass@K: the true output is among the top K. A puzzle scores the fraction of its
test pairs solved; ARC/pass@K is the mean over every puzzle of test_puzzles.json (puzzles the
run did not reach count 0, as in the reference).

Differences from the reference evaluator, on purpose:
- state is reset at every evaluate() (the reference's default `aggregated_voting` keeps
  votes from earlier evaluations of earlier weights in the same run);
- a test pair with no prediction gets placeholder attempts [[0]] in the submission (the
  reference skips it, which shifts later pairs of the puzzle into its slot);
- exact ties in (votes, score) break by grid hash instead of arrival order.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from trm_ray.data import layout
from trm_ray.data.transforms import arc_decode_grid, crop_arc_grids, grid_hash, invert_arc_variant

PASS_KS = (1, 2, 5, 10, 100, 1000)
METRIC_PREFIX = "ARC"
PLACEHOLDER_GRID = [[0]]
# The `name`s of a recipe's `evaluators:` entries (build_evaluators).
KNOWN_EVALUATORS = ("arc", "text")


# The crop lives with the ARC encoding it inverts; exported here under the evaluator's names.
crop_arc_grid = arc_decode_grid


def _sigmoid64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


class ARCEvaluator:
    """ARC scoring (docs/paper.md#arc-voting); an Evaluator (see trm_ray.eval.core) for evaluate().

    dataset_dir: an ARC dataset folder (identifiers.json, test_puzzles.json, test/dataset.json).
    submission_K: attempts per test pair in submission(); pass_Ks: the K of ARC/pass@K."""

    required_outputs = ("inputs", "puzzle_identifiers", "preds", "q_halt_logits")

    def __init__(self, dataset_dir: str | os.PathLike, submission_K: int = 2, pass_Ks: Sequence[int] = PASS_KS):
        if submission_K < 1:
            raise ValueError(f"submission_K={submission_K} must be >= 1")
        if not pass_Ks or any(int(k) < 1 for k in pass_Ks):
            raise ValueError(f"pass_Ks={list(pass_Ks)} must be positive integers")
        from trm_ray.data.staging import resolve_data_path

        self.dataset_dir = str(dataset_dir)
        self.submission_K = int(submission_K)
        self.pass_Ks = tuple(int(k) for k in pass_Ks)
        local = resolve_data_path(dataset_dir)
        self.identifiers = layout.load_identifiers(local)
        path = layout.test_puzzles_path(local)
        if not path.is_file():
            raise layout.DatasetError(f"{str(path)!r} does not exist: the ARC evaluator needs an ARC dataset "
                                      f"built with a test set (trm-ray data build arc ... --test-set-name evaluation)")
        try:
            self.test_puzzles: dict[str, Any] = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise layout.DatasetError(f"{str(path)!r} is not valid JSON ({error}): rebuild the dataset") from None
        self.blank_identifier_id = 0
        if layout.metadata_path(local, "test").is_file():
            self.blank_identifier_id = layout.load_metadata(local, "test").blank_identifier_id
        # Per puzzle: input hash -> test pair index, and each pair's label hash.
        self._pair_of_input: dict[str, dict[str, int]] = {}
        self._label_hashes: dict[str, list[str]] = {}
        for name, puzzle in self.test_puzzles.items():
            pairs = puzzle.get("test", []) if isinstance(puzzle, dict) else []
            self._pair_of_input[name] = {grid_hash(np.array(p["input"], np.uint8)): k for k, p in enumerate(pairs)}
            self._label_hashes[name] = [grid_hash(np.array(p["output"], np.uint8)) for p in pairs]
        self._inverses: dict[int, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {}
        self.reset()

    # ---- state -------------------------------------------------------------------------------
    def reset(self) -> None:
        # (puzzle, test pair) -> prediction hash -> [votes, sum of sigmoid(q_halt)]
        self._votes: dict[tuple[str, int], dict[str, list[float]]] = {}
        self._grids: dict[str, np.ndarray] = {}  # prediction hash -> grid (for the submission)
        self.num_unmatched = 0  # predictions whose restored input is no test pair of the puzzle

    def state(self) -> dict[str, Any]:
        return {"votes": self._votes, "grids": self._grids, "num_unmatched": self.num_unmatched}

    def merge(self, states: Sequence[Mapping[str, Any]]) -> None:
        votes: dict[tuple[str, int], dict[str, list[float]]] = {}
        grids: dict[str, np.ndarray] = {}
        unmatched = 0
        for state in states:
            for pair, candidates in state["votes"].items():
                merged = votes.setdefault(pair, {})
                for h, (n, q) in candidates.items():
                    entry = merged.setdefault(h, [0, 0.0])
                    entry[0] += n
                    entry[1] += q
            grids.update(state["grids"])
            unmatched += int(state["num_unmatched"])
        self._votes, self._grids, self.num_unmatched = votes, grids, unmatched

    # ---- update ------------------------------------------------------------------------------
    def _inverse(self, identifier: int) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
        if identifier not in self._inverses:
            if not 0 <= identifier < len(self.identifiers):
                raise layout.DatasetError(f"puzzle identifier {identifier} is outside identifiers.json "
                                          f"({len(self.identifiers)} names) of {self.dataset_dir!r}: wrong dataset?")
            self._inverses[identifier] = invert_arc_variant(self.identifiers[identifier])
        return self._inverses[identifier]

    def update(self, batch: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        """batch: "inputs" (B, 900), "puzzle_identifiers" (B,); outputs: "preds" (B, 900),
        "q_halt_logits" (B,); numpy (torch tensors are converted). Blank rows are skipped."""
        ids = _np(batch["puzzle_identifiers"]).astype(np.int64).reshape(-1)
        keep = ids != self.blank_identifier_id
        if not keep.any():
            return
        ids = ids[keep]
        inputs = crop_arc_grids(_np(batch["inputs"])[keep])
        preds = crop_arc_grids(_np(outputs["preds"])[keep])
        q = _sigmoid64(_np(outputs["q_halt_logits"]).reshape(-1)[keep])
        for identifier, inp, pred, score in zip(ids, inputs, preds, q):
            name, inverse = self._inverse(int(identifier))
            pair = self._pair_of_input.get(name, {}).get(grid_hash(inverse(inp)))
            if pair is None:
                self.num_unmatched += 1
                continue
            pred = np.ascontiguousarray(inverse(pred))
            h = grid_hash(pred)
            self._grids.setdefault(h, pred)
            entry = self._votes.setdefault((name, pair), {}).setdefault(h, [0, 0.0])
            entry[0] += 1
            entry[1] += float(score)

    # ---- results -----------------------------------------------------------------------------
    def ranking(self, name: str, pair: int) -> list[tuple[str, int, float]]:
        """(prediction hash, votes, mean sigmoid(q_halt)) of one test pair, best first."""
        candidates = self._votes.get((name, pair), {})
        ranked = [(h, int(n), q / n) for h, (n, q) in candidates.items()]
        ranked.sort(key=lambda c: (-c[1], -c[2], c[0]))
        return ranked

    def result(self) -> dict[str, float]:
        solved = np.zeros(len(self.pass_Ks))
        for name, labels in self._label_hashes.items():
            if not labels:
                continue
            per_pair = np.zeros(len(self.pass_Ks))
            for pair, label_hash in enumerate(labels):
                ranked = [h for h, _, _ in self.ranking(name, pair)]
                per_pair += [label_hash in ranked[:k] for k in self.pass_Ks]
            solved += per_pair / len(labels)
        num_puzzles = max(len(self.test_puzzles), 1)
        return {f"{METRIC_PREFIX}/pass@{k}": float(s / num_puzzles) for k, s in zip(self.pass_Ks, solved)}

    def submission(self) -> dict[str, list[dict[str, list[list[int]]]]]:
        """{task_id: [{"attempt_1": grid, ..., "attempt_K": grid} per test pair]} (ARC Prize
        format), the top submission_K candidates, padded by repeating the best one."""
        out: dict[str, list[dict[str, list[list[int]]]]] = {}
        for name, labels in self._label_hashes.items():
            attempts = []
            for pair in range(len(labels)):
                grids = [self._grids[h].tolist() for h, _, _ in self.ranking(name, pair)[: self.submission_K]]
                grids = grids or [PLACEHOLDER_GRID]
                grids += [grids[0]] * (self.submission_K - len(grids))
                attempts.append({f"attempt_{i + 1}": g for i, g in enumerate(grids)})
            out[name] = attempts
        return out


def _np(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def build_evaluators(specs: Sequence[Mapping[str, Any]], data_paths: Sequence[str]) -> list[Any]:
    """Evaluators from a recipe's `evaluators:` list, e.g. [{name: arc, submission_K: 2}].

    `name` is "arc" (or the reference's "arc@ARC") or "text" (trm_ray.text.evaluate, e.g.
    {name: text, prompts: [...], temperature: 0.8}); the dataset is the first of data_paths. A
    text dataset gets a text evaluator (without prompts) when the list has none."""
    evaluators = []
    for spec in specs:
        spec = dict(spec)
        name = str(spec.pop("name", "")).lower().split("@")[0]
        if name not in KNOWN_EVALUATORS:
            raise ValueError(f"evaluators: unknown evaluator {name!r}; the known ones are "
                             f"{', '.join(repr(n) for n in KNOWN_EVALUATORS)}")
        if not data_paths:
            raise ValueError(f"evaluators: the {name} evaluator needs a dataset (data_paths_test or data_paths)")
        if name == "text":
            from trm_ray.text.evaluate import TextEvaluator

            evaluators.append(TextEvaluator(data_paths[0], **spec))
            continue
        spec.pop("aggregated_voting", None)  # reference option; votes never carry over here
        evaluators.append(ARCEvaluator(data_paths[0], **spec))
    from trm_ray.text.evaluate import TextEvaluator
    from trm_ray.text.info import is_text_dataset

    if data_paths and not any(isinstance(e, TextEvaluator) for e in evaluators) and is_text_dataset(data_paths[0]):
        # A text run always gets its loss and perplexity: they rank its checkpoints.
        evaluators.append(TextEvaluator(data_paths[0]))
    return evaluators
