"""``pipeline=evaluate``: any Hugging Face causal LM on the frontier, as a method of its own.

A checkpoint trained elsewhere (verl, OpenRLHF, or another run of this harness: every method saves its final policy
to ``<job>/policy`` with ``save_pretrained``) is evaluated exactly as the methods evaluate their own policies: the
shared evaluator (``harness.eval.evaluator``), π_ref = π_SFT from the stage cache (trained first if missing, as for every
method), the task's held-out prompts, the gold reward, and the run seed's sampling seed
(``harness.eval.evaluator.sampling_seed``: one per run seed, the same at every step and for every method). So the saved
policy of a finished run, evaluated with that run's seed, draws the samples that run's last evaluation drew and
reproduces its row (``tests/pipelines/test_evaluate.py``).

The row is one point: method ``evaluate``, setting ``policy=<label>`` (``pipeline.label``, else the checkpoint's
folder name), step ``pipeline.step``, and no training compute (it was spent elsewhere).

Tokenizer: the checkpoint's own when it has one, else π_SFT's. The KL is a sum over the vocabulary, so the checkpoint
must have π_SFT's vocabulary (the same tokens with the same ids, and as many output logits): otherwise one
ConfigError line, before the checkpoint's weights are loaded or anything is sampled.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from harness.data.hub import TOKENIZER_FILES
from harness.fields import ConfigError
from harness.lm.models import freeze, load_pretrained_lm
from harness.runs.context import RunContext
from pipelines.schemas import EvaluatePipeline
from pipelines.stages.sft import load_sft
from pipelines.trainer_run import start_tracking

log = logging.getLogger("harness.evaluate")


def checkpoint_tokenizer(name: str, fallback, trust_remote_code: bool = False):
    """(tokenizer, whose): the checkpoint's own tokenizer, or ``fallback`` (π_SFT's) when it has none."""
    from transformers import AutoTokenizer

    local = Path(name)
    if local.is_dir() and not any((local / f).is_file() for f in TOKENIZER_FILES):
        return fallback, "π_SFT's (the checkpoint has none)"
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        if local.is_dir():  # it has tokenizer files that do not load: a broken save, not a missing tokenizer
            raise ConfigError(
                f"policy: cannot load the tokenizer saved in '{name}' ({str(e).splitlines()[0][:120]}); "
                "re-save it with tokenizer.save_pretrained, or remove its files to use π_SFT's"
            ) from None
        return fallback, "π_SFT's (the hub checkpoint has none)"
    return tok, "the checkpoint's own"


def output_rows(config) -> int | None:
    """The number of output logits a causal-LM config declares (its text config's, for a multimodal one)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "vocab_size", None)


def vocabulary_mismatch(tok, ref_tok, rows: int | None, ref_rows: int) -> str | None:
    """What differs between the checkpoint's vocabulary and π_SFT's, in words; None when they are the same: the same
    token -> id map and ``rows`` (the checkpoint's output logits, None when unknown) == ``ref_rows``."""
    vocab, ref_vocab = tok.get_vocab(), ref_tok.get_vocab()
    if vocab != ref_vocab:
        if len(vocab) != len(ref_vocab):
            return f"its tokenizer has {len(vocab)} tokens, π_SFT's {len(ref_vocab)}"
        token = next(t for t in sorted(ref_vocab, key=ref_vocab.get) if vocab.get(t) != ref_vocab[t])
        where = f"id {vocab[token]}" if token in vocab else "no id"
        return f"token {token!r} has {where} in its tokenizer, id {ref_vocab[token]} in π_SFT's"
    if rows is not None and rows != ref_rows:
        return f"it has {rows} output logits, π_SFT {ref_rows}"
    return None


def check_same_vocabulary(name: str, tok, ref_tok, config, reference, ref_path) -> None:
    """One ConfigError line when the checkpoint ``name`` (its tokenizer ``tok`` and config) does not share π_SFT's
    vocabulary; reads no weights of the checkpoint."""
    problem = vocabulary_mismatch(tok, ref_tok, output_rows(config), reference.get_output_embeddings().weight.shape[0])
    if problem:
        raise ConfigError(
            f"policy: '{name}' does not have π_SFT's vocabulary ({problem}); the KL to π_ref sums over one "
            f"vocabulary, so evaluate a checkpoint trained from π_SFT ({ref_path}) with its tokenizer, "
            "or set model.name to the checkpoint's own base model"
        )


def run(ctx: RunContext) -> dict:
    """Evaluate the checkpoint ``policy`` once against π_SFT: one row on the frontier."""
    from transformers import AutoConfig

    cfg: EvaluatePipeline = ctx.cfg.pipeline
    name, remote = cfg.policy, cfg.trust_remote_code
    reference, ref_tok, sft = load_sft(ctx)  # π_ref = π_SFT, trained first if the cache lacks it
    freeze(reference)
    tok, whose = checkpoint_tokenizer(name, ref_tok, remote)
    check_same_vocabulary(
        name, tok, ref_tok, AutoConfig.from_pretrained(name, trust_remote_code=remote), reference, sft.path
    )
    if tok.pad_token is None:  # same vocabulary: π_SFT's pad token is one of its tokens
        tok.pad_token = ref_tok.pad_token
    # In the job's training dtype, as π_ref: a checkpoint saved in bf16 is evaluated like the methods' fp32 policies
    # (precision=bf16 runs the forward passes of both in bf16 with autocast).
    policy = freeze(load_pretrained_lm(name, tok, remote).to(ctx.device, dtype=getattr(torch, ctx.cfg.model.dtype)))
    log.info("evaluate %s (tokenizer: %s) against π_SFT %s", name, whose, sft.path)

    tracker, evaluation = start_tracking(ctx, reference, tok)  # the evaluator and row writing every method uses
    row = evaluation(policy, step=cfg.step)
    facts = {
        "method": ctx.method,
        "setting": ctx.setting,
        "policy": name,
        "tokenizer": whose,
        "reference": str(sft.path),
        "step": cfg.step,
        "gold_reward": row["gold_reward"],
        "gold_reward_sem": row["gold_reward_sem"],
        "kl": row["kl"],
        "kl_sem": row["kl_sem"],
        "truncated_frac": row["truncated_frac"],
    }
    tracker.summary(facts)
    tracker.finish()
    print(
        f"evaluate {ctx.setting}: gold reward {row['gold_reward']:.3f} ± {row['gold_reward_sem']:.3f}, "
        f"KL {row['kl']:.3f} ± {row['kl_sem']:.3f} nats to π_SFT ({name})"
    )
    return facts
