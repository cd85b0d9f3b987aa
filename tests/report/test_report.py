"""The frontier report: envelope / area / fit / CI math by hand, the written files, the CLI, W&B logging and
the notebook, all on synthetic sweeps written into tmp_path."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.eval.row import evidence_key
from harness.report import analysis, load, make, plots, text, wandb_log
from harness.report import rows as report_rows
from harness.report import stats as fs
from pipelines.registry import COMPARISONS, METHODS

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------------
# A synthetic sweep: several methods and knobs, 2 seeds, run folders at different depths
# ---------------------------------------------------------------------------------------------------------


def _row(method, setting, seed, step, kl, reward, run_id, proxy=None):
    return dict(
        method=method,
        setting=setting,
        seed=seed,
        step=step,
        kl=float(kl),
        kl_sem=0.01,
        kl_sample=float(kl) * 1.02,
        gold_reward=float(reward),
        gold_reward_sem=0.01,
        proxy_reward=proxy,
        response_tokens=24.0,
        wall_s=1.0 + step,
        run_id=run_id,
    )


def _curve(gain, scale):
    return lambda kl: gain * (1.0 - math.exp(-kl / scale))


# method -> (settings with the KL each run reaches, reward gain curve); DPO's curve is above PPO's everywhere
SWEEP = {
    "dpo": ({"beta=0.05": 12.0, "beta=0.1": 8.0, "beta=1.0": 3.0}, _curve(0.45, 3.0)),
    "ipo": ({"beta=0.1": 7.0, "beta=0.5": 4.0}, _curve(0.40, 3.0)),
    "ppo": (
        {
            f"kl_coef={k},cliprange={c}": m
            for (k, m) in (("0.02", 14.0), ("0.05", 9.0), ("0.1", 5.0))
            for c in ("0.1", "0.2")
        },
        _curve(0.38, 4.0),
    ),
    "preferred_ft": ({"": 6.0}, _curve(0.25, 3.0)),
}


def write_sweep(root: Path, sweep=SWEEP, seeds=(0, 1), with_bon=True, with_sft=True) -> list[dict]:
    """Write run folders (some nested two levels deeper) with a points.jsonl each; return all rows."""
    rows_all, job = [], 0
    for seed in seeds:
        base = 0.5 + 0.01 * seed  # the evaluator is deterministic per seed: same π_SFT score
        for method, (settings, curve) in sweep.items():
            for setting, kl_max in settings.items():
                run_id = f"{method}-{job}"
                folder = root / str(job) if job % 2 else root / "group" / f"job{job}" / "run"
                folder.mkdir(parents=True)
                rows = []
                for step in range(6):
                    kl = kl_max * step / 5
                    wiggle = 0.004 * math.sin(3 * job + step) if step else 0.0
                    rows.append(_row(method, setting, seed, step * 50, kl, base + curve(kl) + wiggle, run_id))
                lines = [json.dumps(r) for r in rows]
                lines.insert(2, "")  # blank lines are allowed
                (folder / "points.jsonl").write_text("\n".join(lines) + "\n")
                rows_all += rows
                job += 1
        if with_bon:
            folder = root / f"bon_seed{seed}"
            folder.mkdir()
            rows = [
                _row(
                    "best_of_n",
                    f"N={n}",
                    seed,
                    0,
                    math.log(n) - (n - 1) / n,
                    base + 0.3 * (1 - math.exp(-(math.log(n) - (n - 1) / n))),
                    f"bon-{seed}",
                    proxy=0.1 * n,
                )
                for n in (1, 2, 4, 8, 16, 64)
            ]
            (folder / "points.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            rows_all += rows
        if with_sft:
            folder = root / f"sft_seed{seed}" / "eval"
            folder.mkdir(parents=True)
            row = _row("sft", "", seed, 0, 0.0, base, f"sft-{seed}")
            (folder / "points.jsonl").write_text(json.dumps(row) + "\n")
            rows_all.append(row)
    return rows_all


@pytest.fixture
def sweep_dir(tmp_path):
    root = tmp_path / "sweep"
    root.mkdir()
    write_sweep(root)
    return root


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------


def test_load_points_reads_every_nested_file(sweep_dir):
    rows = load.load_points(sweep_dir)
    n_runs = 2 * sum(len(s) for s, _ in SWEEP.values())
    assert len(rows) == 2 * (6 + 1) + 6 * n_runs
    assert {r["method"] for r in rows} == {"dpo", "ipo", "ppo", "preferred_ft", "best_of_n", "sft"}
    assert {r["seed"] for r in rows} == {0, 1}


def test_load_points_names_the_missing_key(tmp_path):
    row = _row("dpo", "beta=0.1", 0, 0, 0.0, 0.5, "r")
    bad = dict(row)
    del bad["gold_reward"]
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "points.jsonl").write_text(json.dumps(row) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError) as err:
        load.load_points(tmp_path)
    msg = str(err.value)
    assert "'gold_reward'" in msg and "points.jsonl:3" in msg and "\n" not in msg


def test_load_points_rejects_bad_json_with_file_and_line(tmp_path):
    (tmp_path / "points.jsonl").write_text('{"method": "dpo"\n')
    with pytest.raises(ValueError, match=r"points\.jsonl:1: bad JSON"):
        load.load_points(tmp_path)


def test_load_points_skips_a_cut_last_line_but_not_a_bad_line_before_it(tmp_path):
    rows = [json.dumps(_row("dpo", "beta=0.1", 0, step, 0.1 * step, 0.5, "r")) for step in (0, 1)]
    (tmp_path / "points.jsonl").write_text(rows[0] + "\n" + rows[1] + "\n" + rows[1][:25])  # killed mid-line
    assert [r["step"] for r in load.load_points(tmp_path)] == [0, 1]
    (tmp_path / "points.jsonl").write_text(rows[0] + "\n" + rows[1][:25] + "\n" + rows[1] + "\n")
    with pytest.raises(ValueError, match=r"points\.jsonl:2: bad JSON"):
        load.load_points(tmp_path)


def test_load_points_keeps_a_verbatim_duplicate_once(tmp_path):
    row = json.dumps(_row("dpo", "beta=0.1", 0, 0, 0.0, 0.5, "r"))
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "points.jsonl").write_text(row + "\n")
    assert len(load.load_points(tmp_path)) == 1


# ---------------------------------------------------------------------------------------------------------
# Envelope, interpolation, area
# ---------------------------------------------------------------------------------------------------------


def test_upper_envelope_drops_dominated_points():
    kl = [0.0, 1.0, 1.0, 2.0, 3.0, 2.5, 4.0, 0.5]
    reward = [0.5, 0.6, 0.7, 0.65, 0.9, 0.9, 0.85, 0.5]
    # (1, 0.6) same KL lower reward; (2, 0.65) below (1, 0.7); (3, 0.9) same reward more KL than (2.5, 0.9);
    # (4, 0.85) more KL less reward; (0.5, 0.5) more KL same reward as (0, 0.5)
    kl_env, r_env = fs.upper_envelope(kl, reward)
    np.testing.assert_allclose(kl_env, [0.0, 1.0, 2.5])
    np.testing.assert_allclose(r_env, [0.5, 0.7, 0.9])


def test_upper_envelope_ignores_nan_and_handles_empty():
    kl_env, r_env = fs.upper_envelope([0.0, np.nan, 1.0], [0.5, 0.9, np.nan])
    np.testing.assert_allclose(kl_env, [0.0])
    assert fs.upper_envelope([], [])[0].size == 0


def test_envelope_at_interpolates_and_is_nan_outside():
    kl_env, r_env = np.array([0.0, 2.0, 4.0]), np.array([0.5, 0.7, 0.8])
    assert fs.envelope_at(kl_env, r_env, 1.0) == pytest.approx(0.6)
    assert fs.envelope_at(kl_env, r_env, 3.0) == pytest.approx(0.75)
    assert fs.envelope_at(kl_env, r_env, 4.0) == pytest.approx(0.8)
    out = fs.envelope_at(kl_env, r_env, np.array([-0.1, 0.0, 4.5]))
    assert np.isnan(out[0]) and out[1] == pytest.approx(0.5) and np.isnan(out[2])


def test_envelope_area_by_hand():
    # a straight line r = 0.5 + 0.1 kl, given by three vertices: area over [1, 3] = 2 * (0.6 + 0.8) / 2 = 1.4
    kl_env, r_env = np.array([0.0, 2.0, 4.0]), np.array([0.5, 0.7, 0.9])
    assert fs.envelope_area(kl_env, r_env, 1.0, 3.0) == pytest.approx(1.4)
    # a kinked envelope over its whole range: 2*(0.5+0.7)/2 + 2*(0.7+0.8)/2 = 1.2 + 1.5
    assert fs.envelope_area([0.0, 2.0, 4.0], [0.5, 0.7, 0.8], 0.0, 4.0) == pytest.approx(2.7)
    assert fs.envelope_area(kl_env, r_env, 2.0, 2.0) == 0.0
    assert math.isnan(fs.envelope_area(kl_env, r_env, 0.0, 5.0))  # not covered: no extrapolation
    assert math.isnan(fs.envelope_area(kl_env, r_env, -1.0, 1.0))


# ---------------------------------------------------------------------------------------------------------
# Gao fits and confidence intervals
# ---------------------------------------------------------------------------------------------------------


def test_fit_gao_recovers_rl_law_on_exact_data():
    kl = np.array([0.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
    d = np.sqrt(kl)
    reward = 0.4 + np.where(d > 0, d * (0.3 - 0.12 * np.log(np.where(d > 0, d, 1))), 0.0)
    fit = fs.fit_gao(kl, reward, "rl")
    assert fit["alpha"] == pytest.approx(0.3, abs=1e-9) and fit["beta"] == pytest.approx(0.12, abs=1e-9)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-9) and fit["n"] == 8
    assert fit["baseline"] == pytest.approx(0.4)


def test_fit_gao_recovers_bon_law_and_uses_given_baseline():
    n = np.array([2, 4, 8, 16, 64])
    kl = np.log(n) - (n - 1) / n
    d = np.sqrt(kl)
    reward = 0.55 + d * (0.25 - 0.05 * d)
    fit = fs.fit_gao(kl, reward, "bon", baseline=0.55)  # no KL=0 point among them
    assert fit["alpha"] == pytest.approx(0.25, abs=1e-9) and fit["beta"] == pytest.approx(0.05, abs=1e-9)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-9)
    no_baseline = fs.fit_gao(kl, reward, "bon")  # no KL≈0 point: R0 = 0, a worse fit
    assert no_baseline["baseline"] == 0.0 and no_baseline["r2"] < 0.999


def test_fit_gao_needs_two_points_away_from_zero():
    fit = fs.fit_gao([0.0, 1.0], [0.5, 0.6], "rl")
    assert math.isnan(fit["alpha"]) and fit["n"] == 2
    with pytest.raises(ValueError):
        fs.fit_gao([1.0], [0.5], "ppo")


def test_mean_ci95_by_hand():
    mean, hw = fs.mean_ci95([1.0, 2.0, 3.0])  # s = 1, t(2) = 4.303
    assert mean == 2.0 and hw == pytest.approx(4.303 / math.sqrt(3))
    mean, hw = fs.mean_ci95([0.0, 2.0])  # s = sqrt(2), t(1) = 12.706
    assert hw == pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2))
    mean, hw = fs.mean_ci95(list(range(41)))  # df 40 > 30: 1.96
    assert hw == pytest.approx(1.96 * np.std(range(41), ddof=1) / math.sqrt(41))
    assert fs.mean_ci95([0.7, float("nan")])[0] == 0.7 and math.isnan(fs.mean_ci95([0.7])[1])
    assert all(math.isnan(v) for v in fs.mean_ci95([]))


# ---------------------------------------------------------------------------------------------------------
# Summary rules
# ---------------------------------------------------------------------------------------------------------


def test_comparison_sentence_names_above_indistinguishable_and_below():
    grid = np.linspace(0.0, 8.0, 9)
    est_a = 0.5 + 0.05 * grid
    est_b = 0.5 + 0.05 * grid - 0.02 * (grid - 4.0)  # B is higher below KL 4, lower above it
    noise = np.random.default_rng(0).normal(0.0, 0.005, (400, 1))
    cmp_ = fs.compare_curves(grid, est_a, est_a + noise, est_b, est_b + noise)
    assert cmp_["runs"]["above"] == [(5.0, 8.0)] and cmp_["runs"]["below"] == [(0.0, 3.0)]
    assert cmp_["runs"]["indistinguishable"] == [(4.0, 4.0)]
    sentence = text.comparison_sentence(cmp_, "dpo", "ppo", METHODS)  # named by the registry's labels
    assert sentence.startswith(
        "DPO vs PPO (learned RM) over their KL overlap [0.00, 8.00] nats: area difference "
        "DPO − PPO (learned RM) = 0.000 ["
    )
    assert (
        "DPO is above PPO (learned RM) with 95% confidence on [5.00, 8.00] nats; indistinguishable at 4.00 nats; "
        "below on [0.00, 3.00] nats. These are pointwise 95% intervals on a 9-point KL grid"
    ) in sentence
    assert text.comparison_sentence({"missing": ["ppo"]}, "dpo", "ppo", METHODS) == (
        "DPO vs PPO (learned RM): not compared, this sweep has no PPO (learned RM) rows."
    )
    assert text.comparison_sentence({"missing": ["dpo", "ppo_gt"]}, "dpo", "ppo_gt", METHODS) == (
        "DPO vs PPO-GT (gold reward): not compared, this sweep has no DPO and PPO-GT (gold reward) rows."
    )
    assert text.comparison_sentence(None, "dpo", "ppo_gt", METHODS) == (
        "DPO vs PPO-GT (gold reward): not compared, their curves do not overlap in KL."
    )
    # a name the registry does not know (a family, a toy method) is used as it is
    assert text.comparison_sentence(None, "online", "toy", METHODS).startswith("online vs toy: not compared")


# ---------------------------------------------------------------------------------------------------------
# The written report
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # renders the report's figures (seconds)
def test_make_report_writes_csv_plot_and_summary(sweep_dir):
    paths = make.make_report(sweep_dir, METHODS, COMPARISONS, title="synthetic reviews", commit="abc1234", n_boot=200)
    assert {"points_csv", "frontier_png", "summary_md", "ablations_png"} <= set(paths)
    for p in paths.values():
        assert p.parent == sweep_dir and p.stat().st_size > 0
    csv_lines = paths["points_csv"].read_text().strip().splitlines()
    assert csv_lines[0].split(",")[:4] == ["method", "setting", "seed", "step"]
    assert len(csv_lines) - 1 == len(load.load_points(sweep_dir))
    assert paths["frontier_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    md = paths["summary_md"].read_text()
    for label in ("PPO (learned RM)", "DPO", "IPO", "Preferred-FT", "Best of N", "SFT"):
        assert f"| {label} |" in md
    # Best of N (N up to 64) reaches log 64 - 63/64 = 3.17 nats >= 2, so it sets the common range
    assert md.startswith("# Frontier report: synthetic reviews\n\nMade by commit abc1234.\n")
    assert "Common KL range for areas: [0.00, 3.17] nats (the upper end is where the curve of Best of N" in md
    assert "does not set the range: the reference policy" in md  # SFT never does
    order = md.split("**Ordering** by area under the curve")[1].split("\n")[0]
    assert order.index("DPO") < order.index("IPO") < order.index("PPO (learned RM)") < order.index("Preferred-FT")
    # no evidence files: rows are fixed values, the only uncertainty is the 2 seeds; DPO's curve is far above
    s = analysis.summarize(load.load_points(sweep_dir), METHODS, COMPARISONS, n_boot=200)  # the same numbers
    c = s["comparisons"][("dpo", "ppo")]
    assert (
        f"DPO vs PPO (learned RM) over their KL overlap [0.00, 12.00] nats: area difference DPO − PPO (learned RM) "
        f"= {text.fmt_ci(c['area'])} (mean reward difference {text.fmt_ci(c['mean'])}). DPO is above PPO (learned "
        "RM) with 95% confidence on ["
    ) in md and "below nowhere" in md
    assert c["area"]["lo"] > 0 and c["runs"]["below"] == []
    assert "PPO-GT" not in md  # a later comparison whose rival has no rows is left out
    assert "rows had no per-prompt evidence" in md and "(2 seeds resampled with replacement" in md
    # the per-method table: the registry's order and labels, runs and points counted, each statistic est [lo, hi]
    table = [line for line in md.split("| method | runs | points |")[1].split("\n\n")[0].splitlines()[2:]]
    assert [line.split(" | ")[0] for line in table] == [
        "| PPO (learned RM)",
        "| DPO",
        "| IPO",
        "| Preferred-FT",
        "| Best of N",
        "| SFT",
    ]
    dpo = s["per_method"]["dpo"]
    assert (
        "| DPO | 6 | 36 | "
        + " | ".join(text.fmt_ci(x) for x in (dpo["area"], *dpo["at_kl"].values(), dpo["max_reward"]))
        + " |"
        in table
    )
    assert table[0].count(" [") == 5 and table[-1].startswith("| SFT | 2 | 2 | — | — | — | — | ")
    ordering = sorted(
        (m for m in s["per_method"] if np.isfinite(s["per_method"][m]["area"]["est"])),
        key=lambda m: -s["per_method"][m]["area"]["est"],
    )
    assert s["ordering"] == ordering and "best_of_n" in ordering and "sft" not in ordering
    assert "—" in md and "nan" not in md.lower()
    # the Gao fits, by the law of each method's record, R0 from its own KL = 0 points
    dpo_rows = [r for r in load.load_points(sweep_dir) if r["method"] == "dpo"]
    f = fs.fit_gao([r["kl"] for r in dpo_rows], [r["gold_reward"] for r in dpo_rows], "rl")
    assert (
        f"| DPO | rl | {f['alpha']:.3f} | {f['beta']:.3f} | {f['r2']:.3f} | 36 | {f['baseline']:.3f} | "
        "own KL≈0 points |"
    ) in md
    assert "| Best of N | bon |" in md and "| SFT | rl |" not in md and "Best of N: R(d) = d·(α − β·d)" in md


def test_best_of_n_sets_or_leaves_the_range_by_the_2_nat_rule(tmp_path):
    rows = write_sweep(tmp_path / "s", seeds=(0,), with_sft=False)
    short_bon = [r for r in rows if r["method"] != "best_of_n" or float(r["setting"][2:]) <= 16]
    s = analysis.summarize(short_bon, METHODS, COMPARISONS, n_boot=20)  # N <= 16: 1.83 nats < 2, left out
    assert s["range"]["hi"] == pytest.approx(6.0) and "best_of_n" in s["range"]["excluded"]
    assert math.isnan(s["per_method"]["best_of_n"]["area"]["est"])
    assert np.isfinite(s["per_method"]["dpo"]["area"]["est"])
    s = analysis.summarize(rows, METHODS, COMPARISONS, n_boot=20)  # N up to 64: 3.17 nats, it sets the range
    assert s["range"]["hi"] == pytest.approx(math.log(64) - 63 / 64) and s["range"]["limited_by"] == "best_of_n"


@pytest.mark.slow  # renders the report's figures (seconds)
def test_single_seed_summary_without_evidence_says_so_and_reports_missing_ppo(tmp_path):
    sweep = {k: v for k, v in SWEEP.items() if k != "ppo"}
    write_sweep(tmp_path, sweep=sweep, seeds=(3,), with_bon=False)
    md = make.make_report(tmp_path, METHODS, COMPARISONS, n_boot=50)["summary_md"].read_text()
    assert "DPO vs PPO (learned RM): not compared, this sweep has no PPO (learned RM) rows." in md
    assert "| DPO | 3 | 18 |" in md and "| Preferred-FT | 1 | 6 |" in md and "| SFT | 1 | 1 |" in md
    assert "1 seed." in md and "training-seed variance (one seed)" in md
    # no evidence, one seed: nothing varies, every number stands alone (no interval) and the summary says why
    assert "(so every interval here reflects seed resampling only)" in md
    s = analysis.summarize(load.load_points(tmp_path), METHODS, COMPARISONS, n_boot=50)
    area = s["per_method"]["dpo"]["area"]
    assert np.isfinite(area["est"]) and area["lo"] == area["hi"] == pytest.approx(area["est"])


def add_evidence(root: Path, n_prompts=16, key="k1", noise=0.05, seed=0) -> None:
    """Write an evidence.jsonl beside every points.jsonl: per-prompt gold with mean = the row's gold_reward,
    per-prompt KL with mean = the row's kl (constant for Best-of-N, as the evaluator writes it)."""
    rng = np.random.default_rng(seed)
    for path in sorted(root.rglob("points.jsonl")):
        lines = []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            e = rng.normal(0.0, noise, n_prompts)
            gold = r["gold_reward"] + e - e.mean()
            f = rng.gamma(10.0, 0.1, n_prompts) if r["method"] != "best_of_n" else np.ones(n_prompts)
            kl = r["kl"] * f / f.mean()
            lines.append(
                json.dumps(
                    dict(
                        run_id=r["run_id"],
                        method=r["method"],
                        setting=r["setting"],
                        seed=r["seed"],
                        step=r["step"],
                        prompts_key=key,
                        gold=gold.tolist(),
                        kl=kl.tolist(),
                        truncated=[0.0] * n_prompts,
                    )
                )
            )
        (path.parent / "evidence.jsonl").write_text("\n".join(lines) + "\n")


def test_load_evidence_joins_rows_and_gives_intervals(sweep_dir):
    add_evidence(sweep_dir)
    evidence = load.load_evidence(sweep_dir)
    rows = load.load_points(sweep_dir)
    assert len(evidence) == len(rows)
    ev = evidence[("dpo-0", "dpo", "0", "beta=0.05", 100)]
    assert ev["gold"].shape == (16,) and ev["gold"].mean() == pytest.approx(
        next(r["gold_reward"] for r in rows if (r["run_id"], r["step"]) == ("dpo-0", 100))
    )
    s = analysis.summarize(rows, METHODS, COMPARISONS, evidence=evidence, n_boot=100)
    assert s["evidence"] == dict(n_prompts=16, with_evidence=len(rows), without_evidence=0, prompts_key="k1")
    area = s["per_method"]["dpo"]["area"]
    assert area["lo"] < area["est"] < area["hi"]  # prompt noise now widens the interval
    md = text.format_summary(s, METHODS)
    assert "over the 16 evaluation prompts" in md and "Every row had per-prompt evidence." in md
    # a row whose evidence is missing enters with fixed values, and the summary counts it
    del evidence[("dpo-0", "dpo", "0", "beta=0.05", 100)]
    s = analysis.summarize(rows, METHODS, COMPARISONS, evidence=evidence, n_boot=20)
    assert s["evidence"]["without_evidence"] == 1
    assert f"1 of {len(rows)} rows had no per-prompt evidence" in text.format_summary(s, METHODS)


def test_load_evidence_rejects_bad_lines_and_different_prompts(tmp_path):
    good = dict(
        run_id="r",
        method="dpo",
        setting="",
        seed=0,
        step=0,
        prompts_key="k",
        gold=[0.5, 0.6],
        kl=[0.0, 0.0],
        truncated=[0.0, 0.0],
    )
    (tmp_path / "a").mkdir()
    bad = dict(good, kl=[0.0])
    (tmp_path / "a" / "evidence.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError) as err:
        load.load_evidence(tmp_path)
    assert "evidence.jsonl:2: gold, kl, truncated have different lengths" in str(err.value)
    assert "\n" not in str(err.value)
    (tmp_path / "a" / "evidence.jsonl").write_text(json.dumps({k: v for k, v in good.items() if k != "gold"}) + "\n")
    with pytest.raises(ValueError, match=r"evidence\.jsonl:1: missing key\(s\) 'gold'"):
        load.load_evidence(tmp_path)
    (tmp_path / "a" / "evidence.jsonl").write_text(json.dumps(good) + "\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "evidence.jsonl").write_text(json.dumps(dict(good, run_id="s", prompts_key="other")) + "\n")
    with pytest.raises(ValueError, match="evaluated on different prompts") as err:
        load.load_evidence(tmp_path)
    assert "b/evidence.jsonl:1" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow  # renders the report's figures (seconds)
def test_compute_fields_add_a_second_panel(sweep_dir):
    rows = load.load_points(sweep_dir)
    assert not report_rows.has_compute(rows)
    for r in rows:
        r.update(
            compute_tokens_generated=100.0 * r["step"],
            compute_tokens_trained=50.0 * r["step"],
            compute_wall_s=0.1 * r["step"],
            truncated_frac=0.25,
        )
    assert report_rows.has_compute(rows) and report_rows.training_tokens(rows[1]) == 150.0 * rows[1]["step"]
    s = analysis.summarize(rows, METHODS, COMPARISONS, n_boot=20)
    fig = plots.frontier_figure(rows, METHODS, s)
    assert len(fig.axes) == 2 and fig.axes[1].get_xscale() == "log"
    assert "step-0 evaluations omitted" in fig.axes[1].get_xlabel()
    assert "| truncated |" in text.format_summary(s, METHODS) and "25.0%" in text.format_summary(s, METHODS)
    assert len(plots.frontier_figure(load.load_points(sweep_dir), METHODS, s).axes) == 1
    paths = make.make_report(sweep_dir, METHODS, COMPARISONS, rows=rows, n_boot=20, commit="x")
    assert "points_csv" in paths and "compute_tokens_trained" in paths["points_csv"].read_text().splitlines()[0]


def test_git_commit_falls_back_outside_a_checkout(tmp_path):
    assert make.git_commit(tmp_path) == "unknown"
    sha = make.git_commit()
    bare = sha.removesuffix("-dirty")  # -dirty: harness/, pipelines/ or conf/ have uncommitted changes
    assert sha == "unknown" or (4 <= len(bare) <= 40 and all(c in "0123456789abcdef" for c in bare))


def test_make_report_refuses_an_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="no result rows"):
        make.make_report(tmp_path, METHODS, COMPARISONS)


def test_ablation_panels_and_final_points(sweep_dir):
    rows = load.load_points(sweep_dir)
    panels = plots.ablation_panels(rows, METHODS)
    assert panels == [("ppo", "cliprange"), ("ppo", "kl_coef"), ("dpo", "beta"), ("ipo", "beta"), ("best_of_n", "N")]
    finals = report_rows.final_points(rows)
    assert len([r for r in finals if r["method"] == "best_of_n"]) == 12  # each N of each seed
    assert all(r["step"] == 250 for r in finals if r["method"] == "dpo")


@pytest.mark.slow  # a child Python process
def test_cli_prints_the_paths(sweep_dir):
    out = subprocess.run(
        [sys.executable, "-m", "harness.report", str(sweep_dir), "--title", "cli", "--n-boot", "30"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert out == [str(sweep_dir / "frontier.png"), str(sweep_dir / "summary.md")]


@pytest.mark.slow  # a W&B run (its service process)
def test_log_report_to_wandb_logs_table_scatter_and_image(sweep_dir):
    import wandb

    logged = []

    class FakeRun:  # records what a live run would receive
        def log(self, data):
            logged.append(data)

    rows = load.load_points(sweep_dir)
    wandb_log.log_report_to_wandb(sweep_dir, rows, FakeRun(), METHODS, COMPARISONS, title="synthetic")
    (data,) = logged
    assert set(data) == {"frontier/points", "frontier/scatter", "frontier/plot"}
    assert isinstance(data["frontier/points"], wandb.Table) and len(data["frontier/points"].data) == len(rows)
    assert isinstance(data["frontier/plot"], wandb.Image)
    assert (sweep_dir / "frontier.png").exists()


# ---------------------------------------------------------------------------------------------------------
# The notebook, headless
# ---------------------------------------------------------------------------------------------------------


def execute_notebook(sweep, tmp_path, monkeypatch):
    """Execute notebooks/frontier.ipynb against ``sweep`` in a kernel started by *this* interpreter
    (sys.executable), through a kernelspec written into tmp_path: the installed 'python3' spec runs whatever
    `python` is on PATH. Returns the executed notebook."""
    import nbclient
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (test)",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("FRONTIER_SWEEP_DIR", str(sweep))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    km = KernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    )

    path = ROOT / "notebooks" / "frontier.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code"), (
        "commit the notebook without outputs"
    )
    client = nbclient.NotebookClient(nb, km=km, timeout=120, resources={"metadata": {"path": str(path.parent)}})
    try:
        # cleanup_kc: stop the kernel client's channels and shut the kernel down here. nbclient leaves both running
        # for a kernel manager it was handed, and the client's __del__ then logs into pytest's closed stream at exit.
        client.execute(cleanup_kc=True)
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    return nb


@pytest.mark.slow
@pytest.mark.timeout(600)  # a kernel process; each cell may take 120 s
def test_notebook_runs_headless_on_a_sweep(sweep_dir, tmp_path, monkeypatch):
    add_evidence(sweep_dir)
    monkeypatch.setenv("FRONTIER_N_BOOT", "100")
    nb = execute_notebook(sweep_dir, tmp_path, monkeypatch)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "dpo" in text and "beta=0.05" in text
    assert f"per-prompt evidence for {len(load.load_points(sweep_dir))} evaluations" in text
    assert images >= 3  # frontier, beta ablation, clip ablation


# ---------------------------------------------------------------------------------------------------------
# Online vs offline: families pooled into one curve each
# ---------------------------------------------------------------------------------------------------------


def test_pool_methods_stacks_members_on_their_common_seeds():
    g = lambda v, m: (np.full((m, 3), v), np.full((m, 3), v / 10))  # noqa: E731  (gold, kl) of m points
    points = {"ppo": {0: g(0.1, 2), 1: g(0.2, 2)}, "rloo": {0: g(0.3, 1)}, "dpo": {0: g(0.5, 4)}}
    pooled = fs.pool_methods(points, ["ppo", "rloo", "grpo"])  # grpo absent: ignored
    assert list(pooled) == [0]  # seed 1 lacks rloo: a family runs whole seeds
    gold, kl = pooled[0]
    assert gold.shape == (3, 3) and gold[:, 0].tolist() == [0.1, 0.1, 0.3] and kl[2, 0] == pytest.approx(0.03)
    assert fs.pool_methods(points, ["grpo"]) == {}


FAMILY_SWEEP = {  # online methods clearly above offline ones everywhere
    "ppo": ({"kl_coef=0.02": 10.0, "kl_coef=0.1": 4.0}, _curve(0.45, 2.0)),
    "rloo": ({"beta=0.02": 9.0, "beta=0.1": 3.0}, _curve(0.44, 2.0)),
    "dpo": ({"beta=0.05": 10.0, "beta=1.0": 3.0}, _curve(0.25, 2.0)),
    "kto": ({"beta=0.1": 8.0}, _curve(0.22, 2.0)),
}


def test_online_vs_offline_verdict_follows_the_evidence(tmp_path):
    write_sweep(tmp_path, sweep=FAMILY_SWEEP, seeds=(0, 1), with_bon=False)
    add_evidence(tmp_path, noise=0.02)
    rows, evidence = load.load_points(tmp_path), load.load_evidence(tmp_path)
    s = analysis.summarize(rows, METHODS, COMPARISONS, evidence=evidence, n_boot=100)
    fam = s["families"]
    assert fam["members"] == {"online": ["ppo", "rloo"], "offline": ["dpo", "kto"]}
    assert fam["comparison"]["area"]["lo"] > 0  # 0.2 of reward apart: decided
    md = text.format_summary(s, METHODS)
    assert "## Online vs offline" in md and "Online methods lie above offline ones" in md

    # the same methods with the same curve: the interval must contain 0 and the summary must say it cannot decide
    same = {m: (settings, _curve(0.4, 2.0)) for m, (settings, _) in FAMILY_SWEEP.items()}
    root = tmp_path / "same"
    write_sweep(root, sweep=same, seeds=(0, 1), with_bon=False)
    add_evidence(root, noise=0.05)
    s = analysis.summarize(load.load_points(root), METHODS, COMPARISONS, evidence=load.load_evidence(root), n_boot=100)
    area = s["families"]["comparison"]["area"]
    assert area["lo"] < 0 < area["hi"]
    assert "evidence is too weak to decide" in text.format_summary(s, METHODS)


def test_no_family_section_for_dpo_against_ppo_alone(sweep_dir):
    s = analysis.summarize(
        load.load_points(sweep_dir), METHODS, COMPARISONS, n_boot=20
    )  # dpo, ipo, ppo: 3 members, 2 families
    assert s["families"]["members"]["online"] == ["ppo"]
    only_two = [r for r in load.load_points(sweep_dir) if r["method"] in ("dpo", "ppo")]
    s = analysis.summarize(only_two, METHODS, COMPARISONS, n_boot=20)
    assert s["families"] is None and "Online vs offline" not in text.format_summary(s, METHODS)


def test_two_runs_with_one_run_id_are_refused_not_joined_to_each_others_evidence(tmp_path):
    # PPO and PPO-GT at the same setting and step once shared a run id: their evidence must never be swapped
    write_sweep(
        tmp_path,
        sweep={"ppo": ({"kl_coef=0.05": 6.0}, _curve(0.4, 2.0)), "ppo_gt": ({"kl_coef=0.05": 6.0}, _curve(0.2, 2.0))},
        seeds=(0,),
        with_bon=False,
    )
    for path in tmp_path.rglob("points.jsonl"):  # every run called the same, as the old tracker did
        path.write_text(
            path.read_text()
            .replace('"run_id": "ppo_gt-1"', '"run_id": "x"')
            .replace('"run_id": "ppo-0"', '"run_id": "x"')
        )
    add_evidence(tmp_path)
    rows, evidence = load.load_points(tmp_path), load.load_evidence(tmp_path)
    for r in rows:  # method is in the key: each row joins its own evidence
        if r["method"] != "sft":
            assert evidence[evidence_key(r)]["gold"].mean() == pytest.approx(r["gold_reward"])
    # the same method, seed, setting and step in two files with different numbers: refused, both files named
    run = next(p for p in tmp_path.rglob("evidence.jsonl") if '"ppo"' in p.read_text())
    copy = tmp_path / "copy"
    copy.mkdir()
    lines = run.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["gold"] = [g + 0.1 for g in rec["gold"]]
    (copy / "evidence.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match="two runs share one run_id"):
        load.load_evidence(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# Registry-driven: a method the registry does not know, and no method named in harness/report
# ---------------------------------------------------------------------------------------------------------


def test_a_method_unknown_to_the_registry_is_shown_under_its_name_in_the_default_style(tmp_path):
    from matplotlib.colors import to_rgba

    from harness.methods import DEFAULT_STYLE

    assert "toy" not in METHODS
    write_sweep(
        tmp_path,
        sweep={"dpo": SWEEP["dpo"], "toy": ({"alpha=1": 9.0, "alpha=2": 5.0}, _curve(0.3, 2.0))},
        seeds=(0,),
        with_bon=False,
    )
    rows = load.load_points(tmp_path)
    assert report_rows.method_style("toy", METHODS) == DEFAULT_STYLE
    assert report_rows.ordered_methods(["toy", "dpo", "sft"], METHODS) == ["dpo", "sft", "toy"]  # known first

    paths = make.make_report(tmp_path, METHODS, COMPARISONS, n_boot=30, commit="x")
    md = paths["summary_md"].read_text()
    s = analysis.summarize(rows, METHODS, COMPARISONS, n_boot=30)
    toy = s["per_method"]["toy"]
    assert "| toy | 2 | 12 | " + text.fmt_ci(toy["area"]) in md and np.isfinite(toy["area"]["est"])
    assert "| toy | rl |" in md and "| toy | alpha=1 | 1 | 250 |" in md  # fitted with the RL law; its settings
    assert "toy (" in md.split("**Ordering**")[1].split("\n")[0]
    assert "ablations_png" in paths  # its knob is an ablation panel
    assert ("toy", "alpha") in plots.ablation_panels(rows, METHODS)

    ax = plots.plot_frontier(rows, METHODS, summary=s)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["DPO", "SFT", "toy"]  # the registry's labels, then its own name
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "toy"]
    assert to_rgba(line.get_color()) == to_rgba(DEFAULT_STYLE[0])
    (toy_points,) = [c for c in ax.collections if len(c.get_offsets()) == 12]  # its scatter: 12 evaluations
    assert np.allclose(toy_points.get_facecolor()[0][:3], to_rgba(DEFAULT_STYLE[0])[:3])


def _report_sources():
    return sorted((ROOT / "harness" / "report").glob("*.py"))


def test_no_method_is_named_under_harness_report():
    """The report reads every method from the records its caller passes: no string in harness/report is a method's
    name (nor quotes one)."""
    import ast

    names = set(METHODS)
    found = []
    for path in _report_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                value = node.value
                if value.strip() in names or any(f'"{n}"' in value or f"'{n}'" in value for n in names):
                    found.append(f"{path.name}:{node.lineno}: {value[:40]!r}")
    assert not found, found


def test_report_and_eval_keep_to_their_layers():
    """harness/report imports neither the composition root, the pipelines nor preflight (its __main__ shim calls the
    composition root's command); harness/eval imports neither runs nor the report."""
    import ast

    def imports(path):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                yield from (a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                yield node.module

    rules = {"report": ("harness.app", "pipelines", "harness.preflight"), "eval": ("harness.runs", "harness.report")}
    bad = []
    for package, banned in rules.items():
        for path in sorted((ROOT / "harness" / package).glob("*.py")):
            if (package, path.name) == ("report", "__main__.py"):
                continue
            bad += [f"{package}/{path.name}: {m}" for m in imports(path) if m.startswith(banned)]
    assert not bad, bad


def test_the_cost_table_shows_each_methods_models_seconds_per_step_and_peak_memory():
    def costed(method, run_id, step, step_s, peak, held):
        return {
            **_row(method, "", 0, step, 1.0, 0.5, run_id),
            "step_s": step_s,
            "peak_memory_mb": peak,
            "peak_memory_kind": "resident",
            "models_held": held,
            "model_parameters": held * 134_515_008,
        }

    rows = [
        costed("ppo", "p0", 0, None, 900.0, 4),
        costed("ppo", "p0", 2, 3.0, 2100.0, 4),
        costed("ppo", "p1", 2, 5.0, 2300.0, 4),
        costed("dpo", "d0", 4, 1.5, 1200.0, 2),
    ]
    table = text.cost_table(rows, METHODS)
    lines = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    ppo, dpo = lines[METHODS["ppo"].display], lines[METHODS["dpo"].display]
    assert ppo.split(" | ")[1:] == ["2", "4", "538.1M", "4.000", "2300 |"]  # median of 3 and 5 s; the largest peak
    assert dpo.split(" | ")[1:] == ["1", "2", "269.0M", "1.500", "1200 |"]
    assert "resident memory" in table
    older = [{k: v for k, v in r.items() if k not in ("models_held", "step_s")} for r in rows]
    assert text.cost_table(older, METHODS) == ""  # rows made before the cost fields: no table, no error
