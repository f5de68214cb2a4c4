"""Text from a causal text model: greedy or sampled continuations of a prompt.

    text = generate(model, tokenizer, "Once upon a time", max_new_tokens=48)            # greedy
    text = generate(model, tokenizer, "Once upon a time", max_new_tokens=48, temperature=0.8, seed=1)
    rows = continuations(model, tokenizer, ["Once upon a time"], temperature=0.8)    # [{prompt, greedy, sampled}]

The model reads what it was trained on: a window of seq_len tokens, [BOS] + the prompt's tokens
left-aligned and PAD after. Each new token is read at the last real position after the full
evaluation ACT rollout (trm_ray.inference.rollout, as evaluation scores), then written into
the window; once the window is full it slides (the last seq_len tokens stay, BOS first to go),
and a prompt longer than the window is cut from the left the same way. Under arch.causal the
PAD after the last real token cannot change what that position reads. Generation stops at
EOS or after max_new_tokens.

Temperature 0 is greedy (the argmax of the logits). Otherwise the next token is drawn from the
model's own distribution p (softmax, or stablemax for a stablemax-trained model) sharpened to
p^(1/temperature), restricted to the top_k most likely tokens when top_k > 0, with a
torch.Generator seeded with `seed` (on the CPU, so a seed gives the same text on CPU and CUDA
wherever the logits agree).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from trm_ray.ema import unwrap
from trm_ray.inference import rollout
from trm_ray.model import IGNORE_LABEL_ID, log_stablemax
from trm_ray.text.tokenizer import BOS_ID, EOS_ID, PAD_ID

CONTINUATION_COLUMNS = ("prompt", "greedy", "sampled")


def check_settings(max_new_tokens: int, temperature: float, top_k: int) -> None:
    """ValueError (one line) for settings generation cannot use."""
    if int(max_new_tokens) < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if not float(temperature) >= 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 is greedy)")
    if int(top_k) < 0:
        raise ValueError(f"top_k={top_k} must be >= 0 (0 keeps every token)")


def window_length(model: torch.nn.Module) -> int:
    """The seq_len the model was built for (a RoPE model loaded from weights alone may not know
    its training length: pass seq_len from the dataset's text.json instead)."""
    return int(unwrap(model).model.inner.shape.seq_len)


def next_token_logprobs(logits: torch.Tensor, loss_type: str) -> torch.Tensor:
    """log p over the vocabulary (float64) under the distribution the model is trained on."""
    logits = logits.to(torch.float64)
    if loss_type == "stablemax_cross_entropy":
        return log_stablemax(logits, dim=-1)
    return torch.log_softmax(logits, dim=-1)


def choose(logits: torch.Tensor, loss_type: str, temperature: float, top_k: int,
           generator: Optional[torch.Generator]) -> int:
    """The next token from one position's logits (V,): greedy at temperature 0, else a draw."""
    if temperature <= 0 or generator is None:
        return int(torch.argmax(logits))
    logp = next_token_logprobs(logits.detach().cpu(), loss_type) / temperature
    if 0 < top_k < logp.numel():
        kth = torch.topk(logp, top_k).values[-1]
        logp = torch.where(logp >= kth, logp, float("-inf"))
    probs = torch.softmax(logp, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate_ids(model: torch.nn.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                 temperatures: Sequence[float], top_k: int = 0, seeds: Sequence[int] = (),
                 seq_len: Optional[int] = None) -> list[list[int]]:
    """The new token ids of each row (prompt token ids without specials), up to and without
    EOS; the rows run as one batch. temperatures[i] (0: greedy) and seeds[i] are row i's."""
    check_settings(max_new_tokens, min(temperatures, default=0.0), top_k)
    if len(temperatures) != len(prompts) or (seeds and len(seeds) != len(prompts)):
        raise ValueError("generate_ids: one temperature (and seed) per prompt")
    net = unwrap(model)  # no DDP (rank 0 alone generates), no torch.compile (other batch shapes)
    seq_len = int(seq_len or window_length(net))
    loss_type = str(net.model.arch.loss_type)
    device = next(net.parameters()).device
    tokens = [[BOS_ID, *map(int, p)] for p in prompts]
    new: list[list[int]] = [[] for _ in prompts]
    generators = [torch.Generator().manual_seed(int(seeds[i] if seeds else 0)) if temperatures[i] > 0 else None
                  for i in range(len(prompts))]
    active = [i for i in range(len(prompts)) if max_new_tokens > 0]
    was_training = net.training
    net.eval()
    try:
        while active:
            windows = [tokens[i][-seq_len:] for i in active]
            inputs = torch.full((len(active), seq_len), PAD_ID, dtype=torch.int32)
            for row, window in enumerate(windows):
                inputs[row, :len(window)] = torch.tensor(window, dtype=torch.int32)
            batch = {"inputs": inputs.to(device),
                     "puzzle_identifiers": torch.zeros(len(active), dtype=torch.int32, device=device),
                     "labels": torch.full((len(active), seq_len), IGNORE_LABEL_ID, dtype=torch.int32, device=device)}
            logits = rollout(net, batch)["logits"]
            last = torch.tensor([len(w) - 1 for w in windows], device=logits.device)
            picked = logits[torch.arange(len(active), device=logits.device), last]  # (rows, V)
            still = []
            for row, i in enumerate(active):
                token = choose(picked[row], loss_type, float(temperatures[i]), top_k, generators[i])
                if token == EOS_ID:
                    continue
                tokens[i].append(token)
                new[i].append(token)
                if len(new[i]) < max_new_tokens:
                    still.append(i)
            active = still
    finally:
        net.train(was_training)
    return new


def generate(model: torch.nn.Module, tokenizer, prompt: str, *, max_new_tokens: int, temperature: float = 0.0,
             top_k: int = 0, seed: int = 0, seq_len: Optional[int] = None) -> str:
    """The continuation of `prompt` (text after it, without the prompt), greedy at temperature 0."""
    ids = generate_ids(model, [tokenizer.encode(prompt)], max_new_tokens=max_new_tokens,
                       temperatures=[float(temperature)], top_k=top_k, seeds=[seed], seq_len=seq_len)
    return tokenizer.decode(ids[0])


def continuations(model: torch.nn.Module, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 48,
                  temperature: float = 0.8, top_k: int = 0, seed: int = 0,
                  seq_len: Optional[int] = None) -> list[dict[str, str]]:
    """One row {prompt, greedy, sampled} per prompt; each prompt's sample draws from its own
    generator seeded with `seed`, as generate(..., seed=seed) does. One batch for all of them."""
    prompts = [str(p) for p in prompts]
    if not prompts:
        return []
    encoded = tokenizer.encode_batch(prompts)
    ids = generate_ids(model, encoded + encoded, max_new_tokens=max_new_tokens,
                       temperatures=[0.0] * len(prompts) + [float(temperature)] * len(prompts), top_k=top_k,
                       seeds=[seed] * (2 * len(prompts)), seq_len=seq_len)
    return [{"prompt": p, "greedy": tokenizer.decode(ids[i]), "sampled": tokenizer.decode(ids[len(prompts) + i])}
            for i, p in enumerate(prompts)]
