"""The text evaluator and generation: val loss, perplexity and next-token accuracy against
cross-entropy computed by hand on the model's logits (softmax and stablemax models), merged
workers, generation against a hand-written greedy loop, seeds, the causal window, and
`trm-ray generate` on a checkpoint of a short in-process text run (with its one-line errors)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner

from trm_ray.checkpoint import load_checkpoint, save_checkpoint
from trm_ray.cli.main import main as cli
from trm_ray.config import ArchConfig, DataShape, TrainConfig
from trm_ray.data.loader import PuzzleLoader
from trm_ray.eval import build_evaluators, evaluate
from trm_ray.eval.core import EvalAccumulator, predict_real_rows
from trm_ray.inference import predict
from trm_ray.model import build_model
from trm_ray.run_folder import summarize
from trm_ray.text.evaluate import CONTINUATIONS_FILE, TextEvaluator
from trm_ray.text.generate import continuations, generate
from trm_ray.text.info import TextInfo, tokenizer_info
from trm_ray.text.tokenizer import TextTokenizer

torch.set_num_threads(1)

SEQ = 12
BOS, EOS, PAD = 1, 2, 0
TRAIN_DOCS = ["the cat sat on the mat", "a dog ran to the park", "the sun was warm", "tom had a red ball",
              "the bird sang a song", "we ate the cake", "a fish swam far", "the cat saw the dog"]
VALIDATION_DOCS = ["the dog sat on the mat", "a cat ran to the sun", "the ball was red"]


# --------------------------------------------------------------------------------------------
# a text dataset written by hand (the layout of trm_ray/data/layout.py, packing of text.json)
# --------------------------------------------------------------------------------------------
def pack(docs: list[str], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Byte ids (3 + byte), each document [BOS] + ids + [EOS], joined, windows of S+1 with stride S."""
    stream = [t for d in docs for t in [BOS, *(3 + b for b in d.encode()), EOS]]
    windows = []
    for start in range(0, len(stream) - 1, seq_len):
        w = stream[start:start + seq_len + 1]
        windows.append(w + [PAD] * (seq_len + 1 - len(w)))
    w = np.array(windows, np.int64)
    return w[:, :-1], w[:, 1:]


def write_split(root: Path, split: str, docs: list[str], seq_len: int) -> None:
    inputs, labels = pack(docs, seq_len)
    n = len(inputs)
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "all__inputs.npy", inputs.astype(np.uint16))
    np.save(folder / "all__labels.npy", labels.astype(np.uint16))
    np.save(folder / "all__puzzle_identifiers.npy", np.zeros(n, np.int32))
    np.save(folder / "all__puzzle_indices.npy", np.arange(n + 1, dtype=np.int32))
    np.save(folder / "all__group_indices.npy", np.arange(n + 1, dtype=np.int32))
    (folder / "dataset.json").write_text(json.dumps({
        "pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": 259, "seq_len": seq_len,
        "num_puzzle_identifiers": 1, "total_groups": n, "mean_puzzle_examples": 1.0, "total_puzzles": n,
        "sets": ["all"]}))


def write_text_dataset(root: Path, seq_len: int = SEQ, lowercase: bool = False) -> Path:
    write_split(root, "train", TRAIN_DOCS, seq_len)
    write_split(root, "test", VALIDATION_DOCS, seq_len)
    (root / "identifiers.json").write_text(json.dumps(["<blank>"]))
    tokenizer = TextTokenizer.byte()
    (root / "tokenizer.json").write_text(tokenizer.to_json())
    info = TextInfo(tokenizer=tokenizer_info(tokenizer), seq_len=seq_len, lowercase=lowercase,
                    documents={"train": len(TRAIN_DOCS), "validation": len(VALIDATION_DOCS)})
    (root / "text.json").write_text(info.to_json())
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_text_dataset(tmp_path_factory.mktemp("text"))


def text_arch(**overrides) -> ArchConfig:
    base = dict(hidden_size=32, num_heads=2, expansion=2.0, H_cycles=2, L_cycles=1, L_layers=1, puzzle_emb_ndim=0,
                pos_encodings="rope", forward_dtype="float32", halt_max_steps=2, causal=True,
                loss_type="softmax_cross_entropy")
    return ArchConfig(**{**base, **overrides})


def text_model(seed: int = 0, seq_len: int = SEQ, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(text_arch(**overrides), DataShape(seq_len=seq_len, vocab_size=259, num_puzzle_identifiers=1),
                        batch_size=4)
    with torch.no_grad():  # a spread-out output layer: distinct, confident predictions
        model.model.inner.lm_head.weight.normal_(std=0.5)
    return model.eval()


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
def by_hand(model, dataset: Path, loss_type: str) -> dict[str, float]:
    """Nats, tokens, correct argmaxes over the test split from predict()'s logits alone."""
    nll, tokens, correct = 0.0, 0, 0
    for item in PuzzleLoader([str(dataset)], "test", global_batch_size=4, to_torch=False):
        n = item.num_real_rows
        labels = torch.from_numpy(item.batch["labels"][:n].astype(np.int64))
        logits = torch.from_numpy(predict(model, item.batch)["logits"][:n]).double()
        mask = labels != -100
        if loss_type == "softmax_cross_entropy":
            nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                         ignore_index=-100, reduction="sum"))
        else:  # stablemax written out: s(x) = 1/(1-x) below 0, x+1 above; p = s / sum s
            s = np.where(logits.numpy() < 0, 1.0 / (1.0 - np.minimum(logits.numpy(), 0)), logits.numpy() + 1.0)
            p = s / s.sum(-1, keepdims=True)
            picked = np.take_along_axis(p, torch.where(mask, labels, 0).numpy()[..., None], -1)[..., 0]
            nll += float(-np.log(picked)[mask.numpy()].sum())
        tokens += int(mask.sum())
        correct += int(((logits.argmax(-1) == labels) & mask).sum())
    return {"text/val_loss": nll / tokens, "text/perplexity": math.exp(nll / tokens),
            "text/next_token_accuracy": correct / tokens, "text/tokens": float(tokens)}


@pytest.mark.parametrize("loss_type", ["softmax_cross_entropy", "stablemax_cross_entropy"])
def test_metrics_equal_cross_entropy_by_hand(dataset, loss_type):
    model = text_model(loss_type=loss_type)
    loader = PuzzleLoader([str(dataset)], "test", global_batch_size=4, to_torch=False)
    metrics = evaluate(model, loader, [TextEvaluator(dataset)])
    expected = by_hand(model, dataset, loss_type)
    labels = np.load(dataset / "test" / "all__labels.npy")
    assert expected["text/tokens"] == float((labels != 0).sum())  # every non-PAD label is a target
    assert {k: metrics[k] for k in expected} == pytest.approx(expected, rel=1e-9)
    assert metrics["text/val_loss"] > 0 and "eval/exact_accuracy" in metrics  # the puzzle metrics stay


def test_two_workers_merge_to_the_one_worker_numbers(dataset):
    model = text_model()
    loader = PuzzleLoader([str(dataset)], "test", global_batch_size=2, to_torch=False)
    rows = [predict_real_rows(model, item.batch, item.num_real_rows) for item in loader]
    assert len(rows) >= 3
    one = TextEvaluator(dataset)
    workers = [TextEvaluator(dataset), TextEvaluator(dataset)]
    for i, (batch, outputs) in enumerate(rows):
        one.update(batch, outputs)
        workers[i % 2].update(batch, outputs)
    workers[1].merge([workers[1].state(), workers[0].state()])  # another order than the single worker's
    assert workers[1].result() == one.result()  # to the bit
    one.reset()
    assert one.result()["text/tokens"] == 0.0

    # the accumulator of Ray workers' results (trm_ray.eval.ray_data) merges them the same way
    accumulators = [EvalAccumulator([TextEvaluator(dataset)], 2) for _ in range(2)]
    for i, (batch, outputs) in enumerate(rows):
        accumulators[i % 2].add("all", batch, outputs)
    accumulators[0].merge([accumulators[1]])
    assert {k: v for k, v in accumulators[0].result().items() if k.startswith("text/")} == workers[1].result()


def test_recipe_entry_builds_it_and_a_puzzle_dataset_is_refused(dataset, tmp_path):
    (text,) = build_evaluators([{"name": "text", "prompts": ["the"], "max_new_tokens": 4}], [str(dataset)])
    assert isinstance(text, TextEvaluator) and text.prompts == ["the"] and text.max_new_tokens == 4
    (tmp_path / "puzzles").mkdir()
    with pytest.raises(ValueError, match="needs a text dataset"):
        build_evaluators([{"name": "text"}], [str(tmp_path / "puzzles")])
    with pytest.raises(ValueError, match="'arc', 'text'"):
        build_evaluators([{"name": "sudoku"}], [str(dataset)])
    with pytest.raises(ValueError, match="temperature"):
        TextEvaluator(dataset, temperature=-1)


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------
def greedy_by_hand(model, prompt_ids: list[int], steps: int, seq_len: int) -> list[int]:
    """The generation loop written out: window = last seq_len of [BOS] + tokens, PAD after,
    predict() (the evaluation rollout), argmax at the last real position, stop at EOS."""
    tokens, new = [BOS, *prompt_ids], []
    for _ in range(steps):
        window = tokens[-seq_len:]
        inputs = np.full((1, seq_len), PAD, np.int32)
        inputs[0, :len(window)] = window
        logits = predict(model, {"inputs": inputs, "puzzle_identifiers": np.zeros(1, np.int32)})["logits"]
        token = int(np.argmax(logits[0, len(window) - 1]))
        if token == EOS:
            break
        tokens.append(token)
        new.append(token)
    return new


@pytest.mark.parametrize("loss_type", ["softmax_cross_entropy", "stablemax_cross_entropy"])
def test_greedy_is_the_argmax_loop_and_sampling_follows_its_seed(loss_type):
    model, tokenizer = text_model(seed=3, loss_type=loss_type), TextTokenizer.byte()
    # a prompt longer than the window (cut from the left) and a window that slides as it grows
    for prompt in ["the cat", "a long prompt that does not fit"]:
        expected = greedy_by_hand(model, tokenizer.encode(prompt), 15, SEQ)
        assert generate(model, tokenizer, prompt, max_new_tokens=15) == tokenizer.decode(expected)
        # sampling among the single most likely token, or at a vanishing temperature, is greedy
        assert generate(model, tokenizer, prompt, max_new_tokens=15, temperature=1.0, top_k=1, seed=5) == \
            tokenizer.decode(expected)
        assert generate(model, tokenizer, prompt, max_new_tokens=15, temperature=1e-4, seed=5) == \
            tokenizer.decode(expected)

    flat = text_model(seed=3, loss_type=loss_type)
    with torch.no_grad():  # near-uniform next-token distribution: samples of different seeds differ
        flat.model.inner.lm_head.weight.mul_(0.01)
    sample = [generate(flat, tokenizer, "the", max_new_tokens=20, temperature=1.0, seed=s) for s in (0, 0, 1)]
    assert sample[0] == sample[1] and sample[0] != sample[2]
    assert generate(flat, tokenizer, "the", max_new_tokens=0) == ""

    rows = continuations(flat, tokenizer, ["the", "a dog"], max_new_tokens=20, temperature=1.0, seed=0)
    assert [r["prompt"] for r in rows] == ["the", "a dog"]
    assert rows[0]["sampled"] == sample[0]
    assert rows[1]["greedy"] == generate(flat, tokenizer, "a dog", max_new_tokens=20)
    with pytest.raises(ValueError, match="temperature"):
        generate(flat, tokenizer, "the", max_new_tokens=3, temperature=-0.5)


def test_a_later_token_never_changes_earlier_logits():
    model = text_model(seed=1)
    rng = np.random.default_rng(0)
    inputs = rng.integers(3, 259, (1, SEQ)).astype(np.int32)
    base = predict(model, {"inputs": inputs, "puzzle_identifiers": np.zeros(1, np.int32)})["logits"]
    for position in (1, 5, SEQ - 1):
        changed = inputs.copy()
        changed[0, position:] = rng.integers(0, 259, SEQ - position)  # PAD or anything after `position`
        logits = predict(model, {"inputs": changed, "puzzle_identifiers": np.zeros(1, np.int32)})["logits"]
        np.testing.assert_allclose(logits[0, :position], base[0, :position], rtol=1e-5, atol=1e-5)
        assert not np.allclose(logits[0, position:], base[0, position:])


# --------------------------------------------------------------------------------------------
# a text run's checkpoints and `trm-ray generate`
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_run(tmp_path_factory, dataset) -> Path:
    from trm_ray.train.loop import train
    from trm_ray.train.session import LocalSession

    run = tmp_path_factory.mktemp("run")
    arch = text_arch().model_dump()
    arch.pop("name")
    config = TrainConfig(arch=arch, data_paths=[str(dataset)], global_batch_size=4, epochs=4, eval_interval=2,
                         lr=1e-2, lr_warmup_steps=1, ema=True, ema_rate=0.9, seed=0, run_name="text",
                         tracking={"wandb": False},
                         evaluators=[{"name": "text", "prompts": ["the cat", "a"], "max_new_tokens": 6,
                                      "temperature": 1.0, "seed": 2}])
    final = train(config, LocalSession(run))
    (run / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))  # as `trm-ray train` does
    assert final["text/tokens"] > 0 and math.isfinite(final["text/val_loss"])
    return run


def test_a_text_run_logs_continuations_and_its_checkpoints_carry_the_tokenizer(text_run, dataset):
    records = [json.loads(line) for line in (text_run / CONTINUATIONS_FILE).read_text().splitlines()]
    assert [(r["step"] > 0, r["prompt"]) for r in records] == [(True, "the cat"), (True, "a")] * 2
    assert all(isinstance(r["greedy"], str) and isinstance(r["sampled"], str) for r in records)
    checkpoints = sorted(text_run.glob("checkpoint_*"))
    assert checkpoints
    for folder in checkpoints:
        assert (folder / "tokenizer.json").read_bytes() == (dataset / "tokenizer.json").read_bytes()
        assert (folder / "text.json").read_bytes() == (dataset / "text.json").read_bytes()
    # the last evaluation's continuations are those of the weights the last checkpoint holds
    model = load_checkpoint(checkpoints[-1])
    last = records[-2:]
    tokenizer = TextTokenizer.byte()
    assert last[0]["greedy"] == generate(model, tokenizer, "the cat", max_new_tokens=6, seq_len=SEQ)
    assert last[1]["sampled"] == generate(model, tokenizer, "a", max_new_tokens=6, temperature=1.0, seed=2,
                                          seq_len=SEQ)


def test_generate_command_prints_the_continuation_deterministically(text_run, tmp_path):
    checkpoint = sorted(text_run.glob("checkpoint_*"))[-1]
    # the checkpoint alone: copied away from its run folder and dataset
    alone = tmp_path / "alone"
    shutil.copytree(checkpoint, alone)
    runner = CliRunner()
    greedy = runner.invoke(cli, ["generate", str(alone), "--prompt", "the cat", "--max-new-tokens", "8"])
    assert greedy.exit_code == 0, greedy.output
    model, tokenizer = load_checkpoint(alone), TextTokenizer.byte()
    assert greedy.output == generate(model, tokenizer, "the cat", max_new_tokens=8, seq_len=SEQ) + "\n"
    at_uri = runner.invoke(cli, ["generate", f"file://{alone}", "--prompt", "the cat", "--max-new-tokens", "8"])
    assert at_uri.exit_code == 0 and at_uri.output == greedy.output, at_uri.output  # fetched with its tokenizer

    args = ["generate", str(text_run), "--prompt", "the", "--max-new-tokens", "10", "--temperature", "1.0",
            "--seed", "4", "--num-samples", "2"]  # a run folder stands for its best checkpoint
    first, again = runner.invoke(cli, args), runner.invoke(cli, args)
    assert first.exit_code == 0 and first.output == again.output, first.output
    lines = first.output.splitlines()
    assert lines[0] == "--- sample 1 (seed 4) ---" and "--- sample 2 (seed 5) ---" in lines
    run = summarize(str(text_run))
    chosen = load_checkpoint(run.best_checkpoint or run.last_checkpoint)
    expected = generate(chosen, tokenizer, "the", max_new_tokens=10, temperature=1.0, seed=5, seq_len=SEQ)
    assert first.output.endswith("--- sample 2 (seed 5) ---\n" + expected + "\n")


def test_generate_command_errors_are_one_line(text_run, tmp_path):
    checkpoint = sorted(text_run.glob("checkpoint_*"))[-1]
    (tmp_path / "empty").mkdir()
    puzzle = tmp_path / "puzzle"  # a model with no tokenizer and no text dataset in its config
    save_checkpoint(text_model(), str(puzzle) + "/", text_arch())
    other_bytes = tmp_path / "other-bytes"  # a tokenizer.json that is not the one text.json names
    shutil.copytree(checkpoint, other_bytes)
    (other_bytes / "tokenizer.json").write_text(json.dumps(json.loads((other_bytes / "tokenizer.json").read_text()),
                                                           indent=1))
    other_vocab = tmp_path / "other-vocab"  # a byte tokenizer beside a model of 300 tokens
    torch.manual_seed(0)
    save_checkpoint(build_model(text_arch(), DataShape(seq_len=SEQ, vocab_size=300, num_puzzle_identifiers=1), 1),
                    str(other_vocab) + "/", text_arch())
    for name in ("tokenizer.json", "text.json"):
        shutil.copy(checkpoint / name, other_vocab / name)
    cases = [
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(tmp_path / "empty")], "does not exist"),
        ([str(puzzle)], "not a text model"),
        ([str(other_bytes)], "does not match"),
        ([str(other_vocab)], "does not match the model"),
        ([str(checkpoint), "--temperature", "-1"], "temperature"),
        ([str(checkpoint), "--num-samples", "0"], "--num-samples"),
    ]
    runner = CliRunner()
    for args, message in cases:
        result = runner.invoke(cli, ["generate", *args, "--prompt", "the"])
        assert result.exit_code != 0 and message in result.output, (args, result.output)
        assert result.output.strip().count("\n") == 0, result.output


@pytest.mark.ray
@pytest.mark.slow
def test_ray_data_eval_gives_the_in_process_text_metrics(dataset, tmp_path):
    """label_nll travels back from the Ray Data workers with the other row outputs."""
    import ray

    from trm_ray.eval import evaluate_checkpoint

    save_checkpoint(text_model(seed=4), str(tmp_path / "ckpt") + "/", text_arch())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two workers: float32 sums split over threads round differently
    try:
        local = evaluate_checkpoint(tmp_path / "ckpt", dataset, batch_size=2, num_workers=0,
                                    evaluators=[TextEvaluator(dataset)])
    finally:
        torch.set_num_threads(threads)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        remote = evaluate_checkpoint(tmp_path / "ckpt", dataset, batch_size=2, num_workers=2,
                                     evaluators=[TextEvaluator(dataset)])
    finally:
        ray.shutdown()
    assert local.metrics["text/tokens"] > 0
    assert remote.metrics == local.metrics
