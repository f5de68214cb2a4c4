"""The text evaluator: validation loss, perplexity and next-token accuracy, and continuations.

    text = TextEvaluator("data/tinystories", prompts=["Once upon a time"], temperature=0.8)
    metrics = evaluate(model, test_loader, evaluators=[text])
    metrics["text/val_loss"], metrics["text/perplexity"], metrics["text/next_token_accuracy"]
    text.continuations(model)       # [{"prompt", "greedy", "sampled"}] (trm_ray.text.generate)

A recipe builds it with `evaluators: [{name: text, prompts: [...], max_new_tokens: 48,
temperature: 0.8, top_k: 0, seed: 0}]` (trm_ray.eval.arc.build_evaluators).

Over every label token of the evaluated split (the validation documents of a text dataset;
PAD labels are ignored at load time): `text/val_loss` is the mean of -log p(label) in nats,
p the model's own loss distribution at the final ACT step (trm_ray.eval.core.label_nll),
`text/perplexity` its exp, `text/next_token_accuracy` the fraction of tokens whose argmax is the
label, `text/tokens` the count. The state keeps each row's loss sum and math.fsum adds them at
the end, exactly rounded whatever the order: any split of the rows over workers gives the same
numbers to the bit.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from trm_ray.data.layout import IGNORE_LABEL_ID, DatasetError
from trm_ray.text.info import is_text_dataset, load_text_info, load_tokenizer

METRIC_PREFIX = "text"
# Where a training run puts each evaluation's continuations: a table under this key in the
# tracker, and lines {step, prompt, greedy, sampled} in this file of its run folder.
CONTINUATIONS_TABLE = "text/continuations"
CONTINUATIONS_FILE = "continuations.jsonl"


class TextEvaluator:
    """Text scoring over a text dataset's evaluated split; an Evaluator (trm_ray.eval.core).

    dataset_dir: the text dataset (text.json, tokenizer.json; a path or a URI). prompts,
    max_new_tokens, temperature, top_k, seed: what continuations() generates."""

    required_outputs = ("preds", "label_nll", "label_count")

    def __init__(self, dataset_dir: str | os.PathLike, prompts: Sequence[str] = (), max_new_tokens: int = 48,
                 temperature: float = 0.8, top_k: int = 0, seed: int = 0):
        from trm_ray.text.generate import check_settings

        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"evaluators: the text evaluator's prompts must be a list of strings, not {prompts!r}")
        check_settings(max_new_tokens, temperature, top_k)
        self.dataset_dir = str(dataset_dir)
        if not is_text_dataset(self.dataset_dir):
            raise DatasetError(f"the text evaluator needs a text dataset: {self.dataset_dir!r} has no text.json "
                               f"(build one with `trm-ray data build text`, or drop {{name: text}} from evaluators)")
        self.info = load_text_info(self.dataset_dir)
        self.tokenizer = load_tokenizer(self.dataset_dir, self.info)
        self.prompts = list(prompts)
        self.max_new_tokens, self.temperature = int(max_new_tokens), float(temperature)
        self.top_k, self.seed = int(top_k), int(seed)
        self.reset()

    # ---- state -------------------------------------------------------------------------------
    def reset(self) -> None:
        self._nll: list[float] = []  # per row: the sum of -log p(label) over its label tokens
        self._tokens = 0
        self._correct = 0

    def state(self) -> dict[str, Any]:
        return {"nll": list(self._nll), "tokens": self._tokens, "correct": self._correct}

    def merge(self, states: Sequence[Mapping[str, Any]]) -> None:
        nll: list[float] = []
        tokens = correct = 0
        for state in states:
            nll.extend(state["nll"])
            tokens += int(state["tokens"])
            correct += int(state["correct"])
        self._nll, self._tokens, self._correct = nll, tokens, correct

    def update(self, batch: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        """batch "labels" (B, S); outputs "preds" (B, S), "label_nll" (B,), "label_count" (B,)."""
        if "label_nll" not in outputs:
            raise ValueError("the text evaluator needs the label_nll output of trm_ray.eval.core.predict_real_rows")
        labels = np.asarray(batch["labels"])
        mask = labels != IGNORE_LABEL_ID
        self._nll.extend(float(x) for x in np.asarray(outputs["label_nll"], np.float64).reshape(-1))
        self._tokens += int(np.asarray(outputs["label_count"]).sum())
        self._correct += int((mask & (np.asarray(outputs["preds"]) == labels)).sum())

    # ---- results -----------------------------------------------------------------------------
    def result(self) -> dict[str, float]:
        tokens = self._tokens
        loss = math.fsum(self._nll) / tokens if tokens else 0.0
        perplexity = math.exp(loss) if loss < 709.0 else math.inf  # exp overflows a float past ~709.78
        return {
            f"{METRIC_PREFIX}/val_loss": loss,
            f"{METRIC_PREFIX}/perplexity": perplexity,
            f"{METRIC_PREFIX}/next_token_accuracy": self._correct / tokens if tokens else 0.0,
            f"{METRIC_PREFIX}/tokens": float(tokens),
        }

    # ---- continuations -----------------------------------------------------------------------
    def continuations(self, model: Any, seq_len: Optional[int] = None) -> list[dict[str, str]]:
        """Greedy and sampled continuations of the prompts by `model` (rows {prompt, greedy,
        sampled}); prompts are lowercased when the dataset was. [] without prompts."""
        from trm_ray.text.generate import continuations

        prompts = [p.lower() for p in self.prompts] if self.info.lowercase else self.prompts
        return continuations(model, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens,
                             temperature=self.temperature, top_k=self.top_k, seed=self.seed,
                             seq_len=seq_len or self.info.seq_len)
