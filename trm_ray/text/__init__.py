"""Text datasets and the text task: recursion over token sequences with a causal mask.

- trm_ray/text/tokenizer.py: byte and BPE tokenizers (PAD, BOS, EOS at ids 0, 1, 2)
- trm_ray/text/info.py: text.json, the tokenizer check
"""
