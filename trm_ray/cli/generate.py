"""`trm-ray generate`: continue a prompt with a text model's checkpoint.

    trm-ray generate runs/tinystories/checkpoint_0002000 --prompt "Once upon a time"
    trm-ray generate s3://bucket/runs/x/checkpoint_0002000 --prompt "Tom saw" --temperature 0.8 --num-samples 3

The tokenizer comes from the checkpoint folder (a text run keeps its dataset's tokenizer.json
and text.json beside model.pt, trm_ray/checkpoint.py), or else from the dataset its
all_config.yaml names; it must be the one the model was trained with (vocabulary, sha256).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from trm_ray.cli import checkpoint_of_run, one_line


@click.command(
    "generate",
    epilog="Examples:\n\n\b\n"
    "  trm-ray generate runs/tinystories/checkpoint_0002000 --prompt \"Once upon a time\"\n"
    "  trm-ray generate runs/tinystories --prompt \"Tom saw\" --temperature 0.8 --top-k 40 --num-samples 3 --seed 1",
)
@click.argument("checkpoint")
@click.option("--prompt", required=True, help="The text to continue.")
@click.option("--max-new-tokens", type=int, default=64, show_default=True, help="Stop after this many new tokens (or at the end of a document).")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0: greedy (the most likely token each time); above 0: sampled from the model's distribution sharpened (<1) or flattened (>1).")
@click.option("--top-k", type=int, default=0, show_default=True, help="Sample among the K most likely tokens only (0: all).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampling; sample i uses seed + i.")
@click.option("--num-samples", type=int, default=1, show_default=True, help="Continuations to print.")
@click.option("--use-gpu", is_flag=True, help="Run the model on the GPU.")
def generate(checkpoint: str, prompt: str, max_new_tokens: int, temperature: float, top_k: int, seed: int,
             num_samples: int, use_gpu: bool) -> None:
    """Continue PROMPT with the text model of CHECKPOINT (a checkpoint folder, path or URI, or a
    run folder: its best checkpoint) and print the continuation(s)."""
    from trm_ray.checkpoint import CheckpointError
    from trm_ray.config import ConfigError
    from trm_ray.data.layout import DatasetError

    try:
        if num_samples < 1:
            raise ValueError(f"--num-samples {num_samples} must be >= 1")
        from trm_ray.text.generate import check_settings, generate_ids

        check_settings(max_new_tokens, temperature, top_k)
        model, tokenizer, info = load_text_model(checkpoint_of_run(checkpoint, "generate")[0])
        if use_gpu:
            import torch

            if not torch.cuda.is_available():
                raise ValueError("--use-gpu: no CUDA device here")
            model = model.to("cuda")
        ids = tokenizer.encode(prompt.lower() if info.lowercase else prompt)
        samples = num_samples if temperature > 0 else 1  # greedy gives one text whatever the seed
        new = generate_ids(model, [ids] * samples, max_new_tokens=max_new_tokens,
                           temperatures=[temperature] * samples, top_k=top_k,
                           seeds=[seed + i for i in range(samples)], seq_len=info.seq_len)
    except (CheckpointError, DatasetError, ConfigError, ValueError, OSError) as error:
        raise click.ClickException(one_line(str(error))) from None
    texts = [tokenizer.decode(t) for t in new] * (num_samples if samples == 1 else 1)
    for i, text in enumerate(texts):
        if num_samples > 1:
            click.echo(f"--- sample {i + 1} (seed {seed + i}) ---" if samples > 1 else f"--- sample {i + 1} ---")
        click.echo(text)


def load_text_model(checkpoint: str) -> tuple[Any, Any, Any]:
    """(model in eval mode on CPU, its tokenizer, the text.json TextInfo) of a text run's
    checkpoint (a folder or weights file, local, at a URI or on the Hub)."""
    from trm_ray.checkpoint import with_local_checkpoint
    from trm_ray.text.tokenizer import TEXT_INFO_FILE, TOKENIZER_FILE

    return with_local_checkpoint(checkpoint, lambda local: _load_local(local, checkpoint),
                                 extra=(TOKENIZER_FILE, TEXT_INFO_FILE))


def _load_local(local: Path, given: str) -> tuple[Any, Any, Any]:
    from trm_ray.checkpoint import CheckpointError, load_checkpoint, read_config_beside, resolve_weights_file
    from trm_ray.text.info import is_text_dataset, load_text_info, load_tokenizer

    folder = resolve_weights_file(local).parent
    model = load_checkpoint(local)
    source = folder
    if not is_text_dataset(folder):
        config = read_config_beside(folder) or {}
        dataset = next(iter(config.get("data_paths") or []), None)
        if dataset is None or not is_text_dataset(dataset):
            named = f"its dataset {dataset!r}" if dataset else "its all_config.yaml names no dataset, and"
            raise CheckpointError(f"{given!r} is not a text model: the checkpoint holds no tokenizer.json/text.json "
                                  f"and {named} is not a text dataset here; generate with a checkpoint of a run on "
                                  f"a text dataset (`trm-ray data build text`)")
        source = dataset
    info = load_text_info(source)
    tokenizer = load_tokenizer(source, info)
    vocab = int(model.model.inner.shape.vocab_size)
    if tokenizer.vocab_size != vocab:
        raise CheckpointError(f"the tokenizer of {str(source)!r} ({tokenizer.vocab_size} ids) does not match the "
                              f"model of {given!r} ({vocab} ids): use the tokenizer.json of the dataset it was "
                              f"trained on")
    return model, tokenizer, info
