"""harness.report.stats: hand-checked envelopes, selection, cross-fit interpolation and paired resampling, and a
simulation with a known difference between two methods (interval coverage; selection bias of the naive envelope)."""

import numpy as np
import pytest

from harness.report import stats as fs

# ---------------------------------------------------------------------------------------------------------
# Unimodal envelope and selection, by hand
# ---------------------------------------------------------------------------------------------------------


def test_unimodal_envelope_by_hand_keeps_the_decline():
    kl = [0.0, 1.0, 2.0, 3.0, 4.0]
    r = [0.5, 0.7, 0.9, 0.8, 0.85]
    # forward max .5 .7 .9 .9 .9, backward max .9 .9 .9 .85 .85 -> E = .5 .7 .9 .85 .85
    env, sel = fs.unimodal_envelope(kl, r)
    np.testing.assert_allclose(env, [0.5, 0.7, 0.9, 0.85, 0.85])
    assert sel.tolist() == [True, True, True, False, True]  # the last (highest-KL) point is on it
    # the naive running max drops the declining tail altogether
    assert fs.upper_envelope(kl, r)[0].tolist() == [0.0, 1.0, 2.0]


def test_unimodal_envelope_input_order_ties_and_replicates():
    kl = np.array([3.0, 0.0, 2.0, 0.0, 1.0])
    r = np.array([0.6, 0.5, 0.4, 0.52, 0.7])
    env, sel = fs.unimodal_envelope(kl, r)
    # sorted: (0, .52) (0, .5) (1, .7) (2, .4) (3, .6): of the two KL-0 points only the higher is selected
    assert sel.tolist() == [True, False, False, True, True]
    assert env[2] == pytest.approx(0.6)
    # vectorised over replicates: each row equals its own 1-D call
    rng = np.random.default_rng(1)
    K, R = rng.random((7, 9)), rng.random((7, 9))
    env2, sel2 = fs.unimodal_envelope(K, R)
    for i in range(7):
        e, s = fs.unimodal_envelope(K[i], R[i])
        np.testing.assert_array_equal(env2[i], e)
        np.testing.assert_array_equal(sel2[i], s)


def test_interp_selected_by_hand_nan_and_flat_outside():
    grid = np.array([0.0, 0.5, 1.0, 2.5, 4.0, 5.0])
    kl = np.array([[1.0, 0.0, 4.0, 2.0], [1.0, 0.0, 4.0, 2.0]])
    y = np.array([[0.6, 0.5, 0.9, 99.0], [0.6, 0.5, 0.9, 0.7]])
    sel = np.array([[True, False, True, False], [True, True, True, True]])
    out = fs.interp_selected(grid, kl, y, sel)
    # replicate 0 passes through (1, .6) and (4, .9) only: NaN below 1 and above 4
    np.testing.assert_allclose(out[0], [np.nan, np.nan, 0.6, 0.75, 0.9, np.nan])
    # replicate 1 passes through all four: (0 .5) (1 .6) (2 .7) (4 .9)
    np.testing.assert_allclose(out[1], [0.5, 0.55, 0.6, 0.75, 0.9, np.nan])
    flat = fs.interp_selected(grid, kl, y, sel, extrapolate="flat")
    np.testing.assert_allclose(flat[0], [0.6, 0.6, 0.6, 0.75, 0.9, 0.9])
    # chunking over replicates gives the same answer
    np.testing.assert_array_equal(fs.interp_selected(grid, kl, y, sel, max_cells=1), out)


def test_crossfit_selects_on_one_half_and_reports_the_other():
    # 4 prompts; halves from the fixed permutation
    a, b = fs.split_halves(4)
    assert sorted(np.concatenate([a, b]).tolist()) == [0, 1, 2, 3] and len(a) == 2
    gold = np.zeros((3, 4))
    kl = np.tile(np.array([[0.0], [1.0], [2.0]]), (1, 4))
    # point 1 looks best on half A only, point 2 is best on half B only
    gold[0] = 0.5
    gold[1, a], gold[1, b] = 0.9, 0.6
    gold[2, a], gold[2, b] = 0.7, 0.8
    w = fs.half_weights(4, (a, b))
    grid = np.array([0.0, 1.0, 2.0])
    # fold A->B: all three points are selected on A (.5 .9 .7 is unimodal): reported B values .5 .6 .8
    # fold B->A: on B (.5 .6 .8) all selected, reported A values .5 .9 .7; average = .5 .75 .75
    np.testing.assert_allclose(fs.crossfit_curves(gold, kl, w, grid)[0], [0.5, 0.75, 0.75])
    gold[1, a] = 0.4  # now point 1 is below on A: fold A->B skips it -> (0 .5) (2 .8): .65 at KL 1
    np.testing.assert_allclose(fs.crossfit_curves(gold, kl, w, grid)[0], [0.5, (0.65 + 0.4) / 2, 0.75])
    assert fs.crossfit_range(gold, kl, (a, b)) == (0.0, 2.0)


def test_resample_weights_stay_in_their_half_and_sum_to_one():
    halves = fs.split_halves(10)
    w = fs.resample_weights(10, halves, 50, np.random.default_rng(0))
    assert w.shape == (2, 50, 10)
    np.testing.assert_allclose(w.sum(axis=2), 1.0)
    for h, idx in enumerate(halves):
        other = np.setdiff1d(np.arange(10), idx)
        assert (w[h][:, other] == 0).all() and (w[h][:, idx] > 0).any()
        assert np.allclose(w[h] * len(idx), np.round(w[h] * len(idx)))  # integer counts
    assert not np.allclose(w[0, 0], w[0, 1])  # replicates differ


def test_seed_counts_pair_methods_with_the_same_seed_list():
    u = np.random.default_rng(0).random((100, 3))
    c3, c3b = fs.seed_counts(u, 3), fs.seed_counts(u, 3)
    np.testing.assert_array_equal(c3, c3b)
    assert (c3.sum(axis=1) == 3).all() and c3.std() > 0
    assert (fs.seed_counts(u, 1) == 1).all()


def _two_methods(rng, same=False, P=40):
    g = 0.5 + 0.05 * np.arange(5)[:, None] + 0.2 * rng.standard_normal((5, P))
    k = np.arange(5)[:, None] * rng.gamma(5, 0.2, (5, P))
    if same:
        return (g, k), (g.copy(), k.copy())
    return (g, k), (g - 0.03 + 0.2 * rng.standard_normal((5, P)), k)


def test_paired_difference_of_identical_evidence_has_zero_width():
    a, b = _two_methods(np.random.default_rng(0), same=True)
    res = fs.analyse({"dpo": {0: a}, "ppo": {0: b}}, kls=(2.0,), pairs=(("dpo", "ppo"),), n_boot=200)
    c = res["comparisons"][("dpo", "ppo")]
    assert np.all(c["diff"] == 0) and np.all(c["diff_lo"] == 0) and np.all(c["diff_hi"] == 0)
    assert c["area"]["lo"] == c["area"]["hi"] == 0
    assert c["runs"]["above"] == [] and c["runs"]["below"] == []
    # while each curve alone has a band of positive width: prompt resampling is shared, not absent
    band = res["curves"]["dpo"]["band_hi"] - res["curves"]["dpo"]["band_lo"]
    assert np.nanmin(band) > 0
    # an unpaired bootstrap would not cancel: different evidence gives a positive-width interval
    a, b = _two_methods(np.random.default_rng(0))
    c = fs.analyse({"dpo": {0: a}, "ppo": {0: b}}, kls=(2.0,), pairs=(("dpo", "ppo"),), n_boot=200)["comparisons"][
        ("dpo", "ppo")
    ]
    assert (c["diff_hi"] - c["diff_lo"]).min() > 0


def test_points_without_evidence_are_fixed_and_analysis_is_deterministic():
    P = 6
    const = [fs.constant_evidence(kl, r, P) for kl, r in ((0.0, 0.5), (1.0, 0.7), (2.0, 0.6))]
    pts = {"dpo": {0: (np.stack([c[0] for c in const]), np.stack([c[1] for c in const]))}}
    res = fs.analyse(pts, kls=(1.0, 2.0, 3.0), pairs=(), n_boot=50)
    st = res["stats"]["dpo"]
    assert st["at_kl"][1.0] == pytest.approx(dict(est=0.7, lo=0.7, hi=0.7))
    assert st["at_kl"][2.0]["est"] == pytest.approx(0.6)  # the decline is kept
    assert np.isnan(st["at_kl"][3.0]["est"])  # beyond the largest KL
    assert st["max_reward"]["est"] == pytest.approx(0.7)
    a, b = _two_methods(np.random.default_rng(3))
    r1 = fs.analyse({"dpo": {0: a}, "ppo": {0: b}}, n_boot=100)
    r2 = fs.analyse({"dpo": {0: a}, "ppo": {0: b}}, n_boot=100)
    np.testing.assert_array_equal(r1["curves"]["dpo"]["reps"], r2["curves"]["dpo"]["reps"])


def test_seed_mean_covers_the_range_all_seeds_cover():
    rng = np.random.default_rng(0)
    P = 20

    def seed_points(kmax):
        k = np.linspace(0, kmax, 4)[:, None] * np.ones((1, P))
        return 0.5 + 0.05 * k + 0.01 * rng.standard_normal((4, P)), k

    res = fs.analyse({"dpo": {0: seed_points(6.0), 1: seed_points(4.0)}}, kls=(3.0, 5.0), pairs=(), n_boot=100)
    assert res["curves"]["dpo"]["hi"] == pytest.approx(4.0)
    assert np.isnan(res["stats"]["dpo"]["at_kl"][5.0]["est"])
    assert res["stats"]["dpo"]["at_kl"][3.0]["est"] == pytest.approx(0.65, abs=0.02)


def test_common_kl_range_rules():
    ranges = {"dpo": (0.0, 6.0), "ppo": (0.0, 5.0), "best_of_n": (0.0, 1.83), "sft": (0.0, 0.0)}
    rng = fs.common_kl_range(ranges, reference=("sft",))
    assert (rng["lo"], rng["hi"], rng["limited_by"]) == (0.0, 5.0, "ppo")
    assert set(rng["excluded"]) == {"sft", "best_of_n"}
    assert rng["excluded"]["sft"] == "the reference policy, a single point at KL 0"
    assert rng["excluded"]["best_of_n"].startswith("its curve ends at 1.83 nats, below 2")
    ranges["best_of_n"] = (0.0, 3.17)
    assert fs.common_kl_range(ranges, reference=("sft",))["limited_by"] == "best_of_n"
    assert np.isnan(fs.common_kl_range({"sft": (0.0, 0.0)}, reference=("sft",))["lo"])
    # the statistics know no method by name: only the caller's `reference` keeps a method from setting the range
    assert fs.common_kl_range({"sft": (0.0, 0.0)})["limited_by"] == "sft"


def test_sign_runs_and_curve_area_by_hand():
    grid = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    runs = fs.sign_runs(grid, np.array([-1, 0.1, 0.2, -1, -2.0]), np.array([1, 1, 1, -0.1, -0.5]))
    assert runs == dict(above=[(1.0, 2.0)], below=[(3.0, 4.0)], indistinguishable=[(0.0, 0.0)])
    curves = np.array([[0.0, 1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, np.nan, 1.0]])
    np.testing.assert_allclose(fs.curve_area(grid, curves, 0.5, 2.0), [1.875, 1.5])
    assert np.isnan(fs.curve_area(grid, curves, 0.0, 4.0)[1])  # undefined somewhere: NaN


# ---------------------------------------------------------------------------------------------------------
# Simulation: two methods with a known difference
# ---------------------------------------------------------------------------------------------------------

P = 128
SLOPE_A, SLOPE_B = 0.04, 0.03  # true reward = 0.5 + slope · KL (+ prompt effect): A − B = 0.01 · KL
X = 5.0  # the fixed KL checked
N_REP, N_BOOT = 200, 200


def _method(rng, u, slope, kl_maxes, steps=6):
    """A method's runs × steps: per-prompt gold = true line at the point's KL + prompt effect u (shared by all
    methods) + independent noise; per-prompt KL = true KL × gamma noise (mean 1, sd 0.32)."""
    kl_true = np.concatenate([np.linspace(0, km, steps) for km in kl_maxes])
    gold = 0.5 + slope * kl_true[:, None] + u[None, :] + 0.15 * rng.standard_normal((kl_true.size, P))
    kl = kl_true[:, None] * rng.gamma(10.0, 0.1, size=(kl_true.size, P))
    return gold, kl


@pytest.fixture(scope="module")
def simulation():
    rng = np.random.default_rng(2024)
    out = []
    for _ in range(N_REP):
        u = 0.1 * rng.standard_normal(P)
        a = _method(rng, u, SLOPE_A, (4.0, 7.0, 11.5))
        b = _method(rng, u, SLOPE_B, (5.0, 8.5, 13.0))
        res = fs.analyse(
            {"dpo": {0: a}, "ppo": {0: b}},
            kls=(X,),
            pairs=(("dpo", "ppo"),),
            n_boot=N_BOOT,
            seed=int(rng.integers(1 << 31)),
            n_grid=21,
        )
        c = res["comparisons"][("dpo", "ppo")]
        j = int(np.flatnonzero(np.isclose(c["grid"], X))[0])
        true_diff = (SLOPE_A - SLOPE_B) * X
        true_area = (SLOPE_A - SLOPE_B) * (c["hi"] ** 2 - c["lo"] ** 2) / 2
        truth_a = 0.5 + SLOPE_A * X + u.mean()  # A's curve at X on these prompts
        naive = fs.envelope_at(*fs.upper_envelope(a[1].mean(axis=1), a[0].mean(axis=1)), X)
        out.append(
            dict(
                cover_point=c["diff_lo"][j] <= true_diff <= c["diff_hi"][j],
                cover_area=c["area"]["lo"] <= true_area <= c["area"]["hi"],
                err_diff=c["diff"][j] - true_diff,
                err_crossfit=res["stats"]["dpo"]["at_kl"][X]["est"] - truth_a,
                err_naive=naive - truth_a,
            )
        )
    return {k: np.array([o[k] for o in out], dtype=float) for k in out[0]}


@pytest.mark.slow  # the simulation: many bootstrapped analyses
def test_bootstrap_interval_of_the_difference_covers_the_truth(simulation):
    area, point = simulation["cover_area"].mean(), simulation["cover_point"].mean()
    print(f"coverage over {N_REP} repetitions: area difference {area:.3f}, difference at KL {X:g} {point:.3f}")
    assert 0.90 <= area <= 0.99
    assert 0.90 <= point <= 1.0  # pointwise: conservative (re-selection in replicates adds spread)


@pytest.mark.slow  # the simulation: many bootstrapped analyses
def test_naive_envelope_is_biased_up_and_crossfit_is_not(simulation):
    se = lambda v: v.std(ddof=1) / np.sqrt(v.size)
    naive, cross, diff = simulation["err_naive"], simulation["err_crossfit"], simulation["err_diff"]
    print(
        f"mean error: naive {naive.mean():+.4f} ± {se(naive):.4f}, cross-fitted {cross.mean():+.4f} ± "
        f"{se(cross):.4f}, difference {diff.mean():+.4f} ± {se(diff):.4f}"
    )
    assert naive.mean() > 5 * se(naive)  # the running max keeps the lucky points
    assert abs(cross.mean()) < 3 * se(cross) + 0.002
    assert abs(diff.mean()) < 3 * se(diff) + 0.002
    assert naive.mean() - cross.mean() > 3 * np.hypot(se(naive), se(cross))
