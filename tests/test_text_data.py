"""`trm-ray data build text`: exact token arrays, splits, determinism, BPE, the hub source (a dataset
repo on the real Hub-protocol server of tests/hub_server.py, online, then offline from the cache it
filled), the generators, one-line errors, Ray and URI builds.

Expected arrays are computed here from the contract (trm_ray/text/build.py's docstring): byte b is
id 3 + b, each document [BOS=1] + ids + [EOS=2], a split's documents concatenated in source order,
windows of S+1 tokens with stride S, the last padded with PAD=0.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from cli_util import assert_one_line_failure

from trm_ray import storage
from hub_server import hub_env
from trm_ray.cli.main import main
from trm_ray.data import layout
from trm_ray.data.layout import DatasetError
from trm_ray.data.loader import read_rows
from trm_ray.data.sources import DatasetBuildError
from trm_ray.text import build as text_build
from trm_ray.text.build import build_text_dataset
from trm_ray.text.info import load_text_info, load_tokenizer
from trm_ray.text.stories import COLOURS, OPPOSITES, SOUNDS, generate_records

# ---------------------------------------------------------------------------------------------
# helpers: the contract, computed independently
# ---------------------------------------------------------------------------------------------
JSONL_LINES = [
    '{"text": "Hi"}',
    "",
    '{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}',
]
JSON_ARRAY = [{"text": "Ok."}, {"messages": [{"role": "User", "content": "caf\u00e9"}]}]
# The rendered documents, written out by hand, in source order (a.jsonl, then b.json).
DOCUMENTS = ["Hi", "<|user|>\n2+2?\n<|assistant|>\n4\n", "Ok.", "<|User|>\ncaf\u00e9\n"]


def write_corpus(folder) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.jsonl").write_text("\n".join(JSONL_LINES) + "\n")
    (folder / "b.json").write_text(json.dumps(JSON_ARRAY, indent=1))
    return [str(folder / "a.jsonl"), str(folder / "b.json")]


def byte_ids(document: str) -> list[int]:
    return [1] + [3 + b for b in document.encode("utf-8")] + [2]


def windows(documents: list[str], seq_len: int) -> np.ndarray:
    stream = [t for d in documents for t in byte_ids(d)]
    rows = []
    start = 0
    while start + 1 < len(stream):  # a label left to predict
        row = stream[start:start + seq_len + 1]
        rows.append(row + [0] * (seq_len + 1 - len(row)))
        start += seq_len
    return np.array(rows, dtype=np.int64).reshape(-1, seq_len + 1)


def split_of(num: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = np.random.default_rng(seed).permutation(num)
    wanted = round(fraction * num)
    if fraction > 0 and num >= 2:
        wanted = min(max(wanted, 1), num - 1)
    return sorted(int(i) for i in order[wanted:]), sorted(int(i) for i in order[:wanted])


def arrays(folder, split: str):
    inputs = np.load(os.path.join(folder, split, "all__inputs.npy"))
    labels = np.load(os.path.join(folder, split, "all__labels.npy"))
    return inputs, labels


def dataset_bytes(folder) -> dict[str, bytes]:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            full = os.path.join(root, name)
            out[os.path.relpath(full, folder)] = open(full, "rb").read()
    return out


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def nothing_left(folder, name="out") -> bool:
    return not [p for p in os.listdir(folder) if p.startswith(name)]


# ---------------------------------------------------------------------------------------------
# exact arrays
# ---------------------------------------------------------------------------------------------
def test_one_document_by_hand(tmp_path):
    (tmp_path / "one.jsonl").write_text('{"text": "Hi"}\n')
    info = build_text_dataset(input_paths=[str(tmp_path / "one.jsonl")], output_dir=str(tmp_path / "out"),
                              max_sequence_length=2, validation_fraction=0, use_ray=False)
    inputs, labels = arrays(tmp_path / "out", "train")
    # "Hi": H = 72, i = 105; stream BOS 75 108 EOS; windows [1 75 108], [108 2 PAD]
    assert inputs.dtype == np.uint16 and inputs.tolist() == [[1, 75], [108, 2]]
    assert labels.tolist() == [[75, 108], [2, 0]]
    assert not (tmp_path / "out" / "test").exists()
    assert info["counts"]["train"] == {"groups": 2, "puzzles": 2, "examples": 2}
    lower = build_text_dataset(input_paths=[str(tmp_path / "one.jsonl")], output_dir=str(tmp_path / "low"),
                               max_sequence_length=4, validation_fraction=0, lowercase=True, use_ray=False)
    assert arrays(tmp_path / "low", "train")[0].tolist() == [[1, 3 + ord("h"), 108, 2]]
    assert load_text_info(tmp_path / "low").lowercase and lower["text"]["lowercase"]


@pytest.mark.parametrize("seq_len, fraction, seed", [(8, 0.5, 3), (5, 0.25, 0), (64, 0.0, 1)])
def test_jsonl_and_json_records_pack_into_exact_windows(tmp_path, seq_len, fraction, seed):
    paths = write_corpus(tmp_path / "src")
    out = tmp_path / "out"
    info = build_text_dataset(input_paths=paths, output_dir=str(out), max_sequence_length=seq_len,
                              validation_fraction=fraction, seed=seed, use_ray=False)
    train, validation = split_of(len(DOCUMENTS), fraction, seed)
    for split, picked in (("train", train), ("test", validation)):
        if not picked:
            assert not (out / split).exists()
            continue
        expected = windows([DOCUMENTS[i] for i in picked], seq_len)
        inputs, labels = arrays(out, split)
        np.testing.assert_array_equal(inputs, expected[:, :seq_len])
        np.testing.assert_array_equal(labels, expected[:, 1:])
        meta = layout.load_metadata(out, split)
        assert (meta.seq_len, meta.vocab_size, meta.pad_id, meta.ignore_label_id) == (seq_len, 259, 0, 0)
        assert (meta.total_groups, meta.total_puzzles, meta.num_puzzle_identifiers) == (len(expected),) * 2 + (1,)
        sets = layout.load_set_arrays(out, split, "all", meta)
        assert sets.puzzle_identifiers.tolist() == [0] * len(expected)
        assert sets.puzzle_indices.tolist() == sets.group_indices.tolist() == list(range(len(expected) + 1))
        # what the training loader hands out: int32 rows, PAD labels ignored
        rows = read_rows(sets, meta, 0, len(expected))
        assert rows["inputs"].dtype == np.int32
        np.testing.assert_array_equal(rows["labels"], np.where(expected[:, 1:] == 0, -100, expected[:, 1:]))
    text = load_text_info(out)
    name = {"train": train, "validation": validation}
    assert text.documents == {k: len(v) for k, v in name.items()}
    assert text.tokens == {k: sum(len(byte_ids(DOCUMENTS[i])) for i in v) for k, v in name.items()}
    assert text.sources == paths and text.seq_len == seq_len and text.tokenizer.kind == "byte"
    assert load_tokenizer(out).vocab_size == 259 and info["kind"] == "text"
    assert set(info["files"]) >= {"tokenizer.json", "text.json", "train/dataset.json"}


def test_split_sizes_and_max_documents(tmp_path):
    lines = [json.dumps({"text": f"document {k}"}) for k in range(40)]
    (tmp_path / "c.jsonl").write_text("\n".join(lines))
    info = build_text_dataset(input_paths=[str(tmp_path / "c.jsonl")], output_dir=str(tmp_path / "out"),
                              max_sequence_length=16, validation_fraction=0.1, seed=5, max_documents=30,
                              use_ray=False)
    assert info["text"]["documents"] == {"train": 27, "validation": 3}  # round(0.1 * 30) of the first 30
    train, validation = split_of(30, 0.1, 5)
    expected = windows([f"document {k}" for k in validation], 16)
    np.testing.assert_array_equal(arrays(tmp_path / "out", "test")[0], expected[:, :16])
    # a small fraction still holds out one document
    small = build_text_dataset(input_paths=[str(tmp_path / "c.jsonl")], output_dir=str(tmp_path / "small"),
                               max_sequence_length=16, validation_fraction=0.001, use_ray=False)
    assert small["text"]["documents"] == {"train": 39, "validation": 1}


# ---------------------------------------------------------------------------------------------
# determinism, processes, BPE
# ---------------------------------------------------------------------------------------------
def test_same_seed_same_bytes_and_another_seed_differs(tmp_path, monkeypatch):
    common = dict(source="generate:stories", num_documents=300, max_sequence_length=32, validation_fraction=0.1,
                  use_ray=False)
    a = build_text_dataset(output_dir=str(tmp_path / "a"), seed=1, **common)
    b = build_text_dataset(output_dir=str(tmp_path / "b"), seed=1, **common)
    assert a["content_sha256"] == b["content_sha256"]
    assert dataset_bytes(tmp_path / "a") == dataset_bytes(tmp_path / "b")
    # small tokenizing tasks on two local processes: the same bytes
    monkeypatch.setattr(text_build, "POOL_MIN_CHARS", 0)
    monkeypatch.setattr(text_build, "TOKENIZE_CHUNK_CHARS", 3000)
    c = build_text_dataset(output_dir=str(tmp_path / "c"), seed=1, num_cpus=2, **common)
    assert c["content_sha256"] == a["content_sha256"]
    other = build_text_dataset(output_dir=str(tmp_path / "d"), seed=2, **common)
    assert other["content_sha256"] != a["content_sha256"]
    assert arrays(tmp_path / "d", "train")[0].tobytes() != arrays(tmp_path / "a", "train")[0].tobytes()


def test_bpe_round_trip_and_the_windows_decode_to_the_documents(tmp_path):
    out = tmp_path / "out"
    info = build_text_dataset(source="generate:chat", num_documents=200, output_dir=str(out), max_sequence_length=24,
                              tokenizer="bpe:400", validation_fraction=0.1, seed=4, use_ray=False)
    tokenizer = load_tokenizer(out)
    assert tokenizer.kind == "bpe" and 259 <= tokenizer.vocab_size <= 400
    assert info["text"]["tokenizer"]["vocab_size"] == tokenizer.vocab_size
    assert layout.load_metadata(out, "train").vocab_size == tokenizer.vocab_size
    for text in ("What colour is the sky?", "caf\u00e9 \u2603 \U0001f600 never seen\ttabs\n", ""):
        assert tokenizer.decode(tokenizer.encode(text)) == text
    records = generate_records("chat", 0, 200, 4)
    rendered = ["".join(f"<|{m['role']}|>\n{m['content']}\n" for m in r["messages"]) for r in records]
    train, _ = split_of(200, 0.1, 4)
    inputs, labels = arrays(out, "train")
    stream = np.concatenate([inputs.reshape(-1), labels[-1, -1:]])  # windows tile the stream with stride S
    stream = stream[:np.flatnonzero(stream)[-1] + 1]
    ids = stream.tolist()
    assert ids[0] == 1 and ids[-1] == 2 and ids.count(1) == len(train)
    documents, current = [], []
    for token in ids:
        if token == 1:
            current = []
        elif token == 2:
            documents.append(tokenizer.decode(current))
        else:
            current.append(token)
    assert documents == [rendered[i] for i in train]
    # the same corpus and seed train the same BPE
    again = build_text_dataset(source="generate:chat", num_documents=200, output_dir=str(tmp_path / "again"),
                               max_sequence_length=24, tokenizer="bpe:400", validation_fraction=0.1, seed=4,
                               use_ray=False)
    assert again["content_sha256"] == info["content_sha256"]
    # a tokenizer.json that is not the dataset's is refused in one line
    (out / "tokenizer.json").write_text((tmp_path / "again" / "tokenizer.json").read_text() + " ")
    with pytest.raises(DatasetError, match="does not match the dataset") as error:
        load_tokenizer(out)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------
# generators
# ---------------------------------------------------------------------------------------------
def test_generators_are_deterministic_and_chat_answers_follow_from_questions():
    for kind in ("stories", "chat"):
        full = generate_records(kind, 0, 60, seed=7)
        assert full == generate_records(kind, 0, 60, seed=7)
        assert full[20:30] == generate_records(kind, 20, 10, seed=7)  # independent of task boundaries
        assert full != generate_records(kind, 0, 60, seed=8)
    stories = [r["text"] for r in generate_records("stories", 0, 300, seed=0)]
    assert len(set(stories)) == 300 and min(s.count(". ") for s in stories) >= 5
    for story in stories[:50]:
        name = re.match(r"(?:Once upon a time, there was|One day,|There was once) \w+ [\w ]*?(?:named|called) (\w+)",
                        story).group(1)
        assert story.count(name) >= 3, story
    answers: dict[str, str] = {}
    for record in generate_records("chat", 0, 500, seed=0):
        messages = record["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
        for question, answer in zip(messages[::2], messages[1::2]):
            q, a = question["content"], answer["content"]
            assert answers.setdefault(q, a) == a, q  # one answer per question
            if m := re.fullmatch(r"What is (\d+) (plus|minus|times) (\d+)\?", q):
                x, op, y = int(m[1]), m[2], int(m[3])
                assert a == f"{x} {op} {y} is {x + y if op == 'plus' else x - y if op == 'minus' else x * y}."
            elif m := re.fullmatch(r"Count from (\d+) to (\d+)\.", q):
                assert a == ", ".join(str(v) for v in range(int(m[1]), int(m[2]) + 1)) + "."
            elif m := re.fullmatch(r"What colour is (.+)\?", q):
                assert a.endswith(f" is {COLOURS[m[1]]}.")
            elif m := re.fullmatch(r"What is the opposite of (\w+)\?", q):
                assert a == f"The opposite of {m[1]} is {OPPOSITES[m[1]]}."
            elif m := re.fullmatch(r"What does a (\w+) say\?", q):
                assert a == f"A {m[1]} says {SOUNDS[m[1]]}."
    assert len(answers) > 100


# ---------------------------------------------------------------------------------------------
# hub source, against a real Hub-protocol server on 127.0.0.1 (tests/hub_server.py)
# ---------------------------------------------------------------------------------------------
HUB_TOKEN = "hf_alice_writes_text"
HUB_REPO = "alice/tiny-stories"
# The dataset repo as uploaded: three parquet files (read in name order), files of other kinds the
# build must leave alone (JSON Lines and text come after parquet), a card and a metadata file.
HUB_PARQUET = {"data/train-00000.parquet": ["Story one.", "Story two.", "Story three."],
               "data/train-00001.parquet": ["Story four.", "Story five."],
               "data/train-00002.parquet": ["Story six."]}
HUB_OTHER = {"data/extra.jsonl": '{"text": "JSON Lines are read only when there is no parquet"}\n',
             "notes.txt": "text files come after JSON Lines\n",
             "README.md": "---\nlicense: mit\ntask_categories:\n- text-generation\n---\n# Tiny stories\n",
             "dataset_infos.json": '{"default": {"features": {"text": {"dtype": "string"}}}}'}
# A second commit on main (after branch v1 was made) replaces the first file.
HUB_MAIN_FIRST_FILE = ["Changed on main."]
# Uploads with huggingface_hub's own API, as a user would (HF_ENDPOINT and HF_TOKEN from the
# environment): the repo, branch v1 at the first upload, then a change on main, and branch live
# there (for the test that moves it).
HUB_UPLOAD = r"""
import sys
from huggingface_hub import HfApi
folder, changed = sys.argv[1:]
api = HfApi()
api.create_repo("alice/tiny-stories", repo_type="dataset")
api.upload_folder(folder_path=folder, repo_id="alice/tiny-stories", repo_type="dataset", commit_message="stories v1")
api.create_branch("alice/tiny-stories", branch="v1", repo_type="dataset")
api.upload_file(path_or_fileobj=changed, path_in_repo="data/train-00000.parquet", repo_id="alice/tiny-stories",
                repo_type="dataset", commit_message="stories v2")
api.create_branch("alice/tiny-stories", branch="live", repo_type="dataset")
"""


def write_parquet(path, texts) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), path)


@pytest.fixture(scope="module")
def hub_dataset(tmp_path_factory):
    """The test Hub server holding HUB_REPO; yields (server, v1 commit, main commit), the commits
    read back over plain HTTP."""
    from hub_server import HubServer

    folder = tmp_path_factory.mktemp("hub-upload")
    repo = folder / "repo"
    for name, texts in HUB_PARQUET.items():
        write_parquet(repo / name, texts)
    for name, text in HUB_OTHER.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    write_parquet(folder / "changed.parquet", HUB_MAIN_FIRST_FILE)
    server = HubServer.start(tokens={HUB_TOKEN: "alice"})
    try:
        done = subprocess.run([sys.executable, "-c", HUB_UPLOAD, str(repo), str(folder / "changed.parquet")],
                              env=server.env(folder / "hf-home"), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        commits = server.commits(HUB_REPO, repo_type="dataset")
        assert [summary for _, summary in commits] == ["initial commit", "stories v1", "stories v2"]
        v1, main_ = commits[1][0], commits[2][0]
        for name in (*HUB_PARQUET, *HUB_OTHER):
            assert server.file(HUB_REPO, name, revision=v1, repo_type="dataset") == (repo / name).read_bytes(), name
        assert (server.file(HUB_REPO, "data/train-00000.parquet", repo_type="dataset")
                == (folder / "changed.parquet").read_bytes())
        yield server, v1, main_
    finally:
        server.stop()


def text_cli(env, cwd, *args) -> tuple[int, str]:
    """`trm-ray data build text ...` in a new process: huggingface_hub reads HF_* when imported."""
    done = subprocess.run([sys.executable, "-c", "from trm_ray.cli.main import main; main()",
                           "data", "build", "text", *args, "--no-ray"],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def cached_files(hf_home, repo_id: str) -> dict[str, list[str]]:
    """What the Hugging Face cache holds of a dataset repo: commit -> the files downloaded at it."""
    snapshots = hf_home / "hub" / f"datasets--{repo_id.replace('/', '--')}" / "snapshots"
    if not snapshots.exists():
        return {}
    return {commit.name: sorted(str(p.relative_to(commit)) for p in commit.rglob("*") if p.is_file())
            for commit in snapshots.iterdir()}


def test_hub_source_online_fetches_only_the_files_it_needs(hub_dataset, tmp_path):
    """A revision (branch v1) is pinned to its commit; parquet files are preferred over the repo's
    JSON Lines and text, metadata files are not read, and downloading stops at --max-documents."""
    server, v1, _ = hub_dataset
    args = ("--source", f"hf:{HUB_REPO}@v1", "--max-documents", "4", "--max-sequence-length", "16",
            "--validation-fraction", "0.25")
    code, output = text_cli(server.env(tmp_path / "hf-home", token=None), tmp_path, *args, "--output-dir", "out")
    assert code == 0, output
    assert "train 3 documents" in output and "validation 1 documents" in output
    # v1's documents (main changed its first file since), the first 4 of them in file order
    texts = [t for name in sorted(HUB_PARQUET) for t in HUB_PARQUET[name]][:4]
    train, validation = split_of(4, 0.25, 0)
    for split, picked in (("train", train), ("test", validation)):
        expected = windows([texts[i] for i in picked], 16)
        inputs, labels = arrays(tmp_path / "out", split)
        np.testing.assert_array_equal(inputs, expected[:, :16])
        np.testing.assert_array_equal(labels, expected[:, 1:])
    # the third parquet file was not needed, and nothing else was fetched
    assert cached_files(tmp_path / "hf-home", HUB_REPO) == {
        v1: ["data/train-00000.parquet", "data/train-00001.parquet"]}
    assert load_text_info(tmp_path / "out").sources == [f"hf:{HUB_REPO}@{v1}"]
    build = json.loads((tmp_path / "out" / "build.json").read_text())
    assert build["text"]["sources"] == [f"hf:{HUB_REPO}@{v1}"]
    # the cache knows the branch too: the same command offline gives the same bytes
    code, output = text_cli(hub_env("http://127.0.0.1:9", tmp_path / "hf-home", offline=True), tmp_path, *args,
                            "--output-dir", "offline")
    assert code == 0, output
    assert dataset_bytes(tmp_path / "offline") == dataset_bytes(tmp_path / "out")


def test_hub_source_offline_rebuilds_from_what_an_online_build_cached(hub_dataset, tmp_path):
    """Built once online (main, every file), then again with HF_HUB_OFFLINE=1 and an endpoint
    nothing answers on: the same bytes, from the cache; a repo never downloaded is a one-line error."""
    server, _, main_ = hub_dataset
    hf_home = tmp_path / "hf-home"
    args = ("--source", f"hf:{HUB_REPO}", "--max-sequence-length", "16", "--validation-fraction", "0.25")
    code, output = text_cli(server.env(hf_home, token=None), tmp_path, *args, "--output-dir", "online")
    assert code == 0, output
    texts = HUB_MAIN_FIRST_FILE + [t for name in sorted(HUB_PARQUET)[1:] for t in HUB_PARQUET[name]]
    train, validation = split_of(len(texts), 0.25, 0)
    for split, picked in (("train", train), ("test", validation)):
        expected = windows([texts[i] for i in picked], 16)
        np.testing.assert_array_equal(arrays(tmp_path / "online", split)[0], expected[:, :16])
    assert cached_files(hf_home, HUB_REPO) == {main_: sorted(HUB_PARQUET)}
    assert load_text_info(tmp_path / "online").sources == [f"hf:{HUB_REPO}@{main_}"]

    offline = hub_env("http://127.0.0.1:9", hf_home, offline=True)
    code, output = text_cli(offline, tmp_path, *args, "--output-dir", "offline")
    assert code == 0, output
    assert dataset_bytes(tmp_path / "offline") == dataset_bytes(tmp_path / "online")
    code, output = text_cli(offline, tmp_path, "--source", "hf:alice/not-cached", "--max-sequence-length", "16",
                            "--output-dir", "out2")
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), output
    assert "alice/not-cached" in lines[0] and "HF_HUB_OFFLINE=1" in lines[0] and nothing_left(tmp_path, "out2")


def test_hub_source_that_moves_during_the_build_is_an_error(hub_dataset, tmp_path):
    """Branch live is pointed back at v1 once its first file is sent (someone pushed): the second
    file would come from another commit than the one listed, so the build stops in one line."""
    server, v1, main_ = hub_dataset
    server.move_after_downloads(HUB_REPO, "live", v1, 1, repo_type="dataset")
    code, output = text_cli(server.env(tmp_path / "hf-home", token=None), tmp_path, "--source", f"hf:{HUB_REPO}@live",
                            "--max-sequence-length", "16", "--output-dir", "out")
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), output
    assert "changed on the hub during the build" in lines[0] and main_ in lines[0] and nothing_left(tmp_path)
    assert cached_files(tmp_path / "hf-home", HUB_REPO) == {main_: ["data/train-00000.parquet"],
                                                             v1: ["data/train-00001.parquet"]}


# ---------------------------------------------------------------------------------------------
# bad input: one line through the command line, nothing left behind
# ---------------------------------------------------------------------------------------------
def test_bad_inputs_are_one_line_errors(tmp_path):
    out = str(tmp_path / "out")

    def text(*args):
        return run("data", "build", "text", "--output-dir", out, "--no-ray", *args)

    def files(name, content, *args):
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return text("--input-paths", str(path), "--max-sequence-length", "8", *args)

    cases = [
        (files("neither.jsonl", '{"text": "fine"}\n{"title": "no text"}\n'), "neither.jsonl:2", "neither 'text' nor 'messages'"),
        (files("neither.json", '[{"text": "fine"}, {"body": 1}]'), "neither.json[1]", "neither 'text' nor 'messages'"),
        (files("badmsg.json", '[{"messages": [{"role": "user"}]}]'), "badmsg.json[0]", "messages[0]"),
        (files("badline.jsonl", '{"text": "fine"}\n{"text": oops}\n'), "badline.jsonl:2", "not valid JSON"),
        (files("binary.jsonl", b'{"text": "\xff\xfe"}\n'), "binary.jsonl", "not UTF-8"),
        (files("empty.jsonl", "\n\n"), "no documents", "empty"),
        (files("single.jsonl", '{"text": "alone"}\n'), "1 document", "--validation-fraction 0"),
        (files("ok.jsonl", '{"text": "a"}\n{"text": "b"}\n', "--tokenizer", "bpe:100"), "bpe:100", "259"),
        (files("ok.jsonl", '{"text": "a"}\n{"text": "b"}\n', "--tokenizer", "wordpiece"), "wordpiece", "byte"),
        (text("--input-paths", str(tmp_path / "ok.jsonl"), "--max-sequence-length", "1"), "--max-sequence-length 1",
         "at least 2 tokens"),
        (text("--source", "somewhere", "--max-sequence-length", "8"), "somewhere", "generate:stories"),
        (text("--source", "generate:poems", "--max-sequence-length", "8"), "generate:poems", "generate:chat"),
        (text("--input-paths", str(tmp_path / "missing.jsonl"), "--max-sequence-length", "8"), "missing.jsonl",
         "does not exist"),
        (text("--input-paths", str(tmp_path), "--max-sequence-length", "8"), str(tmp_path), "is a folder"),
        (text("--max-sequence-length", "8"), "--input-paths", "--source"),
        (text("--input-paths", str(tmp_path / "ok.jsonl"), "--num-documents", "5", "--max-sequence-length", "8"),
         "--num-documents", "generate:"),
        (text("--input-paths", str(tmp_path / "ok.jsonl")), "--max-sequence-length"),
        (text("--source", "generate:chat", "--max-sequence-length", "8", "--num-aug", "3"), "--num-aug",
         "puzzle options"),
        (run("data", "build", "sudoku", "--source", "generate", "--max-sequence-length", "8", "--output-dir", out),
         "--max-sequence-length", "only for text builds"),
    ]
    for result, *words in cases:
        assert_one_line_failure(result, *words)
        assert nothing_left(tmp_path), os.listdir(tmp_path)
    with pytest.raises(DatasetBuildError, match="validation-fraction"):
        build_text_dataset(source="generate:chat", output_dir=out, max_sequence_length=8, validation_fraction=1.0)
    # the list flag takes several paths, and a good build prints one summary line
    ok = text("--input-paths", *write_corpus(tmp_path / "src"), "--max-sequence-length", "8")
    assert ok.exit_code == 0, ok.output
    assert re.fullmatch(r"built .*: train \d+ documents / \d+ windows / \d+ tokens; validation 1 documents .*"
                        r"vocab 259 \(byte\); .* this process; content sha256 [0-9a-f]{16}\n", ok.output), ok.output
    assert_one_line_failure(text("--source", "generate:chat", "--max-sequence-length", "8"), "already exists")


# ---------------------------------------------------------------------------------------------
# Ray Data and a URI output
# ---------------------------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.slow
def test_ray_and_local_builds_are_equal(ray_cpus2, tmp_path):
    paths = write_corpus(tmp_path / "src")
    for options in (dict(input_paths=paths + paths, max_sequence_length=8, validation_fraction=0.5),
                    dict(source="generate:stories", num_documents=1200, max_sequence_length=64, tokenizer="bpe:300")):
        on_ray = build_text_dataset(output_dir=str(tmp_path / "ray"), use_ray=True, overwrite=True, **options)
        local = build_text_dataset(output_dir=str(tmp_path / "local"), use_ray=False, overwrite=True, **options)
        assert on_ray["content_sha256"] == local["content_sha256"], options
        assert dataset_bytes(tmp_path / "ray") == dataset_bytes(tmp_path / "local")


@pytest.mark.slow
def test_uri_output_on_s3(s3, tmp_path):
    paths = write_corpus(tmp_path / "src")
    common = dict(input_paths=paths, max_sequence_length=8, validation_fraction=0.5, use_ray=False)
    remote = build_text_dataset(output_dir="s3://trm/text/corpus", **common)
    local = build_text_dataset(output_dir=str(tmp_path / "local"), **common)
    assert remote["content_sha256"] == local["content_sha256"]
    written = storage.list_files("s3://trm/text/corpus")
    assert layout.PENDING_FILE not in written
    for rel, content in dataset_bytes(tmp_path / "local").items():
        assert storage.read_bytes(f"s3://trm/text/corpus/{rel}") == content, rel
    assert load_tokenizer("s3://trm/text/corpus").vocab_size == 259
    # inputs on the object store are read like local files
    storage.write_bytes("s3://trm/text/in/a.jsonl", open(paths[0], "rb").read())
    storage.write_bytes("s3://trm/text/in/b.json", open(paths[1], "rb").read())
    build_text_dataset(**{**common, "input_paths": ["s3://trm/text/in/a.jsonl", "s3://trm/text/in/b.json"]},
                                  output_dir=str(tmp_path / "from-uri"))
    assert arrays(tmp_path / "from-uri", "train")[0].tolist() == arrays(tmp_path / "local", "train")[0].tolist()
