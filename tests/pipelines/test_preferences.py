import numpy as np
import pytest

from harness.config import PreferencesConfig
from pipelines.stages.preferences import make_pairs


def test_all_six_pairs_chosen_outscores_rejected():
    scores = np.array([[0.9, 0.1, 0.5, 0.3]])
    pairs = make_pairs(scores, PreferencesConfig(), np.random.default_rng(0))
    assert len(pairs) == 6
    assert {frozenset((c, r)) for _, c, r in pairs} == {
        frozenset(p) for p in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    }
    assert all(scores[p, c] > scores[p, r] for p, c, r in pairs)


def test_ties_and_small_margins_are_dropped():
    scores = np.array([[0.5, 0.5, 0.52, 0.9]])
    assert len(make_pairs(scores, PreferencesConfig(), np.random.default_rng(0))) == 5  # the one tie goes
    kept = make_pairs(scores, PreferencesConfig(min_margin=0.1), np.random.default_rng(0))
    # gaps: .5/.5 tie, .5/.52 and .5/.52 below 0.1 -> only the three pairs with 0.9 remain
    assert sorted((c, r) for _, c, r in kept) == [(3, 0), (3, 1), (3, 2)]


def test_bradley_terry_labels_follow_the_logistic():
    # gap 0.1 at tau 0.1: P(higher wins) = sigma(1) = 0.731
    scores = np.tile(np.array([[0.6, 0.5]]), (4000, 1))
    pairs = make_pairs(scores, PreferencesConfig(labels="bradley_terry", bt_temperature=0.1), np.random.default_rng(1))
    wins = np.mean([c == 0 for _, c, _ in pairs])
    assert abs(wins - 1 / (1 + np.exp(-1))) < 0.03


@pytest.mark.slow
def test_the_preference_set_asked_for_first_trains_pi_sft_on_the_way(run_pipeline, tmp_path):
    """``pipeline=preferences`` on an empty cache builds π_SFT first: its training must not run under the sampling's
    no-grad ("element 0 of tensors does not require grad" it was)."""
    result, _ = run_pipeline("preferences", "threads=1")
    assert (tmp_path / "cache" / "sft").is_dir() and any((tmp_path / "cache" / "preferences").glob("*/artifact.json"))
    assert result["pairs_train"] > 0
