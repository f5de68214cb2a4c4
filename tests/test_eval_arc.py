"""The ARC evaluator (docs/paper.md#arc-voting) against hand-built predictions: crop, inverse augmentation,
votes, q tie-breaks, pass@K, two-pair puzzles, the submission format, merging workers.

Predictions are written in the ORIGINAL puzzle's space and pushed through each variant's
transform (colour map, then dihedral), so only a correct inverse brings them back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from trm_ray.data.transforms import apply_arc_variant, arc_decode_grid, arc_encode_example
from trm_ray.eval import ARCEvaluator, build_evaluators, crop_arc_grid

# ---- a hand-built ARC dataset (only what the evaluator reads) ------------------------------------
IDENTITY = "0123456789"
IDENTIFIERS = ["<blank>", "p1", "p1|||t1|||0123456789", "p1|||t4|||0213456789", "p1|||t7|||0918273645",
               "p2", "p2|||t6|||0987654321", "p3"]
A1 = [[1, 2, 3], [4, 5, 6]]  # p1 test input
O1 = [[7, 8], [9, 1]]        # p1 truth
X1 = [[7, 8], [9, 2]]        # a wrong answer that gets the most votes
Y1 = [[7, 7], [9, 1]]        # a wrong answer tied with the truth on votes
A2a, O2a = [[1, 1], [0, 2]], [[3]]
A2b, O2b = [[2, 0, 2]], [[4, 4, 4]]
Z2 = [[5, 4, 4]]
A3, O3 = [[6]], [[6, 6]]
TEST_PUZZLES = {
    "p1": {"train": [], "test": [{"input": A1, "output": O1}]},
    "p2": {"train": [], "test": [{"input": A2a, "output": O2a}, {"input": A2b, "output": O2b}]},
    "p3": {"train": [], "test": [{"input": A3, "output": O3}]},
}


def write_arc_dataset(root: Path, identifiers=IDENTIFIERS, test_puzzles=TEST_PUZZLES) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "identifiers.json").write_text(json.dumps(identifiers))
    (root / "test_puzzles.json").write_text(json.dumps(test_puzzles))
    return root


def variant_row(name: str, original_input, original_pred):
    """(identifier, inputs tokens, preds tokens) of one prediction made on variant `name`."""
    identifier = IDENTIFIERS.index(name)
    parts = name.split("|||")
    t, colour_map = (int(parts[1][1:]), np.array([int(c) for c in parts[2]], np.uint8)) if len(parts) == 3 \
        else (0, np.arange(10, dtype=np.uint8))
    inp = apply_arc_variant(np.array(original_input, np.uint8), t, colour_map)
    pred = apply_arc_variant(np.array(original_pred, np.uint8), t, colour_map)
    inputs, preds = arc_encode_example(inp, pred)
    return identifier, inputs, preds


def make_batch(rows, q_logits):
    ids, inputs, preds = zip(*rows)
    batch = {"inputs": np.stack(inputs).astype(np.int32), "puzzle_identifiers": np.array(ids, np.int32)}
    outputs = {"preds": np.stack(preds).astype(np.int32), "q_halt_logits": np.array(q_logits, np.float32)}
    return batch, outputs


def p1_rows(truth_q, other_q):
    """X1: 3 votes; O1 and Y1: 2 votes each, with the given q logits."""
    rows = [variant_row("p1", A1, Y1), variant_row("p1|||t1|||0123456789", A1, Y1),
            variant_row("p1", A1, X1), variant_row("p1|||t1|||0123456789", A1, X1),
            variant_row("p1|||t4|||0213456789", A1, X1),
            variant_row("p1|||t4|||0213456789", A1, O1), variant_row("p1|||t7|||0918273645", A1, O1)]
    q = [other_q[0], other_q[1], 0.0, 0.0, 0.0, truth_q[0], truth_q[1]]
    return rows, q


def other_rows():
    rows = [variant_row("p2|||t6|||0987654321", A2a, O2a),   # pair a solved, through t6 + colour map
            variant_row("p2", A2b, Z2),                        # pair b wrong
            (0, np.full(900, 5, np.uint8), np.full(900, 3, np.uint8))]  # padding row: blank identifier
    return rows, [1.0, 1.0, 9.0]


@pytest.fixture
def dataset(tmp_path):
    return write_arc_dataset(tmp_path / "arc")


def run(dataset, truth_q, other_q, **kwargs):
    evaluator = ARCEvaluator(dataset, pass_Ks=(1, 2, 5), **kwargs)
    rows, q = p1_rows(truth_q, other_q)
    more, more_q = other_rows()
    evaluator.update(*make_batch(rows + more, q + more_q))
    return evaluator


# ---- crop ------------------------------------------------------------------------------------------
def test_crop_takes_the_largest_area_rectangle_not_the_first_rows():
    canvas = np.zeros((30, 30), np.int32)
    canvas[0, :3] = canvas[1, :3] = [2, 3, 4]  # two rows of width 3 ...
    canvas[2, :1] = 5                          # ... then a row of width 1: 2x3 = 6 beats 3x1 = 3
    assert crop_arc_grid(canvas.reshape(-1)).tolist() == [[0, 1, 2], [0, 1, 2]]
    canvas[3:6, :1] = 5                        # now 6x1 = 6 ties 2x3: the first maximum (2x3) stays
    assert crop_arc_grid(canvas.reshape(-1)).shape == (2, 3)
    canvas[6, :1] = 5                          # 7x1 = 7 wins
    assert crop_arc_grid(canvas.reshape(-1)).shape == (7, 1)
    assert crop_arc_grid(np.ones(900, np.int32)).shape == (0, 0)   # starts with a marker: empty
    assert crop_arc_grid(np.full(900, 11)).shape == (30, 30)       # all colours: the whole canvas


def test_crop_inverts_the_encoding_of_well_formed_grids():
    grid = np.random.default_rng(0).integers(0, 10, (5, 7)).astype(np.uint8)
    inputs, _ = arc_encode_example(grid, grid)
    assert np.array_equal(crop_arc_grid(inputs), grid)
    assert np.array_equal(crop_arc_grid(inputs), arc_decode_grid(inputs))


# ---- voting ----------------------------------------------------------------------------------------
def test_votes_rank_first_then_mean_q_breaks_ties(dataset):
    # X1 wins on votes; O1 (q 2, 2) beats Y1 (q -1, -1) on the tie: pass@1 misses, pass@2 hits.
    evaluator = run(dataset, truth_q=(2.0, 2.0), other_q=(-1.0, -1.0))
    ranking = evaluator.ranking("p1", 0)
    assert [votes for _, votes, _ in ranking] == [3, 2, 2]
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert ranking[0][2] == pytest.approx(0.5) and ranking[1][2] == pytest.approx(sigmoid(2.0))
    # p1 contributes 0 / 1, p2 one of two pairs (0.5), p3 nothing: means over 3 puzzles.
    assert evaluator.result() == pytest.approx({"ARC/pass@1": 0.5 / 3, "ARC/pass@2": 1.5 / 3, "ARC/pass@5": 1.5 / 3})
    assert evaluator.num_unmatched == 0


def test_tie_goes_to_the_higher_mean_sigmoid_q_not_the_max(dataset):
    # O1 has q logits (3, -3): mean sigmoid 0.5, max 0.95; Y1 (0.2, 0.2): 0.55 -> Y1 second.
    evaluator = run(dataset, truth_q=(3.0, -3.0), other_q=(0.2, 0.2))
    assert evaluator.result()["ARC/pass@2"] == pytest.approx(0.5 / 3)  # only p2's half
    assert evaluator.result()["ARC/pass@5"] == pytest.approx(1.5 / 3)


def test_two_pair_puzzle_scores_one_half_and_submission_format(dataset):
    evaluator = run(dataset, truth_q=(2.0, 2.0), other_q=(-1.0, -1.0))
    submission = evaluator.submission()
    json.loads(json.dumps(submission))  # plain JSON
    assert list(submission) == ["p1", "p2", "p3"]
    # p1: top 2 are X1 then O1 (the inverse augmentation restored the original grid)
    assert submission["p1"] == [{"attempt_1": X1, "attempt_2": O1}]
    # p2: one entry per test pair, in order; one candidate each, padded by repeating it
    assert submission["p2"] == [{"attempt_1": O2a, "attempt_2": O2a}, {"attempt_1": Z2, "attempt_2": Z2}]
    # p3: no prediction reached it: placeholders keep one entry per test pair
    assert submission["p3"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]
    for attempts in submission.values():
        for entry in attempts:
            for grid in entry.values():
                assert all(isinstance(v, int) for row in grid for v in row)
    assert all(set(e) == {"attempt_1", "attempt_2", "attempt_3"}
               for a in run(dataset, (2.0, 2.0), (-1.0, -1.0), submission_K=3).submission().values() for e in a)


def test_merging_workers_equals_one_evaluator(dataset):
    rows, q = p1_rows((2.0, 2.0), (-1.0, -1.0))
    more, more_q = other_rows()
    rows, q = rows + more, q + more_q
    single = ARCEvaluator(dataset)
    single.update(*make_batch(rows, q))
    workers = [ARCEvaluator(dataset) for _ in range(3)]
    for w, worker in enumerate(workers):
        part = list(range(w, len(rows), 3))
        worker.update(*make_batch([rows[i] for i in part], [q[i] for i in part]))
    states = [w.state() for w in workers]
    for worker in workers:  # what all_gather_object + merge does on each rank
        worker.merge(states)
        assert worker.result() == pytest.approx(single.result())
        assert worker.submission() == single.submission()
    workers[0].reset()
    assert workers[0].result()["ARC/pass@1000"] == 0.0


def test_unmatched_inputs_are_counted_not_scored(dataset):
    evaluator = ARCEvaluator(dataset)
    evaluator.update(*make_batch([variant_row("p1", [[9, 9]], O1)], [5.0]))  # not p1's test input
    assert evaluator.num_unmatched == 1 and evaluator.result()["ARC/pass@1"] == 0.0


def test_missing_files_and_bad_identifiers_are_one_line_errors(tmp_path, dataset):
    from trm_ray.data.layout import DatasetError

    (tmp_path / "no_tests").mkdir()
    (tmp_path / "no_tests" / "identifiers.json").write_text(json.dumps(IDENTIFIERS))
    with pytest.raises(DatasetError, match="test_puzzles.json"):
        ARCEvaluator(tmp_path / "no_tests")
    with pytest.raises(DatasetError, match="identifier 99"):
        ARCEvaluator(dataset).update(*make_batch([(99, np.zeros(900), np.zeros(900))], [0.0]))
    assert isinstance(build_evaluators([{"name": "arc@ARC", "submission_K": 3}], [str(dataset)])[0], ARCEvaluator)
    with pytest.raises(ValueError, match="unknown evaluator"):
        build_evaluators([{"name": "sudoku"}], [str(dataset)])
