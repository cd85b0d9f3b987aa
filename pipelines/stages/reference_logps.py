"""A DPO-family stage: π_ref's log-probs of the preference pairs a job trains on, computed once and read by every job
on the same π_SFT and preference set (the frontier's DPO jobs at β 0.05, 0.1, 1 and 5; IPO; cDPO).

DPO's loss needs log π_ref(y|x) of each pair's chosen and rejected completion (summed over the completion tokens, EOS
included). π_ref = π_SFT is frozen, so these numbers do not depend on β or the loss: without sharing, every job runs
π_ref's forward on the same pairs again (~1/4 of a DPO step's FLOPs). Here the first job computes them with TRL's own
definition (``DPOTrainer.compute_ref_log_probs`` on batches made by the trainer's collator) and stores them in the
stage cache (``harness.runs.cache``); the others load them, as TRL's ``precompute_ref_log_probs`` would within one job.

Which pairs: those the job's training will read, known before it starts (``pipelines.dpo``): the first
``max_steps`` optimiser batches of the length-sorted sampler's first pass (``harness.lm.batching``), whose order
depends on the run seed and the data alone, so the jobs of a β sweep read the same pairs and share one artifact (and a
job resumed from a checkpoint finds the one it started with). A job
that reads a whole pass or more, or whose order is drawn only when training starts, takes every pair. Measured on the
embedded default (1 thread, AMD EPYC, the four DPO jobs of ``experiment=frontier`` one after another): the pass takes
~5 s over a job's 2560 pairs and ~11 s over all 5642; the first job takes as long as before (its pass replaces its own
reference forwards), each later one ~3-4 s (~10%) less, the four 125-135 s instead of 137-154 s. Over the whole set
the first job took 7 s longer, so a lone job would pay for pairs it never reads.

Identity: π_SFT's and the preference set's keys (a preference file's content hash is in the latter), and what the
trainer's numbers depend on beyond them: the token ids of the pairs read (and which rows they are), π_ref's weights
(TRL's hash of them), the collator's truncation (``max_length``, ``truncation_mode``, ``pad_to_multiple_of``), TRL's
``ld_alpha``, the batch size of this pass, the precision, the device type, the torch thread count (float reduction
order) and the torch / transformers / TRL versions.

The numbers are TRL's, but computed in other batches than the training micro-batches (in batches of similar length,
up to the precompute batch size): a batch's padding and size change the float reduction order, so a job that computes
π_ref per batch differs from one that reads the shared values at float rounding (at most 2e-6 relative on a log-prob
of the embedded default), as TRL's own precompute does. A job that loads them and the job that computed them read the
very same values (the computing job reads back what it stored).

Under multi-process training (``harness.lm.distributed``) the processes draw their batches from transformers' sampler,
not the length-sorted one, and would have to agree on one computation: those jobs keep π_ref's forward on every batch
(:func:`shared_reference` returns None).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.config import stage_fingerprint
from harness.lm import distributed
from harness.runs.cache import MANIFEST, Artifact, build_or_load
from harness.runs.context import RunContext
from pipelines.stages.preferences import preferences_key
from pipelines.stages.sft import sft_key

log = logging.getLogger("harness.reference_logps")

STAGE = "reference_logps"
FILE = "logps.safetensors"  # rows (N,) int64 row indices of the tokenised training set; chosen, rejected (N,) float32
TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


@dataclass(frozen=True)
class SharedReference:
    """Where a DPO trainer finds π_ref's log-probs of its pairs: the stage cache, and the keys of the stages they are
    computed from (π_SFT and the preference set)."""

    cache_root: Path
    stands_on: dict


def shared_reference(ctx: RunContext) -> SharedReference | None:
    """The job's shared reference log-probs, or None when it runs π_ref on every batch (``reference_logps=per_batch``,
    or several processes: see the module's docstring)."""
    if ctx.cfg.pipeline.reference_logps != "shared":
        return None
    if distributed.world_size() > 1:
        log.info("%d processes: π_ref's log-probs are computed on every batch, not shared", distributed.world_size())
        return None
    return SharedReference(ctx.cache_root, {"sft": sft_key(ctx.cfg), "preferences": preferences_key(ctx.cfg)})


def reference_logps_identity(stands_on: dict, computation: dict) -> dict:
    """The artifact's identity: the stages it is computed from and how (the trainer's part: rows, tokens, weights,
    truncation, batch size, precision, device, threads, versions)."""
    return stage_fingerprint(STAGE, stands_on, computation)


def versions() -> dict:
    """The libraries whose code computes the numbers (the forward pass, the fused log-prob head, the collator)."""
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}


def sha256_of(items: Sequence) -> str:
    """A short content hash of a list of JSON-able items (row indices, token-id lists)."""
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item, separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def compute_reference_logps(
    examples: list[dict],
    widths: list[int],
    batch_size: int,
    collate: Callable[[list[dict]], dict],
    logps_of: Callable[[dict], tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """π_ref's (chosen, rejected) log-probs of every example, each (len(examples),) float32 in the examples' order.

    The examples are taken in order of ``widths`` (the tokens each pads its batch to), ``batch_size`` at a time, so
    each batch is padded little; ``collate`` makes a batch (TRL's collator: rows [chosen; rejected]) and ``logps_of``
    returns its (chosen, rejected) log-probs (TRL's ``compute_ref_log_probs``).
    """
    order = sorted(range(len(examples)), key=widths.__getitem__)
    chosen, rejected = torch.empty(len(examples)), torch.empty(len(examples))
    for start in range(0, len(order), batch_size):
        picked = order[start : start + batch_size]
        c, r = logps_of(collate([examples[i] for i in picked]))
        chosen[picked], rejected[picked] = c.detach().float().cpu(), r.detach().float().cpu()
    return chosen, rejected


def stored_logps_problem(path: Path) -> str | None:
    """What makes a stored artifact unusable: a file that does not load, columns of unequal length or another length
    than the manifest's, a value that is not finite; None when whole."""
    from safetensors.torch import load_file

    try:
        t = load_file(str(path / FILE))
        rows = json.loads((path / MANIFEST).read_text())["facts"]["rows"]
    except Exception as e:  # noqa: BLE001 - whatever safetensors or the file system raise, it cannot be read
        return f"{FILE} does not load: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
    if set(t) != {"rows", "chosen", "rejected"} or {len(v) for v in t.values()} != {rows}:
        return f"{FILE} does not hold {rows} rows of rows, chosen, rejected"
    if not (torch.isfinite(t["chosen"]).all() and torch.isfinite(t["rejected"]).all()):
        return f"{FILE} holds log-probs that are not finite"
    return None


def ensure_reference_logps(
    shared: SharedReference,
    computation: dict,
    compute: Callable[[], tuple[list[int], torch.Tensor, torch.Tensor]],
) -> Artifact:
    """The artifact for ``computation`` (see :func:`reference_logps_identity`), built with ``compute`` -> (rows,
    chosen, rejected) if no whole one exists."""
    from safetensors.torch import save_file

    def build(out: Path) -> dict:
        import time

        t0 = time.perf_counter()
        rows, chosen, rejected = compute()
        save_file(
            {"rows": torch.tensor(rows, dtype=torch.int64), "chosen": chosen, "rejected": rejected}, str(out / FILE)
        )
        return {"rows": len(rows), "seconds": round(time.perf_counter() - t0, 3)}

    identity = reference_logps_identity(shared.stands_on, computation)
    art = build_or_load(shared.cache_root, STAGE, identity, build, check=stored_logps_problem)
    log.info("π_ref's log-probs of the pairs %s: %s", "reused from cache" if art.reused else "computed", art.path)
    return art


def load_reference_logps(art: Artifact) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """(rows, chosen, rejected) as stored."""
    from safetensors.torch import load_file

    t = load_file(str(art.path / FILE))
    return t["rows"].tolist(), t["chosen"], t["rejected"]


def with_reference_columns(dataset, rows: list[int], chosen: torch.Tensor, rejected: torch.Tensor):
    """``dataset`` with TRL's ``ref_chosen_logps`` / ``ref_rejected_logps`` columns, NaN on the rows not computed
    (a batch that reads one is refused: ``pipelines.dpo``). Everything stays in memory: nothing is written next to
    the dataset's files, which may be a stage artifact's (``add_column`` would write TRL's filtered rows out there)."""
    dataset = dataset.flatten_indices(keep_in_memory=True)
    for name, values in (("ref_chosen_logps", chosen), ("ref_rejected_logps", rejected)):
        full = torch.full((len(dataset),), math.nan)
        full[rows] = values
        dataset = dataset.add_column(name, full.tolist())
    return dataset
