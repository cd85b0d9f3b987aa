import numpy as np
import pytest

from harness.config import GoldConfig
from harness.data.gold import ClassifierGold, VaderGold, load_gold
from harness.fields import ConfigError


def test_vader_orders_sentiment_and_stays_in_unit_interval():
    gold = VaderGold()
    s = gold(["A wonderful, moving film. I loved it!", "The plot was long.", "Awful, boring and painful. Avoid it."])
    assert s.shape == (3,)
    assert np.all((s >= 0) & (s <= 1))
    assert s[0] > 0.8 and s[2] < 0.2 and abs(s[1] - 0.5) < 1e-9  # neutral text: compound 0 -> 0.5


def test_load_gold_default_is_vader():
    assert load_gold(GoldConfig()).name == "vader"


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A random-weight sequence classifier with POSITIVE/NEGATIVE labels, saved like a hub checkpoint."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from harness.lm.models import train_tokenizer

    path = tmp_path_factory.mktemp("clf")
    tok = train_tokenizer(["a good movie", "a bad movie", "fine"] * 10, vocab_size=300)
    torch.manual_seed(0)
    conf = GPT2Config(
        vocab_size=len(tok),
        n_embd=16,
        n_layer=1,
        n_head=2,
        n_positions=32,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
        pad_token_id=tok.pad_token_id,
    )
    GPT2ForSequenceClassification(conf).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_hf_classifier_returns_probability_of_the_label(tiny_classifier):
    pos = ClassifierGold(str(tiny_classifier), "POSITIVE", batch_size=2)
    neg = ClassifierGold(str(tiny_classifier), "NEGATIVE", batch_size=2)
    texts = ["a good movie", "a bad movie", "fine"]
    p, n = pos(texts), neg(texts)
    assert p.shape == (3,) and np.all((p > 0) & (p < 1))
    np.testing.assert_allclose(p + n, 1.0, atol=1e-6)  # two labels: the probabilities are complementary


def test_hf_classifier_unknown_label_is_a_one_line_error(tiny_classifier):
    with pytest.raises(ConfigError, match="gold.label") as e:
        ClassifierGold(str(tiny_classifier), "HAPPY")
    assert "\n" not in str(e.value)


def test_hf_classifier_needs_a_name():
    with pytest.raises(ConfigError, match="gold.name_or_path"):
        GoldConfig(kind="hf_classifier")
