"""Length-sorted micro-batches (harness/lm/batching.py): the batches stay the random ones, only their order inside
changes, and one optimiser step on a batch split into micro-batches equals the step on the whole batch, for every
trainer that uses them (TRL's DPO, reward and SFT trainers, our Unlikelihood loop)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from harness.fields import ConfigError, micro_batches
from harness.lm.batching import example_width, length_sorted_order

CORPUS = [
    "the film was great and the acting was superb",
    "a dull plot with awful pacing",
    "I loved every minute of it",
    "the story is boring but the music is fine",
    "an excellent cast in a terrible script",
]
PAIRS = {
    "prompt": ["the film", "a dull", "I loved", "the story is", "an", "the film was", "a", "I"],
    "chosen": [
        " was great",
        " plot with fine music and a fine cast",
        " every minute",
        " fine",
        " excellent cast",
        " great",
        " dull plot",
        " loved it and the acting was superb",
    ],
    "rejected": [
        " was awful and boring",
        " plot",
        " it",
        " boring but the music is fine",
        " terrible script",
        " boring",
        " film",
        " hated",
    ],
}


def test_batches_are_the_random_permutations_blocks_sorted_inside():
    lengths = list(np.random.default_rng(0).integers(1, 50, size=103))
    order = length_sorted_order(lengths, 16, np.random.default_rng(7))
    plain = np.random.default_rng(7).permutation(103).tolist()
    assert sorted(order) == list(range(103))
    for start in range(0, 103, 16):
        block = order[start : start + 16]
        assert set(block) == set(plain[start : start + 16])  # the same batch as an unsorted shuffle
        assert [lengths[i] for i in block] == sorted(lengths[i] for i in block)


def test_example_width_is_what_the_collator_pads_to():
    assert example_width({"prompt_ids": [1, 2], "chosen_ids": [3, 4, 5], "rejected_ids": [6]}) == 5
    assert example_width({"chosen_ids": [1, 2, 3], "rejected_ids": [4, 5, 6, 7], "margin": 1.0}) == 4
    assert example_width({"input_ids": [1, 2, 3], "completion_mask": [0, 1, 1]}) == 3


@pytest.mark.parametrize("batch, micro, expected", [(128, 32, 4), (64, 0, 1), (64, 64, 1), (64, 128, 1)])
def test_micro_batch_counts(batch, micro, expected):
    assert micro_batches(batch, micro, "pipeline.micro_batch_size") == expected


@pytest.mark.parametrize("micro", [30, -1])
def test_a_micro_batch_that_does_not_divide_the_batch_is_refused(micro):
    with pytest.raises(ConfigError, match="pipeline.micro_batch_size"):
        micro_batches(128, micro, "pipeline.micro_batch_size")


# ----------------------------------------------------------------------------------------------------------------
# one SGD step on the whole batch == one SGD step accumulated over length-sorted micro-batches
# ----------------------------------------------------------------------------------------------------------------


def _tok():
    from harness.lm.models import train_tokenizer

    return train_tokenizer(CORPUS * 4, 300)


def _lm(tok, seed=0, cls=None):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    conf = GPT2Config(
        vocab_size=len(tok),
        n_positions=48,
        n_embd=16,
        n_layer=1,
        n_head=2,
        num_labels=1,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return (cls or GPT2LMHeadModel)(conf)


def _sgd(args, **kw):
    """The same args with plain SGD at a constant rate and one step, so the step is proportional to the gradient
    (Adam's first step would hide a wrong gradient scale)."""
    return dataclasses.replace(
        args,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_steps=1,
        max_grad_norm=1e9,
        logging_steps=1,
        **kw,
    )


def _after_one_step(make_trainer, micro: int) -> dict:
    trainer = make_trainer(micro)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    after = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    assert trainer.args.gradient_accumulation_steps == (1 if micro == 0 else 8 // micro)
    assert max(float((after[k] - before[k]).abs().max()) for k in after) > 1e-3  # the step moved the model
    return after


def _assert_same_step(make_trainer):
    whole, split = _after_one_step(make_trainer, 0), _after_one_step(make_trainer, 2)
    worst = max(float((whole[k] - split[k]).abs().max()) for k in whole)
    assert worst < 2e-5, worst


@pytest.mark.slow  # a step of a TRL trainer (its import and set-up: seconds)
def test_dpo_step_is_the_batch_step(tmp_path):
    from datasets import Dataset

    from pipelines.dpo import _dpo_trainer_class, dpo_config
    from pipelines.schemas import DPOPipeline

    torch.set_num_threads(1)
    tok = _tok()

    def make(micro):
        cfg = DPOPipeline(name="dpo", beta=0.5, batch_size=8, micro_batch_size=micro, max_length=48, max_steps=1)
        args = _sgd(dpo_config(cfg, str(tmp_path / str(micro)), seed=0, use_cpu=True))
        return _dpo_trainer_class()(
            model=_lm(tok, 0),
            ref_model=_lm(tok, 1),
            args=args,
            train_dataset=Dataset.from_dict(PAIRS),
            processing_class=tok,
        )

    _assert_same_step(make)


@pytest.mark.slow  # a step of a TRL trainer (its import and set-up: seconds)
def test_reward_model_step_is_the_batch_step(tmp_path):
    from datasets import Dataset
    from transformers import GPT2ForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from harness.lm.batching import with_length_sorted_micro_batches

    torch.set_num_threads(1)
    tok = _tok()

    def make(micro):
        acc = 1 if micro == 0 else 8 // micro
        args = _sgd(
            RewardConfig(
                output_dir=str(tmp_path / str(micro)),
                per_device_train_batch_size=8 // acc,
                gradient_accumulation_steps=acc,
                max_length=48,
                report_to=[],
                use_cpu=True,
                bf16=False,
                activation_checkpointing=False,
                save_strategy="no",
                center_rewards_coefficient=0.01,
            )
        )
        return with_length_sorted_micro_batches(RewardTrainer)(
            model=_lm(tok, 0, GPT2ForSequenceClassification),
            args=args,
            train_dataset=Dataset.from_dict(PAIRS),
            processing_class=tok,
        )

    _assert_same_step(make)


@pytest.mark.slow  # a step of a TRL trainer (its import and set-up: seconds)
def test_sft_step_is_the_batch_step(tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from harness.lm.batching import with_length_sorted_micro_batches

    torch.set_num_threads(1)
    tok = _tok()
    texts = [p + c for p, c in zip(PAIRS["prompt"], PAIRS["chosen"])]

    def make(micro):
        acc = 1 if micro == 0 else 8 // micro
        args = _sgd(
            SFTConfig(
                output_dir=str(tmp_path / str(micro)),
                per_device_train_batch_size=8 // acc,
                gradient_accumulation_steps=acc,
                max_length=48,
                report_to=[],
                use_cpu=True,
                bf16=False,
                activation_checkpointing=False,
                save_strategy="no",
                packing=False,
                dataset_text_field="text",
            )
        )
        return with_length_sorted_micro_batches(SFTTrainer)(
            model=_lm(tok, 0), args=args, train_dataset=Dataset.from_dict({"text": texts}), processing_class=tok
        )

    _assert_same_step(make)


def test_unlikelihood_gradient_is_the_batch_gradient():
    from pipelines.baselines import EncodedPairs, accumulate_unlikelihood
    from pipelines.schemas import UnlikelihoodPipeline

    torch.set_num_threads(1)
    tok = _tok()
    order = np.argsort([len(c) for c in PAIRS["chosen"]])
    prompts, chosen, rejected = ([PAIRS[k][i] for i in order] for k in ("prompt", "chosen", "rejected"))
    grads, losses = [], []
    for micro in (0, 2):
        model = _lm(tok, 0)
        cfg = UnlikelihoodPipeline(batch_size=8, micro_batch_size=micro, max_length=48)
        pairs = EncodedPairs.of(tok, prompts, chosen, rejected, cfg.max_length)
        loss, *_ = accumulate_unlikelihood(model, tok, pairs, cfg, torch.device("cpu"))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        losses.append(float(loss))
    assert grads[0].abs().max() > 1e-3
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5) and abs(losses[0] - losses[1]) < 1e-6


def test_dataset_widths_are_the_example_widths_in_the_datasets_order():
    from datasets import Dataset

    from harness.lm.batching import dataset_widths

    rows = [
        {"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5, 6], "text": "a"},
        {"prompt_ids": [1], "chosen_ids": [3, 4, 5, 6], "rejected_ids": None, "text": "b"},
        {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [7], "text": "c"},
    ]
    data = Dataset.from_list(rows)
    assert dataset_widths(data) == [example_width(r) for r in rows] == [5, 5, 1]
    reordered = data.select([2, 0])  # an indices mapping over the same table
    assert dataset_widths(reordered) == [1, 5]
    sft = Dataset.from_dict({"input_ids": [[1, 2, 3], [4]], "attention_mask": [[1, 1, 1], [1]]})
    assert dataset_widths(sft) == [3, 1]
