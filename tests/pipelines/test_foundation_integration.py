"""SFT -> preferences -> evaluation on a very small config, end to end through the real Hydra config."""

import json
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.eval import row as result_row

ROW_KEYS = set(result_row.ROW_KEYS)  # the evidence goes to evidence.jsonl


def test_sft_preferences_and_evaluation(run_pipeline, tiny_cache):
    """On the session's stage cache (tests/conftest.py), which a ``pipeline=reward_model`` job built: ``pipeline=sft``
    and ``pipeline=preferences`` find their stages there and report what the build measured."""
    cache = tiny_cache
    facts, folder = run_pipeline("sft", cache=cache, folder="sft1")
    assert facts["reused"] and 0 <= facts["kl_to_self"] < 1e-5  # to float rounding (see test_evaluator)
    assert facts["heldout_perplexity"] > 1 and 0 <= facts["gold_mean"] <= 1
    assert facts["train_reviews"] == 400 and facts["parameters"] > 0 and facts["train_loss"] > 0  # tiny_debug: 400
    ckpt = facts["checkpoint"]
    assert Path(ckpt).parent == cache / "sft" and len(list((cache / "sft").glob("*/artifact.json"))) == 1
    model = AutoModelForCausalLM.from_pretrained(ckpt)  # a checkpoint anyone can load
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert tok.pad_token_id != tok.eos_token_id and model.config.vocab_size == len(tok)
    rows = [json.loads(line) for line in (folder / "points.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and set(rows[0]) == ROW_KEYS and rows[0]["method"] == "sft" and 0 <= rows[0]["kl"] < 1e-5
    assert (folder / "config.yaml").exists() and "pipeline" in (folder / "config.yaml").read_text()

    again, _ = run_pipeline("sft", cache=cache, folder="sft2")
    assert again["reused"] and again["checkpoint"] == ckpt

    prefs, _ = run_pipeline("preferences", cache=cache, folder="prefs")
    assert prefs["reused"] and prefs["pairs_train"] > 0 and prefs["label_agreement_with_gold"] == 1.0
    from datasets import load_from_disk

    pairs = load_from_disk(prefs["path"] + "/pairs")
    train = pairs["train"]
    assert set(train.column_names) >= {
        "prompt",
        "chosen",
        "rejected",
        "chosen_score",
        "rejected_score",
        "chosen_truncated",
        "rejected_truncated",
    }
    assert all(c > r for c, r in zip(train["chosen_score"], train["rejected_score"]))
    # 40 prompts x 6 pairs at most; the validation split shares no prompt with training
    assert len(train) + len(pairs["test"]) <= 240
    assert not set(train["prompt"]) & set(pairs["test"]["prompt"])
