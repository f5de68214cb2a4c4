"""Text datasets and the text task: the TRM recursion over token sequences with a causal mask.

- tokenizer.py: byte and BPE tokenizers (PAD, BOS, EOS at ids 0, 1, 2)
- info.py: text.json, the tokenizer check, what a text run needs (arch.causal, one tokenizer)
- records.py: JSON Lines / JSON / parquet / txt inputs -> documents (`text` or chat `messages`)
- stories.py: the built-in story and chat generators (offline data)
- build.py: `trm-ray data build text` (read and tokenize in parallel, pack, split, publish)
- evaluate.py: validation loss, perplexity, next-token accuracy; continuations of prompts
- generate.py: greedy and sampled generation through the full recursion
"""
