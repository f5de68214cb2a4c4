"""trm_ray.jsonl, the one writer and reader of the package's JSON Lines files (a run's
metrics.jsonl, a sweep's trials.jsonl): what lands on disk or in a bucket is read back by hand
(json.loads per line; boto3 for the bucket), not with the code under test."""

from __future__ import annotations

import json

from trm_ray import jsonl

BUCKET = "trm"


def lines_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_records_are_one_json_object_a_line_with_null_for_non_finite_numbers(tmp_path):
    path = tmp_path / "sub" / "metrics.jsonl"  # the folder is created
    jsonl.append(path, {"step": 1, "train/loss": float("nan"), "name": "a"})
    jsonl.append(path, {"step": 2, "best": float("-inf"), "nested": {"x": [1.5, float("inf")]}, "path": tmp_path})
    text = path.read_text()
    assert text.endswith("\n") and text.count("\n") == 2
    assert lines_of(text) == [
        {"step": 1, "train/loss": None, "name": "a"},
        {"step": 2, "best": None, "nested": {"x": [1.5, None]}, "path": str(tmp_path)},
    ]
    assert "NaN" not in text and "Infinity" not in text  # strict JSON readers take every line
    assert jsonl.read(path) == lines_of(text)


def test_a_truncated_line_is_skipped_with_one_note(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n[1, 2]\n{"step": 2, "train/l\n{"step": 3}\n{"step": 4, "tr')
    assert jsonl.read(path) == [{"step": 1}, {"step": 3}]
    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == 1 and str(path) in notes[0] and "skipped 3 unreadable line(s)" in notes[0]
    # nothing to say about a whole file, an empty one or a missing one
    assert jsonl.read(tmp_path / "none.jsonl") == []
    (tmp_path / "empty.jsonl").write_text("")
    assert jsonl.read(tmp_path / "empty.jsonl") == []
    assert capsys.readouterr().err == ""


def test_an_append_after_a_cut_short_last_line_drops_it(tmp_path):
    path = tmp_path / "trials.jsonl"
    path.write_text('{"event": "trial", "trial_id": "a"}\n{"event": "res')  # a writer killed mid-line
    jsonl.append(path, {"event": "complete", "trial_id": "a"})
    assert lines_of(path.read_text()) == [{"event": "trial", "trial_id": "a"}, {"event": "complete", "trial_id": "a"}]


def test_a_file_at_a_uri(s3, capsys):
    uri, key = f"s3://{BUCKET}/jsonl/run/metrics.jsonl", "jsonl/run/metrics.jsonl"
    assert jsonl.read(uri) == []
    jsonl.append(uri, {"step": 1, "eval/accuracy": float("nan")})
    jsonl.append(uri, {"step": 2, "eval/accuracy": 0.5})
    assert lines_of(s3.get(BUCKET, key).decode()) == [{"step": 1, "eval/accuracy": None},
                                                      {"step": 2, "eval/accuracy": 0.5}]
    assert jsonl.read(uri) == [{"step": 1, "eval/accuracy": None}, {"step": 2, "eval/accuracy": 0.5}]

    s3.put(BUCKET, key, b'{"step": 1}\n{"step": 2, "ev')  # written by something else, cut short
    assert jsonl.read(uri) == [{"step": 1}]
    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == 1 and uri in notes[0] and "skipped 1 unreadable line(s)" in notes[0]
