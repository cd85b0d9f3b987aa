"""Multi-process training (harness/lm/distributed.py): PPO under ``accelerate launch`` with 2 CPU processes (gloo) writes
what a single-process run writes, once, and finishes (a hang fails the test by its timeout); and the all-reduced batch
statistics, whitening and gradients of 2 processes equal those of one process on the concatenated data."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
# A tiny budget: 3 updates of 8 episodes (4 per process), a checkpoint after update 2 (its collectives too).
TINY = [
    "pipeline=ppo",
    "experiment=tiny_debug",
    "pipeline.updates=3",
    "pipeline.batch_size=8",
    "pipeline.max_new_tokens=8",
    "pipeline.checkpoint_every=2",
    "eval.every=2",
    "threads=1",
    "device=cpu",
    "logger.wandb_mode=disabled",
]
HANG_TIMEOUT_S = 300  # the run takes ~20-80 s here depending on the machine's load; beyond this it has hung


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.timeout(HANG_TIMEOUT_S + 300)  # the child's own timeout first, then the in-process run
def test_ppo_under_accelerate_launch_with_two_processes(tmp_path):
    from transformers import AutoModelForCausalLM

    from harness.app.jobs import run_job
    from tests.conftest import compose

    cache, two = tmp_path / "cache", tmp_path / "two"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(ROOT),
    }
    # accelerate's own launcher; on a machine without GPUs only its torchrun path (--multi_gpu) starts several
    # processes (--cpu without an MPI hostfile starts one). device=cpu makes the group gloo.
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
        "-m",
        "harness",
        *TINY,
        f"cache_dir={cache}",
        f"hydra.run.dir={two}",
    ]
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:  # the process group is killed with it
        pytest.fail(
            f"2-process PPO did not finish in {HANG_TIMEOUT_S} s (a hang?); output tail:\n{(e.stdout or b'')[-3000:]}"
        )
    assert done.returncode == 0, done.stderr[-4000:]

    # The stages were built by both processes together (their trainers data-parallel); one process now reuses them.
    one = tmp_path / "one"
    run_job(compose([*TINY, f"cache_dir={cache}"]), one)

    rows, rows_one = lines(two / "points.jsonl"), lines(one / "points.jsonl")
    assert [r["step"] for r in rows] == [r["step"] for r in rows_one] == [0, 2, 3]  # each row once, by the main process
    assert [set(r) for r in rows] == [set(r) for r in rows_one]
    assert all(math.isfinite(r["kl"]) and 0 <= r["gold_reward"] <= 1 for r in rows)
    assert len(lines(two / "evidence.jsonl")) == len(rows)
    updates, updates_one = lines(two / "updates.jsonl"), lines(one / "updates.jsonl")
    assert [u["update"] for u in updates] == [1, 2, 3]
    assert [set(u) for u in updates] == [set(u) for u in updates_one]
    for u in updates:  # the logged numbers are the whole batch's: its mean length × 8 episodes = all tokens sampled
        assert u["compute/tokens_generated"] == round(u["rewards/response_tokens"] * 8)
        assert all(
            math.isfinite(u[k])
            for k in ("objective/policy_loss", "critic/value_loss", "objective/kl", "rewards/scores")
        )
    assert (two / "done.json").exists() and not (two / "checkpoint").exists()

    (sft,) = [p for p in (cache / "sft").iterdir() if (p / "artifact.json").exists()]
    start = AutoModelForCausalLM.from_pretrained(str(sft))
    trained = AutoModelForCausalLM.from_pretrained(str(two / "policy"))
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values()))


# --------------------------------------------------------------------------- the reductions, on a real 2-process group
def _halves(seed: int = 0):
    """Two shares of one batch with different response lengths (T), and their concatenation padded to the longer."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for B, T in ((3, 5), (3, 7)):
        mask = (torch.arange(T) < torch.randint(1, T + 1, (B, 1), generator=g)).float()
        parts.append((torch.randn(B, T, generator=g) * mask, torch.randn(B, T, generator=g) * mask, mask))
    T = max(p[0].shape[1] for p in parts)
    pad = lambda x: torch.nn.functional.pad(x, (0, T - x.shape[1]))  # noqa: E731
    whole = tuple(torch.cat([pad(p[i]) for p in parts]) for i in range(3))
    return parts, whole


def _worker(rank: int, store: str) -> None:
    import torch.distributed as dist

    from harness.fields import ConfigError
    from harness.lm import distributed as D
    from pipelines import losses as L

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        parts, (x_all, y_all, m_all) = _halves()
        x, y, m = parts[rank]
        total = D.all_reduce_sum
        close = lambda a, b: torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)  # noqa: E731

        # whitening over the whole batch: this share is whitened exactly as its rows are in the whole batch
        rows = slice(0, 3) if rank == 0 else slice(3, 6)
        for shift in (True, False):
            close(
                L.masked_whiten(x, m, shift_mean=shift, total=total),
                L.masked_whiten(x_all, m_all, shift_mean=shift)[rows, : x.shape[1]],
            )
        close(L.masked_mean(x, m, total=total), L.masked_mean(x_all, m_all))
        close(L.masked_var(x, m, total=total), L.masked_var(x_all, m_all))
        close(L.explained_variance(x, y, m, total=total), L.explained_variance(x_all, y_all, m_all))
        means = D.batch_means({"kl": x.sum(-1), "len": m.sum(-1)})
        assert means == pytest.approx({"kl": float(x_all.sum(-1).mean()), "len": float(m_all.sum(-1).mean())}, rel=1e-6)
        close(D.all_gather(x.sum(-1)), x_all.sum(-1))
        assert D.process_means({"loss": float(rank)}) == {"loss": 0.5}

        # averaged gradients of the per-share mean losses = the gradient of the whole batch's mean loss (equal shares)
        torch.manual_seed(0)  # the same initial weights on both processes
        model = torch.nn.Linear(1, 1)
        whole = torch.nn.Linear(1, 1)
        whole.load_state_dict(model.state_dict())
        ((model(x.sum(-1, keepdim=True)) - 1) ** 2).mean().backward()
        D.average_gradients(model.parameters())
        ((whole(x_all.sum(-1, keepdim=True)) - 1) ** 2).mean().backward()
        for a, b in zip(model.parameters(), whole.parameters()):
            close(a.grad, b.grad)

        # a share that cannot be equal, a failure on one process only, and the main process's result
        with pytest.raises(ConfigError, match="cannot be split equally over 2 processes"):
            D.shard(list(range(7)))
        assert D.shard(list(range(8))) == list(range(rank * 4, rank * 4 + 4))

        def fails_on_rank_1():
            if D.rank() == 1:
                raise ValueError("only on rank 1")

        with pytest.raises(ValueError, match="only on rank 1"):  # on both: neither is left waiting
            D.raise_together(fails_on_rank_1)
        assert D.on_main(lambda: f"from {D.rank()}") == "from 0"
        with pytest.raises(KeyError):
            D.on_main(lambda: {}["missing"])
        assert (D.process_seed(5) == 5) == (rank == 0)  # the main process draws what one process draws; others differ
        replica = torch.nn.Linear(2, 1)
        with torch.no_grad():
            replica.weight.fill_(float(rank))
        D.broadcast_parameters(replica)
        assert torch.equal(replica.weight, torch.zeros(1, 2))  # every replica starts as the main process's
    finally:
        dist.destroy_process_group()


def test_reductions_over_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    import torch.multiprocessing as mp

    import harness.config  # noqa: F401, E401 - loaded once, before the fork

    # fork: the two processes start with this one's modules loaded (spawn would import torch twice more)
    mp.start_processes(_worker, args=(str(tmp_path / "store"),), nprocs=2, join=True, start_method="fork")
