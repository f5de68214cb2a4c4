"""`trm-ray data build text`: this process, local worker processes and Ray Data, side by side.

One corpus (the built-in story generator, or --input-paths files) is built with the byte
tokenizer and with a trained BPE, each way in turn, in one run: wall time (Ray's start
included for Ray Data), documents and MB of text per second, the speed against this process
alone, and whether every way wrote the same bytes (content sha256).

    flock /tmp/trm-bench.lock python benchmarks/text_build.py
    python benchmarks/text_build.py --num-documents 200000 --tokenizers byte bpe:4096 --ways local processes
    python benchmarks/text_build.py --input-paths corpus.jsonl --max-sequence-length 256
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from trm_ray.data.builder import local_cpus  # noqa: E402
from trm_ray.text.build import build_text_dataset  # noqa: E402

WAYS = {
    "local": {"use_ray": False, "num_cpus": 1},  # this process only
    "processes": {"use_ray": False, "num_cpus": None},  # one worker process per CPU
    "ray": {"use_ray": True, "num_cpus": None},  # Ray Data on a local Ray it starts
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-documents", type=int, default=100_000, help="generated stories (default 100000)")
    parser.add_argument("--input-paths", nargs="+", help="build these files instead of generated stories")
    parser.add_argument("--max-sequence-length", type=int, default=128)
    parser.add_argument("--tokenizers", nargs="+", default=["byte", "bpe:2048"])
    parser.add_argument("--ways", nargs="+", choices=sorted(WAYS), default=["local", "processes", "ray"])
    args = parser.parse_args()

    source = {"input_paths": args.input_paths} if args.input_paths else \
        {"source": "generate:stories", "num_documents": args.num_documents}
    scratch = tempfile.mkdtemp(prefix="trm-ray-text-bench-")
    rows = []
    try:
        for tokenizer in args.tokenizers:
            baseline = None
            for way in args.ways:
                out = os.path.join(scratch, f"{tokenizer.replace(':', '-')}-{way}")
                started = time.perf_counter()
                info = build_text_dataset(output_dir=out, max_sequence_length=args.max_sequence_length,
                                          tokenizer=tokenizer, **source, **WAYS[way])
                seconds = time.perf_counter() - started
                documents = sum(info["text"]["documents"].values())
                chars = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(out) for f in files
                            if f.endswith("inputs.npy"))
                baseline = baseline or (seconds, info["content_sha256"])
                rows.append((tokenizer, way, seconds, documents / seconds, chars / seconds / 1e6,
                             baseline[0] / seconds, info["content_sha256"] == baseline[1]))
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    corpus = " ".join(args.input_paths) if args.input_paths else f"generate:stories x {args.num_documents}"
    print(f"\ntext build of {corpus}, seq_len {args.max_sequence_length}, on {local_cpus()} CPUs")
    header = f"{'tokenizer':<10} {'way':<10} {'seconds':>8} {'docs/s':>9} {'MB/s':>7} {'vs local':>9} {'same bytes':>10}"
    print(header)
    print("-" * len(header))
    for tokenizer, way, seconds, docs, mb, ratio, same in rows:
        print(f"{tokenizer:<10} {way:<10} {seconds:>8.1f} {docs:>9.0f} {mb:>7.1f} {ratio:>8.2f}x {'yes' if same else 'NO':>10}")
    print("MB/s: MB of packed input arrays written per second; vs local: this process alone's time over this way's.")


if __name__ == "__main__":
    main()
