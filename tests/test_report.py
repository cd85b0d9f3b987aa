"""The frontier report: envelope / area / fit / CI math by hand, the written files, the CLI, W&B logging and
the notebook, all on synthetic sweeps written into tmp_path."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness import report

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------
# A synthetic sweep: several methods and knobs, 2 seeds, run folders at different depths
# ---------------------------------------------------------------------------------------------------------

def _row(method, setting, seed, step, kl, reward, run_id, proxy=None):
    return dict(method=method, setting=setting, seed=seed, step=step, kl=float(kl), kl_sem=0.01,
                kl_sample=float(kl) * 1.02, gold_reward=float(reward), gold_reward_sem=0.01,
                proxy_reward=proxy, response_tokens=24.0, wall_s=1.0 + step, run_id=run_id)


def _curve(gain, scale):
    return lambda kl: gain * (1.0 - math.exp(-kl / scale))


# method -> (settings with the KL each run reaches, reward gain curve); DPO's curve is above PPO's everywhere
SWEEP = {
    "dpo": ({"beta=0.05": 12.0, "beta=0.1": 8.0, "beta=1.0": 3.0}, _curve(0.45, 3.0)),
    "ipo": ({"beta=0.1": 7.0, "beta=0.5": 4.0}, _curve(0.40, 3.0)),
    "ppo": ({f"kl_coef={k},cliprange={c}": m for (k, m) in (("0.02", 14.0), ("0.05", 9.0), ("0.1", 5.0))
             for c in ("0.1", "0.2")}, _curve(0.38, 4.0)),
    "preferred_ft": ({"": 6.0}, _curve(0.25, 3.0)),
}


def write_sweep(root: Path, sweep=SWEEP, seeds=(0, 1), with_bon=True, with_sft=True) -> list[dict]:
    """Write run folders (some nested two levels deeper) with a points.jsonl each; return all rows."""
    rows_all, job = [], 0
    for seed in seeds:
        base = 0.5 + 0.01 * seed                      # the evaluator is deterministic per seed: same π_SFT score
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
                lines.insert(2, "")                   # blank lines are allowed
                (folder / "points.jsonl").write_text("\n".join(lines) + "\n")
                rows_all += rows
                job += 1
        if with_bon:
            folder = root / f"bon_seed{seed}"
            folder.mkdir()
            rows = [_row("best_of_n", f"N={n}", seed, 0, math.log(n) - (n - 1) / n,
                         base + 0.3 * (1 - math.exp(-(math.log(n) - (n - 1) / n))), f"bon-{seed}", proxy=0.1 * n)
                    for n in (1, 2, 4, 8, 16, 64)]
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
    rows = report.load_points(sweep_dir)
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
        report.load_points(tmp_path)
    msg = str(err.value)
    assert "'gold_reward'" in msg and "points.jsonl:3" in msg and "\n" not in msg


def test_load_points_rejects_bad_json_with_file_and_line(tmp_path):
    (tmp_path / "points.jsonl").write_text('{"method": "dpo"\n')
    with pytest.raises(ValueError, match=r"points\.jsonl:1: bad JSON"):
        report.load_points(tmp_path)


def test_load_points_keeps_a_verbatim_duplicate_once(tmp_path):
    row = json.dumps(_row("dpo", "beta=0.1", 0, 0, 0.0, 0.5, "r"))
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "points.jsonl").write_text(row + "\n")
    assert len(report.load_points(tmp_path)) == 1


# ---------------------------------------------------------------------------------------------------------
# Envelope, interpolation, area
# ---------------------------------------------------------------------------------------------------------

def test_upper_envelope_drops_dominated_points():
    kl = [0.0, 1.0, 1.0, 2.0, 3.0, 2.5, 4.0, 0.5]
    reward = [0.5, 0.6, 0.7, 0.65, 0.9, 0.9, 0.85, 0.5]
    # (1, 0.6) same KL lower reward; (2, 0.65) below (1, 0.7); (3, 0.9) same reward more KL than (2.5, 0.9);
    # (4, 0.85) more KL less reward; (0.5, 0.5) more KL same reward as (0, 0.5)
    kl_env, r_env = report.upper_envelope(kl, reward)
    np.testing.assert_allclose(kl_env, [0.0, 1.0, 2.5])
    np.testing.assert_allclose(r_env, [0.5, 0.7, 0.9])


def test_upper_envelope_ignores_nan_and_handles_empty():
    kl_env, r_env = report.upper_envelope([0.0, np.nan, 1.0], [0.5, 0.9, np.nan])
    np.testing.assert_allclose(kl_env, [0.0])
    assert report.upper_envelope([], [])[0].size == 0


def test_envelope_at_interpolates_and_is_nan_outside():
    kl_env, r_env = np.array([0.0, 2.0, 4.0]), np.array([0.5, 0.7, 0.8])
    assert report.envelope_at(kl_env, r_env, 1.0) == pytest.approx(0.6)
    assert report.envelope_at(kl_env, r_env, 3.0) == pytest.approx(0.75)
    assert report.envelope_at(kl_env, r_env, 4.0) == pytest.approx(0.8)
    out = report.envelope_at(kl_env, r_env, np.array([-0.1, 0.0, 4.5]))
    assert np.isnan(out[0]) and out[1] == pytest.approx(0.5) and np.isnan(out[2])


def test_envelope_area_by_hand():
    # a straight line r = 0.5 + 0.1 kl, given by three vertices: area over [1, 3] = 2 * (0.6 + 0.8) / 2 = 1.4
    kl_env, r_env = np.array([0.0, 2.0, 4.0]), np.array([0.5, 0.7, 0.9])
    assert report.envelope_area(kl_env, r_env, 1.0, 3.0) == pytest.approx(1.4)
    # a kinked envelope over its whole range: 2*(0.5+0.7)/2 + 2*(0.7+0.8)/2 = 1.2 + 1.5
    assert report.envelope_area([0.0, 2.0, 4.0], [0.5, 0.7, 0.8], 0.0, 4.0) == pytest.approx(2.7)
    assert report.envelope_area(kl_env, r_env, 2.0, 2.0) == 0.0
    assert math.isnan(report.envelope_area(kl_env, r_env, 0.0, 5.0))     # not covered: no extrapolation
    assert math.isnan(report.envelope_area(kl_env, r_env, -1.0, 1.0))


# ---------------------------------------------------------------------------------------------------------
# Gao fits and confidence intervals
# ---------------------------------------------------------------------------------------------------------

def test_fit_gao_recovers_rl_law_on_exact_data():
    kl = np.array([0.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
    d = np.sqrt(kl)
    reward = 0.4 + np.where(d > 0, d * (0.3 - 0.12 * np.log(np.where(d > 0, d, 1))), 0.0)
    fit = report.fit_gao(kl, reward, "rl")
    assert fit["alpha"] == pytest.approx(0.3, abs=1e-9) and fit["beta"] == pytest.approx(0.12, abs=1e-9)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-9) and fit["n"] == 8
    assert fit["baseline"] == pytest.approx(0.4)


def test_fit_gao_recovers_bon_law_and_uses_given_baseline():
    n = np.array([2, 4, 8, 16, 64])
    kl = np.log(n) - (n - 1) / n
    d = np.sqrt(kl)
    reward = 0.55 + d * (0.25 - 0.05 * d)
    fit = report.fit_gao(kl, reward, "bon", baseline=0.55)          # no KL=0 point among them
    assert fit["alpha"] == pytest.approx(0.25, abs=1e-9) and fit["beta"] == pytest.approx(0.05, abs=1e-9)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-9)
    no_baseline = report.fit_gao(kl, reward, "bon")                  # no KL≈0 point: R0 = 0, a worse fit
    assert no_baseline["baseline"] == 0.0 and no_baseline["r2"] < 0.999


def test_fit_gao_needs_two_points_away_from_zero():
    fit = report.fit_gao([0.0, 1.0], [0.5, 0.6], "rl")
    assert math.isnan(fit["alpha"]) and fit["n"] == 2
    with pytest.raises(ValueError):
        report.fit_gao([1.0], [0.5], "ppo")


def test_mean_ci95_by_hand():
    mean, hw = report.mean_ci95([1.0, 2.0, 3.0])         # s = 1, t(2) = 4.303
    assert mean == 2.0 and hw == pytest.approx(4.303 / math.sqrt(3))
    mean, hw = report.mean_ci95([0.0, 2.0])              # s = sqrt(2), t(1) = 12.706
    assert hw == pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2))
    mean, hw = report.mean_ci95(list(range(41)))          # df 40 > 30: 1.96
    assert hw == pytest.approx(1.96 * np.std(range(41), ddof=1) / math.sqrt(41))
    assert report.mean_ci95([0.7, float("nan")])[0] == 0.7 and math.isnan(report.mean_ci95([0.7])[1])
    assert all(math.isnan(v) for v in report.mean_ci95([]))


# ---------------------------------------------------------------------------------------------------------
# Summary rules
# ---------------------------------------------------------------------------------------------------------

def test_common_range_excludes_short_best_of_n_and_sft():
    envs = {"dpo": {0: (np.array([0.0, 6.0]), np.array([0.5, 0.9]))},
            "ppo": {0: (np.array([0.0, 9.0]), np.array([0.5, 0.8])), 1: (np.array([0.0, 5.0]), np.array([0.5, 0.7]))},
            "best_of_n": {0: (np.array([0.0, 1.83]), np.array([0.5, 0.6]))},
            "sft": {0: (np.array([0.0]), np.array([0.5]))}}
    rng = report.common_kl_range(envs)
    assert (rng["lo"], rng["hi"], rng["limited_by"]) == (0.0, 5.0, "ppo")
    assert set(rng["excluded"]) == {"sft", "best_of_n"}
    envs["best_of_n"][0] = (np.array([0.0, 3.17]), np.array([0.5, 0.6]))    # N up to 64: sets the range
    rng = report.common_kl_range(envs)
    assert rng["hi"] == pytest.approx(3.17) and rng["limited_by"] == "best_of_n"


def test_comparison_sentence_names_where_ppo_is_higher():
    dpo = (np.array([0.0, 4.0, 8.0]), np.array([0.5, 0.8, 0.85]))
    ppo = (np.array([0.0, 4.0, 10.0]), np.array([0.5, 0.7, 1.0]))
    cmp_ = report.compare_envelopes(*dpo, *ppo)
    text = report.comparison_sentence(cmp_, "ppo")
    assert text.startswith("DPO does not lie above PPO everywhere: PPO is higher on [")
    (a, b), = cmp_["b_higher"]
    assert 6.66 < a < 6.9 and b == pytest.approx(8.0)     # the lines cross at KL = 4 + 0.1 / 0.0375 = 6.67
    above = report.comparison_sentence(report.compare_envelopes(*dpo, dpo[0], dpo[1] - 0.1), "ppo")
    assert above == "DPO lies above PPO at every KL in [0.00, 8.00] nats."
    assert "no PPO rows" in report.comparison_sentence({"missing": ["ppo"]}, "ppo")


# ---------------------------------------------------------------------------------------------------------
# The written report
# ---------------------------------------------------------------------------------------------------------

def test_make_report_writes_csv_plot_and_summary(sweep_dir):
    paths = report.make_report(sweep_dir, title="synthetic reviews")
    assert {"points_csv", "frontier_png", "summary_md", "ablations_png"} <= set(paths)
    for p in paths.values():
        assert p.parent == sweep_dir and p.stat().st_size > 0
    csv_lines = paths["points_csv"].read_text().strip().splitlines()
    assert csv_lines[0].split(",")[:4] == ["method", "setting", "seed", "step"]
    assert len(csv_lines) - 1 == len(report.load_points(sweep_dir))
    assert paths["frontier_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    md = paths["summary_md"].read_text()
    for label in ("PPO (learned RM)", "DPO", "IPO", "Preferred-FT", "Best of N", "SFT"):
        assert f"| {label} |" in md
    # Best of N (N up to 64) reaches log 64 - 63/64 = 3.17 nats >= 2, so it sets the common range
    assert "Common KL range for areas: [0.00, 3.17] nats (the upper end is where the envelope of Best of N" in md
    assert "does not set the range: the reference policy" in md                  # SFT never does
    order = md.split("**Ordering** by area under the envelope (mean over seeds): ")[1].split("\n")[0]
    assert order.index("DPO") < order.index("IPO") < order.index("PPO (learned RM)") < order.index("Preferred-FT")
    assert "DPO lies above PPO at every KL in [0.00, 12.00] nats" in md           # DPO's runs end at 12
    assert " ± " in md and "—" in md and "nan" not in md.lower()
    assert "| DPO | rl |" in md and "| Best of N | bon |" in md


def test_best_of_n_sets_or_leaves_the_range_by_the_2_nat_rule(tmp_path):
    rows = write_sweep(tmp_path / "s", seeds=(0,), with_sft=False)
    short_bon = [r for r in rows if r["method"] != "best_of_n" or float(r["setting"][2:]) <= 16]
    s = report.summarize(short_bon)                       # N <= 16: 1.83 nats < 2, left out
    assert s["range"]["hi"] == pytest.approx(6.0) and "best_of_n" in s["range"]["excluded"]
    assert all(math.isnan(a) for a in s["per_method"]["best_of_n"]["area"])
    s = report.summarize(rows)                            # N up to 64: 3.17 nats, it sets the range
    assert s["range"]["hi"] == pytest.approx(math.log(64) - 63 / 64) and s["range"]["limited_by"] == "best_of_n"


def test_single_seed_summary_has_no_ci_and_reports_missing_ppo(tmp_path):
    sweep = {k: v for k, v in SWEEP.items() if k != "ppo"}
    write_sweep(tmp_path, sweep=sweep, seeds=(3,), with_bon=False)
    md = report.make_report(tmp_path)["summary_md"].read_text()
    assert "DPO vs PPO: not compared, this sweep has no PPO rows." in md
    assert " ± " not in md and "1 seed." in md


def test_make_report_refuses_an_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="no result rows"):
        report.make_report(tmp_path)


def test_ablation_panels_and_final_points(sweep_dir):
    rows = report.load_points(sweep_dir)
    panels = report.ablation_panels(rows)
    assert panels == [("ppo", "cliprange"), ("ppo", "kl_coef"), ("dpo", "beta"), ("ipo", "beta"),
                      ("best_of_n", "N")]
    finals = report.final_points(rows)
    assert len([r for r in finals if r["method"] == "best_of_n"]) == 12          # each N of each seed
    assert all(r["step"] == 250 for r in finals if r["method"] == "dpo")


def test_cli_prints_the_paths(sweep_dir):
    out = subprocess.run([sys.executable, "-m", "harness.report", str(sweep_dir), "--title", "cli"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out == [str(sweep_dir / "frontier.png"), str(sweep_dir / "summary.md")]


def test_log_report_to_wandb_logs_table_scatter_and_image(sweep_dir):
    import wandb
    logged = []

    class FakeRun:                                        # records what a live run would receive
        def log(self, data):
            logged.append(data)

    rows = report.load_points(sweep_dir)
    report.log_report_to_wandb(sweep_dir, rows, FakeRun(), title="synthetic")
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
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (test)", "language": "python"}))
    monkeypatch.setenv("FRONTIER_SWEEP_DIR", str(sweep))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    km = KernelManager(kernel_name="python3",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]))

    path = ROOT / "notebooks" / "frontier.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    nbclient.NotebookClient(nb, km=km, timeout=120,
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def test_notebook_runs_headless_on_a_sweep(sweep_dir, tmp_path, monkeypatch):
    nb = execute_notebook(sweep_dir, tmp_path, monkeypatch)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "dpo" in text and "beta=0.05" in text
    assert images >= 3                                    # frontier, beta ablation, clip ablation
