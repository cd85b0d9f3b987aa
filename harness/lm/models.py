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


def load_tokenizer(
    cfg: ModelConfig, train_texts: list[str] | None = None, source: str | None = None
) -> PreTrainedTokenizerFast:
    """``tiny``: train on ``train_texts``. Otherwise the checkpoint's tokenizer (from ``source``, the base model's
    folder, default ``model.name``; a GGUF model's from its file), with a pad token added when it has none (GPT-2 has
    none; padding with EOS would hide the real EOS from the loss and from generation)."""
    if cfg.name == "tiny":
        if not train_texts:
            raise ConfigError(
                "model.name: 'tiny' trains its tokenizer on the task corpus, which is empty; check task.n_train"
            )
        return train_tokenizer(train_texts, cfg.vocab_size)
    if source is None and cfg.gguf:
        from harness.lm.gguf import locate

        path = locate(cfg.gguf)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    else:
        tok = _from_pretrained(AutoTokenizer, source or cfg.name, trust_remote_code=cfg.trust_remote_code)
    if tok.eos_token is None:
        tok.add_special_tokens({"eos_token": EOS})
    # A pad of its own only where the tokenizer names none (GPT-2). One that pads with its EOS (SmolLM2) keeps it: a
    # new token would change a pretrained model's vocabulary and so its distribution (one more logit to sample), and
    # nothing here finds padding by its id: sampler, scorers and trainers use attention masks, and the scalar models
    # read their score at the last attended token (``read_score_at_last_token``), which is the EOS.
    if tok.pad_token is None:
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
            # the tokenizer's own BOS where it has one (SmolLM2: <|im_start|>; transformers otherwise "aligns" the
            # config to it with a warning), else the EOS (GPT-2's and tiny's, which are the same token)
            bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id = tok.pad_token_id, tok.eos_token_id, bos


def load_causal_lm(cfg: ModelConfig, tok, seed: int = 0, source: str | None = None) -> PreTrainedModel:
    """The base policy before SFT: ``tiny`` from config (random init, seeded), otherwise pretrained weights (from
    ``source``, the base model's folder: ``harness.runs.base_model``; default ``model.name``)."""
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
            AutoModelForCausalLM,
            source or cfg.name,
            dtype=getattr(torch, cfg.dtype),
            trust_remote_code=cfg.trust_remote_code,
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
    return use_fused_gelu(read_score_at_last_token(model))


def read_score_at_last_token(model: PreTrainedModel) -> PreTrainedModel:
    """The scalar model's score read at the last token its attention mask covers, not at the last token whose id is
    not the pad id (transformers' ``*ForSequenceClassification``): where the pad is the EOS (SmolLM2) that would
    skip the EOS a response ends with and read the token before it, unlike the reward model's training. The same
    position wherever the pad is a token of its own; right or left padding alike. Only the in-memory model changes
    (its ``forward``), so TRL's RewardTrainer and our scorers read the same place; the saved checkpoint is plain.
    A model without a ``score`` head (one this does not know) keeps transformers' reading."""
    from transformers.modeling_outputs import SequenceClassifierOutputWithPast

    if not isinstance(getattr(model, "score", None), torch.nn.Linear):
        return model
    import weakref

    held = weakref.ref(model)  # not the model itself: a model whose forward refers to it is a cycle only gc frees

    def forward(input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        for unused in ("labels", "return_dict", "output_attentions", "output_hidden_states", "logits_to_keep"):
            kwargs.pop(unused, None)
        from harness.lm import packing

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # looked up at each call, not kept: PPO rescales the critic's head by putting a new module in its place
        model = held()
        backbone, head = getattr(model, model.base_model_prefix), model.score
        layout = packing.rows_layout(model, input_ids, attention_mask, position_ids=position_ids, **kwargs)
        if layout is not None:  # the real tokens only (the reward model's training, the text scorers)
            return SequenceClassifierOutputWithPast(logits=head(packing.hidden_states(model, layout)[layout.last]))
        hidden = backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        ).last_hidden_state
        columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (columns * attention_mask.bool()).argmax(-1)  # the rightmost attended column of each row
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return SequenceClassifierOutputWithPast(logits=head(hidden[rows, last]))

    model.forward = forward
    return model


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
