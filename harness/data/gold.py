"""Gold rewards: the real scorer that is not ours, behind one interface ``list[str] -> np.ndarray``.

The DPO paper's gold reward is a sentiment classifier's p(positive). Here the default is VADER (its lexicon ships
with the package, so it runs with no hub); a Hugging Face sequence classifier is a config choice, and so is a reward
model checkpoint (a sequence classifier with one output), the synthetic gold of Gao et al. 2022.

VADER and a classifier's probability lie in [0, 1]; a reward model's raw score does not (``gold.squash=sigmoid`` maps
it to (0, 1)). Nothing downstream needs [0, 1]: the evaluator averages whatever the scorer returns, PPO-GT
normalises it, and the report clips its confidence bands to [0, 1] only when every point lies there.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from harness.config import GoldConfig
from harness.fields import ConfigError


class GoldReward(Protocol):
    name: str

    def __call__(self, texts: list[str]) -> np.ndarray: ...


class VaderGold:
    """VADER's compound score c ∈ [-1, 1] mapped to (c + 1) / 2 ∈ [0, 1]."""

    name = "vader"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def __call__(self, texts: list[str]) -> np.ndarray:
        return np.array([(self._analyzer.polarity_scores(t)["compound"] + 1.0) / 2.0 for t in texts], dtype=np.float64)


def gold_kind_mismatch(name: str, outputs: int, kind: str) -> str:
    """The one line for a checkpoint whose number of outputs does not fit ``gold.kind``."""
    if kind == "hf_reward_model":
        return (
            f"gold.kind: '{name}' has {outputs} outputs, a classifier, not a reward model (num_labels=1); set "
            "gold.kind=hf_classifier and gold.label to the label whose probability is the reward"
        )
    return (
        f"gold.kind: '{name}' has one output (num_labels=1), a reward model, not a classifier; set "
        "gold.kind=hf_reward_model (its raw score; gold.squash=sigmoid for a score in (0, 1))"
    )


class ClassifierGold:
    """p(label | text) from a Hugging Face sequence classifier given by hub name or local path (the paper's
    ``siebert/sentiment-roberta-large-english`` with label ``POSITIVE``), or, with ``scalar``, the score of a reward
    model (a sequence classifier with ``num_labels=1``): raw, or σ(score) with ``squash="sigmoid"``."""

    def __init__(
        self,
        name_or_path: str,
        label: str = "POSITIVE",
        batch_size: int = 64,
        device: str = "cpu",
        trust_remote_code: bool = False,
        scalar: bool = False,
        squash: str = "none",
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = f"hf:{name_or_path}"
        # trust_remote_code is passed explicitly: a classifier's own code runs only when gold.trust_remote_code says so
        kw = {"trust_remote_code": trust_remote_code}
        try:
            self._tok = AutoTokenizer.from_pretrained(name_or_path, **kw)
            self._model = AutoModelForSequenceClassification.from_pretrained(name_or_path, **kw).to(device).eval()
        except (OSError, ValueError) as e:  # not found, not a classifier, needs remote code: the user's input
            raise ConfigError(
                f"gold.name_or_path: cannot load '{name_or_path}' ({str(e).strip().splitlines()[0][:160]}); "
                "give a local folder of a sequence classifier, or a hub name where the hub is reachable"
            ) from None
        outputs = self._model.config.num_labels
        if scalar != (outputs == 1):
            kind = "hf_reward_model" if scalar else "hf_classifier"
            raise ConfigError(gold_kind_mismatch(name_or_path, outputs, kind))
        self._index, self._squash = None, squash
        if not scalar:
            labels = {str(v): int(k) for k, v in self._model.config.id2label.items()}
            if label not in labels:
                raise ConfigError(
                    f"gold.label: '{label}' is not a label of {name_or_path} ({', '.join(labels)}); set gold.label to one of them"
                )
            self._index = labels[label]
        # Reward models built on GPT-2-like backbones often ship without a pad token; padding a batch needs one, and
        # the model reads its score at the last token that is not pad (attention masks keep the pads out of it).
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token
        if self._model.config.pad_token_id is None:
            self._model.config.pad_token_id = self._tok.pad_token_id
        self._bs, self._device, self._torch = batch_size, device, torch

    def __call__(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self._bs):
                enc = self._tok(texts[i : i + self._bs], padding=True, truncation=True, return_tensors="pt").to(
                    self._device
                )
                logits = self._model(**enc).logits.float()
                if self._index is None:  # a reward model: its one output
                    score = logits[:, 0].sigmoid() if self._squash == "sigmoid" else logits[:, 0]
                else:
                    score = logits.softmax(-1)[:, self._index]
                out.append(score.cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def load_gold(cfg: GoldConfig, device: str = "cpu") -> GoldReward:
    if cfg.kind == "vader":
        return VaderGold()
    return ClassifierGold(
        cfg.name_or_path,
        cfg.label,
        cfg.batch_size,
        device,
        cfg.trust_remote_code,
        scalar=cfg.kind == "hf_reward_model",
        squash=cfg.squash,
    )
