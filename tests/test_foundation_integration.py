"""SFT -> preferences -> evaluation on a very small config, end to end through the real Hydra config."""

import json

from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.eval import row as result_row

ROW_KEYS = set(result_row.ROW_KEYS)  # the evidence goes to evidence.jsonl


def test_sft_preferences_and_evaluation(run_pipeline, tmp_path):
    cache = tmp_path / "cache"
    facts, folder = run_pipeline("sft", cache=cache, folder="sft1")
    assert not facts["reused"] and 0 <= facts["kl_to_self"] < 1e-5  # to float rounding (see test_evaluator)
    assert facts["heldout_perplexity"] > 1 and 0 <= facts["gold_mean"] <= 1
    ckpt = facts["checkpoint"]
    model = AutoModelForCausalLM.from_pretrained(ckpt)  # a checkpoint anyone can load
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert tok.pad_token_id != tok.eos_token_id and model.config.vocab_size == len(tok)
    rows = [json.loads(line) for line in (folder / "points.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and set(rows[0]) == ROW_KEYS and rows[0]["method"] == "sft" and 0 <= rows[0]["kl"] < 1e-5
    assert (folder / "config.yaml").exists() and "pipeline" in (folder / "config.yaml").read_text()

    again, _ = run_pipeline("sft", cache=cache, folder="sft2")
    assert again["reused"] and again["checkpoint"] == ckpt

    prefs, _ = run_pipeline("preferences", cache=cache, folder="prefs")
    assert prefs["pairs_train"] > 0 and prefs["label_agreement_with_gold"] == 1.0
    from datasets import load_from_disk

    pairs = load_from_disk(prefs["path"] + "/pairs")
    train = pairs["train"]
    assert set(train.column_names) >= {"prompt", "chosen", "rejected", "chosen_score", "rejected_score",
                                       "chosen_truncated", "rejected_truncated"}
    assert all(c > r for c, r in zip(train["chosen_score"], train["rejected_score"]))
    # 40 prompts x 6 pairs at most; the validation split shares no prompt with training
    assert len(train) + len(pairs["test"]) <= 240
    assert not set(train["prompt"]) & set(pairs["test"]["prompt"])
