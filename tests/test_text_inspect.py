"""`trm-ray data inspect` on text datasets: the summary, the first windows decoded, and the errors.

The expected text is worked out by hand from the documents written here (byte tokenizer: id
3 + byte, BOS 1, EOS 2, PAD 0; windows of S+1 tokens with stride S) or decoded by hand from the
arrays on disk, never through the inspect code. Builds run in this process (use_ray=False).
"""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cli_util import assert_one_line_failure

from trm_ray.cli.main import main
from trm_ray.text.build import build_text_dataset

DOCUMENTS = ["Hi\nthere", "Second doc \u00e9"]


def run(*args):
    return CliRunner().invoke(main, ["data", "inspect", *map(str, args)], catch_exceptions=False)


def write_jsonl(path, texts):
    with open(path, "w") as f:
        for text in texts:
            f.write(json.dumps({"text": text}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("text_inspect")


@pytest.fixture(scope="module")
def byte_dataset(folder):
    source = write_jsonl(folder / "docs.jsonl", DOCUMENTS)
    out = str(folder / "byte")
    build_text_dataset(input_paths=[source], output_dir=out, max_sequence_length=16, validation_fraction=0,
                       use_ray=False)
    return out


@pytest.fixture(scope="module")
def stories_dataset(folder):
    out = str(folder / "stories")
    build_text_dataset(source="generate:stories", num_documents=50, output_dir=out, max_sequence_length=32,
                       use_ray=False)
    return out


def hand_decode(row) -> str:
    return bytes(int(t) - 3 for t in row if int(t) >= 3).decode("utf-8", errors="replace")


_PIECE = re.compile(r"\s*(<bos>|<eos>|<pad>(?:\*\d+)?|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")


def parse_window(body: str) -> tuple[str, list[str]]:
    """A printed window back into (its text, its special markers in order)."""
    import ast

    text, marks, at = [], [], 0
    while at < len(body):
        match = _PIECE.match(body, at)
        assert match, (body, at)
        piece = match.group(1)
        if piece.startswith("<"):
            marks.append(piece)
        else:
            text.append(ast.literal_eval(piece))
        at = match.end()
    return "".join(text), marks


def test_byte_dataset_summary_and_windows_as_worked_out_by_hand(byte_dataset, folder):
    result = run(byte_dataset, "--num-windows", 5)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    build = json.loads((folder / "byte" / "build.json").read_text())
    # Tokens: [BOS] + 8 bytes + [EOS] + [BOS] + 13 bytes ("é" is two) + [EOS] = 25; windows of 17
    # with stride 16 over 25 tokens: 2.
    assert lines[0] == f"text dataset {byte_dataset}"
    assert "tokenizer byte, vocab 259" in lines[1] and "seq_len 16" in lines[1] and "lowercase no" in lines[1]
    assert lines[2] == f"  sources: {folder / 'docs.jsonl'}"
    assert "seed 0" in lines[3] and "validation fraction 0" in lines[3]
    assert f"content sha256 {build['content_sha256'][:16]}" in result.output
    assert "  train: 2 documents, 2 windows, 25 tokens" in result.output
    assert "  validation (test/): 0 documents, no test/ folder" in result.output
    assert "first 2 of 2 train windows" in result.output
    # What the model reads: window 0 is stream[0:16], window 1 stream[16:32] padded with PAD.
    assert "  0: <bos> 'Hi\\nthere' <eos> <bos> 'Secon'" in lines
    assert "  1: 'd doc \u00e9' <eos> <pad>*7" in lines
    inputs = np.load(folder / "byte" / "train" / "all__inputs.npy")
    assert hand_decode(inputs[0]) == "Hi\nthereSecon" and hand_decode(inputs[1]) == "d doc \u00e9"
    assert list(inputs[1][-8:]) == [2] + [0] * 7
    # The puzzle-only PNG is refused on one line, and no picture is written.
    png = folder / "byte.png"
    assert_one_line_failure(run(byte_dataset, "--png", png), "text dataset", "PNG rendering is for puzzle datasets")
    assert not png.exists()
    # A split that was not written (no validation documents) is one line too.
    assert_one_line_failure(run(byte_dataset, "--split", "test"), "no test/ folder")
    # --num-windows 0: the summary alone.
    only = run(byte_dataset, "--num-windows", 0)
    assert only.exit_code == 0 and "windows, decoded" not in only.output and "25 tokens" in only.output


def test_generated_stories_counts_and_windows_match_the_arrays(stories_dataset, folder):
    root = folder / "stories"
    info = json.loads((root / "text.json").read_text())
    train = np.load(root / "train" / "all__inputs.npy")
    test = np.load(root / "test" / "all__inputs.npy")
    # 50 documents, 5% held out: round(2.5) = 2; stride-32 windows of 33 tokens over T tokens: ceil((T-1)/32).
    assert info["documents"] == {"train": 48, "validation": 2}
    for name, arrays in (("train", train), ("validation", test)):
        assert arrays.shape == (math.ceil((info["tokens"][name] - 1) / 32), 32)

    result = run(stories_dataset, "--num-windows", 4)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "tokenizer byte, vocab 259" in out and "seq_len 32" in out
    assert "generate:stories (seed 0, 50 documents)" in out
    assert f"  train: 48 documents, {train.shape[0]} windows, {info['tokens']['train']} tokens" in out
    assert f"  validation (test/): 2 documents, {test.shape[0]} windows, {info['tokens']['validation']} tokens" in out
    assert f"first 4 of {train.shape[0]} train windows" in out
    shown = [line for line in out.splitlines() if re.match(r"  \d+: ", line)]
    assert len(shown) == 4
    for index, line in enumerate(shown):
        prefix = f"  {index}: "
        assert line.startswith(prefix)
        text, marks = parse_window(line[len(prefix):])
        row = train[index]
        assert text == hand_decode(row)
        assert marks.count("<bos>") == int((row == 1).sum()) and marks.count("<eos>") == int((row == 2).sum())
    assert shown[0].startswith("  0: <bos> '")  # the first window opens the first document

    # --split test decodes the validation windows.
    result = run(stories_dataset, "--split", "test", "--num-windows", 2)
    assert result.exit_code == 0, result.output
    assert f"first 2 of {test.shape[0]} validation windows" in result.output
    line = next(line for line in result.output.splitlines() if line.startswith("  1: "))
    assert parse_window(line[len("  1: "):])[0] == hand_decode(test[1])


def test_long_window_is_clipped_to_one_line(folder):
    source = write_jsonl(folder / "long.jsonl", ["a" * 300 + "\n" + "b" * 300])
    out = str(folder / "long")
    build_text_dataset(input_paths=[source], output_dir=out, max_sequence_length=400, validation_fraction=0,
                       use_ray=False)
    result = run(out, "--num-windows", 1)
    assert result.exit_code == 0, result.output
    # "<bos> '" is 7 characters: 153 of the a's fill the 160 shown, then the cut is marked.
    assert f"  0: <bos> '{'a' * 153} [...]" in result.output.splitlines()


def test_bpe_dataset_shows_the_documents(folder):
    source = write_jsonl(folder / "bpe.jsonl", DOCUMENTS)
    out = str(folder / "bpe")
    build_text_dataset(input_paths=[source], output_dir=out, max_sequence_length=16, tokenizer="bpe:300",
                       validation_fraction=0, use_ray=False)
    vocab = json.loads((folder / "bpe" / "text.json").read_text())["tokenizer"]["vocab_size"]
    result = run(out)
    assert result.exit_code == 0, result.output
    assert f"tokenizer bpe, vocab {vocab}" in result.output
    # Both documents fit one 16-token window under the BPE; the text comes back whole.
    assert "  0: <bos> 'Hi\\nthere' <eos> <bos> 'Second doc \u00e9' <eos> <pad>" in result.output


def test_tokenizer_that_does_not_match_text_json_is_one_line(byte_dataset, folder):
    changed = folder / "changed"
    shutil.copytree(byte_dataset, changed)
    tokenizer = json.loads((changed / "tokenizer.json").read_text())
    (changed / "tokenizer.json").write_text(json.dumps(tokenizer, indent=2))  # same tokenizer, other bytes
    assert_one_line_failure(run(changed), "tokenizer", "does not match the dataset")


def test_render_png_refuses_a_text_dataset(byte_dataset, folder):
    from trm_ray.data import layout
    from trm_ray.data.inspect import render_png

    with pytest.raises(layout.DatasetError, match="PNG rendering is for puzzle datasets"):
        render_png(byte_dataset, str(folder / "lib.png"))
