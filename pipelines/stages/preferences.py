"""Stage 2: the preference set. 4 completions per training prompt from π_SFT, scored by the gold reward, all 6 pairs
per prompt; the preferred one is the higher gold score (or a Bradley–Terry draw). Cached; shared by the reward model,
DPO and every baseline, so the two sides of the comparison learn from the very same pairs.

A completion cut off at ``max_new_tokens`` enters the pairs as its text, like any other: the gold reward scores its
text, TRL's reward and DPO trainers append EOS to it, and PPO scores its own truncated rollouts with EOS appended too
(``pipelines.ppo.RewardModelScore``); the pairs record which completions were cut (``*_truncated``).

Seeds: ``stage_seed`` (``task.seed``, or the run's seed with ``stages_per_seed=true``) seeds the sampling, the
Bradley–Terry labels and the split, and is part of the cache key.

Your own pairs (``preferences.source=file``, ``harness.data.preference_file``): the file's pairs, checked, rendered to text
and split by prompt during the preflight, are stored here in the same format, so every method reads them unchanged.
The set's identity is the file's content hash, its layout and rendering, the split's knobs, π_SFT and the gold
reward: editing the file rebuilds the set and everything built on it. The gold reward scores each pair (columns
``*_score``; how often it agrees with the file's labels is a fact of the set), and π_SFT is still sampled on the
training prompts, for the reward model's score normalisation (PPO whitens r_φ against π_SFT's samples)."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.config import (
    HarnessConfig,
    PreferencesConfig,
    identity_of,
    stage_fingerprint,
)
from harness.lm.sampling import response_texts, sample
from harness.runs import preempt
from harness.runs.cache import Artifact, build_or_load, key_of
from harness.runs.context import RunContext
from pipelines.stages.sft import load_sft, sft_key

log = logging.getLogger("harness.preferences")


def make_pairs(scores: np.ndarray, cfg: PreferencesConfig, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """All pairs per prompt as (prompt, chosen, rejected) indices into ``scores`` (n_prompts, k).

    deterministic: chosen = higher gold score; ties and pairs closer than ``min_margin`` are dropped.
    bradley_terry: a after the same filter, a is chosen over b with probability σ((r_a − r_b)/τ), so labels are
    noisy the way human labels are, and more so for close pairs.
    """
    out = []
    for p in range(scores.shape[0]):
        for a, b in itertools.combinations(range(scores.shape[1]), 2):
            gap = scores[p, a] - scores[p, b]
            if gap == 0 or abs(gap) < cfg.min_margin:
                continue
            if cfg.labels == "bradley_terry":
                a_wins = rng.random() < 1.0 / (1.0 + np.exp(-gap / cfg.bt_temperature))
            else:
                a_wins = gap > 0
            out.append((p, a, b) if a_wins else (p, b, a))
    return out


def preferences_identity(hc: HarnessConfig) -> dict:
    t = hc.task
    if hc.preferences.source == "file":
        from harness.data.caches import preference_file

        # The file's content, not its path (moving it does not rebuild); the split's seed and π_SFT's samples.
        knobs = {k: v for k, v in identity_of(hc.preferences).items() if k not in ("path", "eval_prompts")}
        return stage_fingerprint(
            "preferences",
            sft_key(hc),
            preference_file(hc).identity(),
            knobs,
            {"n_train_prompts": t.n_train_prompts, "seed": t.seed},
            hc.gold,
            {"stage_seed": hc.stage_seed},
        )
    prompts = {k: getattr(t, k) for k in ("n_train_prompts", "prompt_min_tokens", "prompt_max_tokens", "seed")}
    return stage_fingerprint(
        "preferences", sft_key(hc), prompts, hc.preferences, hc.gold, {"stage_seed": hc.stage_seed}
    )


def preferences_key(hc: HarnessConfig) -> str:
    """The preference set's cache key, computed without building it (nor π_SFT)."""
    return key_of(preferences_identity(hc))


def sample_sft(ctx: RunContext, prompts: list[str]) -> tuple[list[str], list[bool]]:
    """``preferences.samples_per_prompt`` completions of π_SFT per prompt (consecutive), and which were cut off at
    ``max_new_tokens``. Not under ``torch.no_grad`` as a whole: ``load_sft`` may train π_SFT first (the preference
    set asked for on an empty cache), and ``sample`` is no-grad itself."""
    cfg = ctx.cfg.preferences
    policy, tok, _ = load_sft(ctx)
    k = cfg.samples_per_prompt
    gen = torch.Generator(device=ctx.device).manual_seed(ctx.cfg.stage_seed)
    per_batch = max(1, cfg.batch_size // k)
    completions: list[str] = []
    truncated: list[bool] = []
    for i in tqdm(range(0, len(prompts), per_batch), desc="preferences: sampling π_SFT", unit="batch"):
        s = sample(policy, tok, prompts[i : i + per_batch], k, cfg.max_new_tokens, cfg.temperature, generator=gen)
        completions += response_texts(tok, s)
        truncated += (~s.ended).tolist()
        # A safe point: pre-empted (harness.runs.preempt), the build stops here, keeping nothing; its rerun samples
        # again from the start (seeded: the same samples). Sampling, unlike π_SFT's training, is not resumed.
        preempt.stop_if_requested()
    return completions, truncated


def _build_from_file(ctx: RunContext, out: Path) -> dict:
    """The file's pairs (checked, rendered, split by the preflight), scored by the gold reward, in the stored format;
    π_SFT's samples on the training prompts beside them."""
    from datasets import Dataset, DatasetDict

    from harness.data.caches import preference_file

    pf = preference_file(ctx.cfg)
    splits = {}
    agree = []
    for name in ("train", "test"):
        d = pf.split(name)
        chosen = np.asarray(ctx.gold([p + c for p, c in zip(d["prompt"], d["chosen"])]), dtype=float)
        rejected = np.asarray(ctx.gold([p + r for p, r in zip(d["prompt"], d["rejected"])]), dtype=float)
        agree += (chosen > rejected).tolist()
        splits[name] = Dataset.from_dict({**d, "chosen_score": chosen.tolist(), "rejected_score": rejected.tolist()})
    DatasetDict(splits).save_to_disk(str(out / "pairs"))
    prompts = pf.train_prompts[: ctx.cfg.task.n_train_prompts]  # PPO's rollout prompts (checks.with_file_prompts)
    completions, truncated = sample_sft(ctx, prompts)
    k = ctx.cfg.preferences.samples_per_prompt
    texts = [prompts[i // k] + c for i, c in enumerate(completions)]
    gold = np.asarray(ctx.gold(texts), dtype=float)
    Dataset.from_dict({"text": texts, "gold": gold.tolist()}).save_to_disk(str(out / "sft_samples"))
    return {
        "source": "file",
        "file": pf.path,
        "file_sha256": pf.sha256,
        "layout": pf.layout,
        "rendering": pf.rendering,
        "pairs_train": len(splits["train"]),
        "pairs_test": len(splits["test"]),
        "prompts": len(pf.train_prompts) + len(pf.heldout_prompts),
        "heldout_prompts": len(pf.heldout_prompts),
        "label_agreement_with_gold": float(np.mean(agree)),
        "gold_mean": float(gold.mean()),
        "gold_std": float(gold.std()),
        "truncated_frac": float(np.mean(truncated)),
        "stage_seed": ctx.cfg.stage_seed,
    }


def _build(ctx: RunContext, out: Path) -> dict:
    from datasets import Dataset, DatasetDict

    cfg = ctx.cfg.preferences
    if cfg.source == "file":
        return _build_from_file(ctx, out)
    prompts = ctx.task.train_prompts
    k = cfg.samples_per_prompt
    completions, truncated = sample_sft(ctx, prompts)
    texts = [prompts[i // k] + c for i, c in enumerate(completions)]
    scores = np.asarray(ctx.gold(texts)).reshape(len(prompts), k)
    cut = np.array(truncated).reshape(len(prompts), k)
    rng = np.random.default_rng(ctx.cfg.stage_seed)
    pairs = make_pairs(scores, cfg, rng)
    comp = np.array(completions, dtype=object).reshape(len(prompts), k)
    # Split by prompt, so the validation pairs (reward-model accuracy) share no prompt with the training pairs.
    # Held-out prompts are drawn among those that gave a pair, so that neither split is empty when ties are common.
    with_pairs = np.array(sorted({p for p, _, _ in pairs}), dtype=int)
    n_held = max(1, int(round(cfg.eval_fraction * len(with_pairs)))) if len(with_pairs) > 1 else 0
    held = set(rng.permutation(with_pairs)[:n_held].tolist())
    names = ("prompt", "chosen", "rejected", "chosen_score", "rejected_score", "chosen_truncated", "rejected_truncated")
    cols = {split: {n: [] for n in names} for split in ("train", "test")}
    for p, c, r in pairs:
        d = cols["test" if p in held else "train"]
        d["prompt"].append(prompts[p])
        d["chosen"].append(comp[p, c])
        d["rejected"].append(comp[p, r])
        d["chosen_score"].append(float(scores[p, c]))
        d["rejected_score"].append(float(scores[p, r]))
        d["chosen_truncated"].append(bool(cut[p, c]))
        d["rejected_truncated"].append(bool(cut[p, r]))
    DatasetDict({k2: Dataset.from_dict(v) for k2, v in cols.items()}).save_to_disk(str(out / "pairs"))
    # π_SFT samples on the training prompts with their gold scores: the reward model normalises against these.
    Dataset.from_dict({"text": texts, "gold": scores.reshape(-1).tolist()}).save_to_disk(str(out / "sft_samples"))
    n_train, n_test = len(cols["train"]["prompt"]), len(cols["test"]["prompt"])
    correct = np.mean([scores[p, c] > scores[p, r] for p, c, r in pairs]) if pairs else float("nan")
    return {
        "pairs_train": n_train,
        "pairs_test": n_test,
        "prompts": len(prompts),
        "gold_mean": float(scores.mean()),
        "gold_std": float(scores.std()),
        "label_agreement_with_gold": float(correct),
        "truncated_frac": float(cut.mean()),
        "stage_seed": ctx.cfg.stage_seed,
    }


PARTS = ("pairs", "sft_samples")  # the set's two datasets (save_to_disk folders)


def stored_set_problem(path: Path) -> str | None:
    """What makes a cached preference set unusable: one of its datasets that does not load (a cut Arrow file, a
    missing split, a dataset_dict.json that does not parse); None when both load. Loading reads every record batch
    (Arrow checks their lengths), a fraction of a second for the sets here."""
    from datasets import load_from_disk

    for part in PARTS:
        try:
            load_from_disk(str(path / part))
        except Exception as e:  # noqa: BLE001 - whatever datasets or Arrow raise, the set cannot be used
            return f"{part} does not load: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
    return None


def ensure_preferences(ctx: RunContext) -> Artifact:
    art = build_or_load(
        ctx.cache_root,
        "preferences",
        preferences_identity(ctx.cfg),
        lambda out: _build(ctx, out),
        check=stored_set_problem,
    )
    log.info("preference set %s: %s", "reused from cache" if art.reused else "built", art.path)
    return art


def load_pairs(art: Artifact):
    from datasets import load_from_disk

    return load_from_disk(str(art.path / "pairs"))


def run(ctx: RunContext) -> dict:
    art = ensure_preferences(ctx)
    facts = art.manifest()["facts"]
    print(f"preference set: {art.path}  ({'reused' if art.reused else 'built'})")
    if facts.get("source") == "file":
        print(
            f"from {facts['file']} ({facts['layout']}, sha256 {facts['file_sha256'][:12]}, rendering {facts['rendering']})"
        )
    print(
        f"pairs: {facts['pairs_train']} train + {facts['pairs_test']} validation from {facts['prompts']} prompts; "
        f"chosen outscores rejected on gold in {100 * facts['label_agreement_with_gold']:.1f}% of pairs; "
        f"{100 * facts['truncated_frac']:.1f}% of π_SFT's completions reached max_new_tokens without EOS"
    )
    return {**facts, "path": str(art.path), "reused": art.reused}
