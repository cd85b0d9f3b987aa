"""Model and tokenizer loaders shared by every pipeline, so every method starts from the same weights.

- causal LM (policy, reference): ``tiny`` = a GPT-2-style model built from config, or any
  ``AutoModelForCausalLM`` by hub name or local path (gpt2, gpt2-large, Pythia, a saved checkpoint);
- scalar-head model (reward model, critic): ``AutoModelForSequenceClassification`` with ``num_labels=1``,
  its backbone taken from a causal-LM checkpoint and a fresh head.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.activations import NewGELUActivation

from harness.config import ModelConfig
from harness.fields import ConfigError

PAD, EOS = "<|pad|>", "<|endoftext|>"
log = logging.getLogger(__name__)


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (as GPT-2's) trained on the corpus, with a pad token distinct from EOS.

    Byte-level with the space carried by the following word means that a prompt's ids followed by a completion's
    ids (" was great") equal the ids of the joined text — TRL's trainers tokenize prompt and completion apart.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD, unk_token=None)
    fast.padding_side = "right"
    return fast


def load_tokenizer(cfg: ModelConfig, train_texts: list[str] | None = None) -> PreTrainedTokenizerFast:
    """``tiny``: train on ``train_texts``. Otherwise the checkpoint's tokenizer, with a pad token added when it
    has none (GPT-2 has none; padding with EOS would hide the real EOS from the loss and from generation)."""
    if cfg.name == "tiny":
        if not train_texts:
            raise ConfigError(
                "model.name: 'tiny' trains its tokenizer on the task corpus, which is empty; check task.n_train"
            )
        return train_tokenizer(train_texts, cfg.vocab_size)
    tok = _from_pretrained(AutoTokenizer, cfg.name, trust_remote_code=cfg.trust_remote_code)
    if tok.eos_token is None:
        tok.add_special_tokens({"eos_token": EOS})
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        tok.add_special_tokens({"pad_token": PAD})
    tok.padding_side = "right"
    return tok


def _from_pretrained(cls, name: str, **kw):
    try:
        return cls.from_pretrained(name, **kw)
    except (OSError, ValueError) as e:  # ValueError: e.g. transformers refusing a model's own code
        raise ConfigError(
            f"model.name: cannot load '{name}' ({str(e).splitlines()[0][:120]}); use model.name=tiny, a local folder, "
            "or a hub name on a machine with hub access"
        ) from None


def use_fused_gelu(model):
    """Swap GPT-2's ``gelu_new`` (eight elementwise kernels, forward and backward) for PyTorch's fused tanh-GELU.

    The same function, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) — transformers ships it as ``gelu_pytorch_tanh``,
    "a faster equivalent of gelu_new"; they differ by < 3e-7 in fp32. Only the in-memory modules change (weights and
    config stay as they are, so saved checkpoints are untouched). On the tiny models the activation was ~20% of a
    forward-backward on CPU. Every loader below applies it, so every stage and method runs the same function.
    """
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, NewGELUActivation):
                setattr(module, name, torch.nn.GELU(approximate="tanh"))
    return model


def _sync_special_tokens(model: PreTrainedModel, tok) -> None:
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is not None:
            cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.eos_token_id


def load_causal_lm(cfg: ModelConfig, tok, seed: int = 0) -> PreTrainedModel:
    """The base policy before SFT: ``tiny`` from config (random init, seeded), otherwise pretrained weights."""
    if cfg.name == "tiny":
        torch.manual_seed(seed)
        conf = GPT2Config(
            vocab_size=len(tok),
            n_positions=cfg.n_positions,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        model = GPT2LMHeadModel(conf)
    else:
        model = _from_pretrained(
            AutoModelForCausalLM, cfg.name, dtype=getattr(torch, cfg.dtype), trust_remote_code=cfg.trust_remote_code
        )
        if model.get_input_embeddings().num_embeddings < len(tok):  # a pad token was added
            model.resize_token_embeddings(len(tok))
    _sync_special_tokens(model, tok)
    return use_fused_gelu(model)


def load_pretrained_lm(path: str | Path, tok=None, trust_remote_code: bool = False) -> PreTrainedModel:
    """A saved causal-LM checkpoint (e.g. π_SFT from the stage cache). ``trust_remote_code``: ``model.trust_remote_code``
    (a checkpoint saved from a model with its own code keeps needing it)."""
    model = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tok is not None:
        _sync_special_tokens(model, tok)
    return use_fused_gelu(model)


def load_scalar_model(path: str | Path, tok, trust_remote_code: bool = False) -> PreTrainedModel:
    """Reward model or critic: the backbone of a causal-LM (or scalar) checkpoint with a one-output head.

    The sequence score is read at the last non-pad token, which needs ``pad_token_id`` on the config and a pad
    distinct from EOS (the EOS is the last real token of a finished response).
    """
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), num_labels=1, trust_remote_code=trust_remote_code
    )
    _sync_special_tokens(model, tok)
    return use_fused_gelu(model)


def freeze(model):
    """Eval mode (no dropout) and no gradients: the frozen roles (reference, reward model)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def disable_dropout(model):
    """Dropout off for good in a model that is trained: every ``nn.Dropout`` gets p = 0, and so does every
    ``*dropout`` / ``*pdrop`` probability on its config, so a checkpoint saved from it loads without dropout too.

    Every method trains its policy under the same conditions (TRL's DPOTrainer does this by default; our PPO runs in
    eval mode; Preferred-FT and Unlikelihood train in train mode, which would otherwise add dropout noise only
    there). Unlike ``eval()`` this survives the ``train()`` call of a trainer. Returns the model.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for key, value in list(vars(config).items()) if config is not None else ():
        if (key.endswith("dropout") or key.endswith("pdrop")) and isinstance(value, float):
            setattr(config, key, 0.0)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
