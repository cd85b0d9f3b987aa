"""The dense LM head (harness/lm/lm_head.py) gives what TRL's fused kernel gives: the same per-token fields, loss and
gradients, on GPT-2 and llama; large calls and scaled heads keep TRL's kernel; the harness's TRL trainers use it."""

from __future__ import annotations

import copy

import pytest
import torch

from harness.lm import lm_head
from harness.lm.lm_head import FIELDS, use_dense_lm_head

V = 50


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=32, n_embd=16, n_layer=2, n_head=2)).eval()


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    conf = LlamaConfig(
        vocab_size=V,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(conf).eval()


def _batch():
    """Right-padded rows; labels -100 on the prompt and the padding (as TRL's collators make them)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (3, 9), generator=g)
    attention = torch.ones_like(ids)
    attention[1, 6:] = 0
    attention[2, 4:] = 0
    labels = ids.masked_fill(attention == 0, -100)
    labels[:, :3] = -100  # the prompt
    return {"input_ids": ids, "attention_mask": attention}, labels


def _pair(build, fields=FIELDS):
    """(TRL's fused-head model, the same weights with the dense head over it)."""
    from trl.trainer.utils import add_fused_lm_head

    trl_model = build()
    add_fused_lm_head(trl_model, outputs=("log_probs",) + fields)
    dense = copy.deepcopy(build())
    add_fused_lm_head(dense, outputs=("log_probs",) + fields)
    assert use_dense_lm_head(dense, fields)
    return trl_model, dense


def _spy(monkeypatch, owner, name: str) -> list:
    """Count the calls of ``owner.name`` (which still runs): one entry per call in the returned list."""
    calls, real = [], getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *a: calls.append(1) or real(*a))
    return calls


def _grads(model) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2", "llama"])
def test_dense_head_gives_trls_fields_loss_and_gradients(build):
    inputs, labels = _batch()
    trl_model, dense = _pair(build)
    a = trl_model(**inputs, labels=labels, fused_lm_head=True)
    b = dense(**inputs, labels=labels, fused_lm_head=True)
    assert torch.equal(a.label_mask, b.label_mask)
    for name in ("log_probs",) + FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape == labels[:, 1:].shape, name
        if name == "is_top1":
            assert torch.equal(x.bool(), y.bool())
        else:
            torch.testing.assert_close(y.float(), x.float(), rtol=1e-5, atol=1e-6, msg=name)
    assert (
        float(a.log_probs.detach()[~a.label_mask].abs().sum())
        == 0
        == float(b.log_probs.detach()[~b.label_mask].abs().sum())
    )
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-6, atol=1e-7)
    a.loss.backward()
    b.loss.backward()
    ga, gb = _grads(trl_model), _grads(dense)
    assert ga.keys() == gb.keys() and len(ga) > 4
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], rtol=1e-5, atol=1e-6, msg=k)
    # num_items_in_batch divides the sum, as TRL's does
    n = 7
    torch.testing.assert_close(
        dense(**inputs, labels=labels, fused_lm_head=True, num_items_in_batch=n).loss,
        trl_model(**inputs, labels=labels, fused_lm_head=True, num_items_in_batch=n).loss,
    )


def test_only_the_asked_fields_are_filled_and_an_all_masked_batch_still_backpropagates():
    inputs, labels = _batch()
    _, dense = _pair(_gpt2, ("entropy",))
    out = dense(**inputs, labels=labels, fused_lm_head=True)
    assert out.entropy is not None and out.is_top1 is None and out.mean_logits is None and out.log_sum_sq_probs is None
    assert out.entropy.requires_grad is False and out.log_probs.requires_grad
    empty = dense(**inputs, labels=torch.full_like(labels, -100), fused_lm_head=True)
    assert float(empty.loss.detach()) == 0.0
    empty.loss.backward()  # connected to the graph (a zero gradient), as TRL's masked_scatter keeps it


def test_calls_over_the_limit_and_plain_calls_keep_trls_path(monkeypatch):
    inputs, labels = _batch()
    trl_model, dense = _pair(_gpt2)
    calls = _spy(monkeypatch, lm_head, "dense_token_stats")
    dense(**inputs, labels=labels, fused_lm_head=True)
    assert calls == [1]
    monkeypatch.setattr(lm_head, "DENSE_LIMIT", int((labels != -100).sum()) * V - 1)
    out = dense(**inputs, labels=labels, fused_lm_head=True)
    assert calls == [1]  # TRL's kernel ran
    torch.testing.assert_close(out.log_probs, trl_model(**inputs, labels=labels, fused_lm_head=True).log_probs)
    plain = dense(**inputs)  # no fused head: the model's own forward (generation, evaluation)
    assert plain.logits.shape == (3, 9, V) and calls == [1]


def test_a_scaled_head_or_an_unpatched_model_is_left_alone():
    from trl.trainer.utils import add_fused_lm_head

    assert not use_dense_lm_head(_gpt2())  # TRL never patched it
    model = _gpt2()
    model.config.logit_scale = 0.5
    add_fused_lm_head(model)
    assert not use_dense_lm_head(model)


@pytest.mark.slow  # TRL trainers' set-up: seconds
def test_the_harness_trl_trainers_run_the_dense_head(tmp_path):
    from pipelines.baselines import DenseLMHead as baselines_head
    from pipelines.dpo import _dpo_trainer_class
    from pipelines.stages.sft import DenseLMHead as sft_head

    assert baselines_head is sft_head is lm_head.DenseLMHead
    dpo_cls = _dpo_trainer_class()
    assert lm_head.DenseLMHead in dpo_cls.__mro__
    # the DPO trainer asks for the fields its metrics read, and the WPO weights' field only when it weighs
    stub = type("Stub", (), {"use_weighting": False})()
    assert dpo_cls.lm_head_fields.fget(stub) == ("entropy", "mean_logits", "is_top1")
    stub.use_weighting = True
    assert "log_sum_sq_probs" in dpo_cls.lm_head_fields.fget(stub)


def test_right_padded_rows_run_packed_and_left_padded_ones_as_they_are(monkeypatch):
    from harness.lm import packing

    inputs, labels = _batch()
    trl_model, dense = _pair(_gpt2)
    packed_calls = _spy(monkeypatch, packing, "hidden_states")
    dense(**inputs, labels=labels, fused_lm_head=True)
    assert packed_calls == [1]
    # the same rows left-padded (as a generation batch is): not a prefix mask, so the batch runs as it is
    ids, attention = inputs["input_ids"], inputs["attention_mask"]
    left = {"input_ids": ids.flip(1), "attention_mask": attention.flip(1)}
    left_labels = torch.full_like(labels, -100)
    left_labels[0, 5:] = ids.flip(1)[0, 5:]
    a = trl_model(**left, labels=left_labels, fused_lm_head=True)
    b = dense(**left, labels=left_labels, fused_lm_head=True)
    assert packed_calls == [1]
    torch.testing.assert_close(b.log_probs, a.log_probs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2", "llama"])
def test_token_logprobs_equal_the_padded_forwards_with_gradients(build):
    from harness.lm.lm_head import token_logprobs
    from pipelines.losses import sequence_logps

    inputs, labels = _batch()
    mask = labels[:, 1:] != -100
    packed_model, padded_model = build(), build()
    a = token_logprobs(packed_model, inputs["input_ids"], inputs["attention_mask"], mask)
    logits = padded_model(**inputs).logits[:, :-1]
    b = sequence_logps(logits, inputs["input_ids"][:, 1:], mask)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert float(a.detach()[~mask].abs().sum()) == 0
    a.sum().backward()
    b.sum().backward()
    ga, gb = _grads(packed_model), _grads(padded_model)
    for k in gb:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-5, atol=1e-6, msg=k)
