"""Checks before work: everything a job needs is looked at before its first stage trains.

``preflight(hc)`` runs on a validated config (``harness.config.validate`` has checked every value on its own) and
checks what needs the world around it: the device, folders that must be writable, the model, tokenizer and gold
classifier (found without downloading and without waiting on a network), lengths against the model's positions,
and the data (every row of a user's file; enough reviews and prompts; every pair of a preference file). Each failure
is a one-line :class:`ConfigError` that names the key (or the file, row and column) and the fix.

``user_error(exc)`` turns the errors a user causes (ours, Hydra's composition errors, a folder that cannot be
written) into that one line, and returns None for anything else: a bug keeps its traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from harness.config import HarnessConfig, identity_of
from harness.data.caches import task_data, with_file_prompts
from harness.data.hub import Pretrained, find_base, find_pretrained, positions
from harness.fields import ConfigError
from harness.methods import REWARD_MODEL
from harness.preflight.errors import user_error
from harness.runs.secrets import check_no_secrets, redact_overrides
from harness.runs.weights import check_weights, unreadable_json

FREE_MARGIN = 64 * 2**20  # bytes a job writes besides model weights (tokenizer, preference set, logs)


# ---------------------------------------------------------------------------------------------- the machine
def check_device(name: str, here: bool = True) -> None:
    """``device`` names a device this machine has. ``here=False`` (a launcher that runs jobs elsewhere, e.g. on a
    cluster's GPU nodes) leaves the question to the job: the syntax was checked by ``validate``."""
    if not here or name in ("auto", "cpu"):
        return
    import torch

    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.split(":")[1]) if ":" in name else 0
        if count == 0:
            raise ConfigError(
                f"device: '{name}' asked for, but torch sees no CUDA GPU on this machine; use device=cpu or device=auto"
            )
        if index >= count:
            raise ConfigError(
                f"device: '{name}' asked for, but this machine has {count} CUDA GPU(s) (cuda:0..cuda:"
                f"{count - 1}); pick one of them"
            )
    elif name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "device: 'mps' asked for, but torch sees no Apple GPU on this machine; use device=cpu or auto"
        )


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: str | Path, key: str) -> Path:
    """``path`` is (or can become) a folder this process can write. Creates nothing that stays: the probe is a
    temporary file in the deepest folder that exists. Returns that folder."""
    target = Path(path).expanduser().absolute()
    check_real_path(target, key)
    folder = _existing_ancestor(target)
    if not folder.is_dir():
        raise ConfigError(
            f"{key}: '{path}' cannot be a folder: '{folder}' is a file; set {key} to a folder you can write"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".harness-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(
            f"{key}: cannot write in '{folder}' ({e.strerror}); set {key} to a folder you can write"
        ) from None
    return folder


def check_real_path(target: Path, key: str, what: str = "a real folder") -> None:
    """Every part of ``target`` that is a symbolic link leads somewhere (a dangling link or a loop reads as "does not
    exist" to ``Path.exists``, so the folder would be made beside it, or fail later on the link), and every name fits
    the filesystem's limit (ENAMETOOLONG at the first write, otherwise). ``what``: what ``key`` should name, for the
    fix."""
    import errno

    # first: a name over the limit makes every later look at the path (exists, is_symlink) fail with ENAMETOOLONG
    try:
        longest = os.pathconf(target.anchor or "/", "PC_NAME_MAX")
    except (OSError, ValueError):
        longest = 255
    for part in target.parts:
        if len(os.fsencode(part)) > longest:
            raise ConfigError(
                f"{key}: the name '{part[:40]}...' has {len(os.fsencode(part))} bytes, more than the {longest} "
                f"this filesystem allows; set {key} to a shorter path"
            )
    for part in [*reversed(target.parents), target]:
        if not part.is_symlink():
            continue
        try:
            part.stat()
        except OSError as e:
            problem = (
                "is a symbolic link that loops back on itself"
                if e.errno == errno.ELOOP
                else f"is a symbolic link to '{os.readlink(part)}', which does not exist"
            )
            raise ConfigError(f"{key}: '{part}' {problem}; point {key} at {what}, or fix the link") from None


def input_paths(hc: HarnessConfig) -> list[tuple[str, str, str]]:
    """(key, value, what it should name) of every path the job reads that may be a local file or folder: the data,
    the models and the preference file. A hub name passes ``check_real_path`` untouched (no link, short names)."""
    paths = [("task.path", hc.task.path, "a data file or a save_to_disk folder")]
    if hc.model.gguf:
        paths.append(("model.gguf", hc.model.gguf, "a .gguf file or <package>/<file>.gguf"))
    elif hc.model.name != "tiny":
        paths.append(("model.name", hc.model.name, "a model folder or a hub name"))
    if hc.method.takes_policy:
        paths.append(("policy", hc.pipeline.policy, "a model folder or a hub name"))
    if hc.preferences.source == "file":
        paths.append(("preferences.path", hc.preferences.path, "a .jsonl or .parquet file or a save_to_disk folder"))
    if hc.gold.kind in ("hf_classifier", "hf_reward_model"):
        paths.append(("gold.name_or_path", hc.gold.name_or_path, "a model folder or a hub name"))
    return [(key, str(value), what) for key, value, what in paths if value]


def check_input_paths(hc: HarnessConfig) -> None:
    """Every path the job reads is a real one: a link that loops or points at nothing is said as that (not as "does
    not exist"), and a name too long for the filesystem names its key (not the OSError of the first look at it)."""
    for key, value, what in input_paths(hc):
        check_real_path(Path(value).expanduser().absolute(), key, what)


def check_free_space(path: str | Path, need: int, key: str) -> None:
    """At least ``need`` bytes free where ``path`` will be written: a full disk stops the job now, not when the
    first stage saves its model."""
    folder = _existing_ancestor(Path(path).expanduser().absolute())
    free = shutil.disk_usage(folder).free
    if free < need:
        raise ConfigError(
            f"{key}: {free / 2**20:.0f} MiB free in '{folder}', this job writes about {need / 2**20:.0f} "
            f"MiB (model weights and stage data); free some space or set {key} elsewhere"
        )


def _no_remote_code(pre: Pretrained | None, name: str, key: str, trust: bool) -> None:
    """A model whose config names its own Python classes (``auto_map``) runs that code when loaded: only when asked."""
    if pre is not None and "auto_map" in pre.config and not trust:
        trust_key = key.rsplit(".", 1)[0] + ".trust_remote_code"
        raise ConfigError(
            f"{key}: '{name}' needs its own Python code to load (config.json has auto_map); set "
            f"{trust_key}=true only if you trust that code"
        )


def _tiny_weight_bytes(hc: HarnessConfig) -> int:
    m = hc.model
    params = (m.vocab_size + m.n_positions) * m.n_embd + 12 * m.n_layer * m.n_embd**2
    return 4 * params


def check_model(hc: HarnessConfig) -> int | None:
    """The base model and its tokenizer can be loaded and its positions fit every length the job uses. Returns the
    bytes of its weights (None when unknown)."""
    if hc.model.name == "tiny":
        check_lengths(hc, hc.model.n_positions, "model.n_positions")
        return _tiny_weight_bytes(hc)
    pre = find_base(hc.model)
    _no_remote_code(pre, hc.model.name, "model.name", hc.model.trust_remote_code)
    n_pos = positions(pre.config) if pre is not None else None
    if n_pos is not None:
        check_lengths(hc, n_pos, f"config.json of {hc.model.name}")
    _local_weights(hc.model.name, "model.name")
    return pre.weight_bytes if pre is not None else None


def _local_weights(name: str, key: str) -> None:
    """A local model folder's files, as its loaders will read them: every JSON file parses, ``tokenizer.json`` is a
    tokenizer (the ``tokenizers`` library reads it: no model config, no code) and the weights are whole (from their
    headers, ``harness.runs.weights``). A hub name's are the hub's to serve. Without this a cut tokenizer or
    generation config stops the job with a traceback when it loads the model, after π_SFT has trained."""
    folder = Path(name)
    if not folder.is_dir():
        return
    bad = unreadable_json(folder)
    if bad:
        raise ConfigError(f"{key}: '{bad[0]}' cannot be read ({bad[1]}); copy or save the model again")
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # noqa: BLE001 - the Rust library's errors share no Python class
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            raise ConfigError(
                f"{key}: '{folder / 'tokenizer.json'}' is not a tokenizer ({why}); save it again with "
                "tokenizer.save_pretrained(folder)"
            ) from None
    check_weights(folder, key)


def check_gold(hc: HarnessConfig) -> None:
    """A Hugging Face gold classifier or reward model can be found, runs no code of its own unless allowed, has as
    many outputs as its kind says (one for a reward model), and a classifier has ``gold.label``."""
    from harness.data.gold import gold_kind_mismatch

    g = hc.gold
    if g.kind not in ("hf_classifier", "hf_reward_model"):
        return
    pre = find_pretrained(g.name_or_path, "gold.name_or_path")
    _no_remote_code(pre, g.name_or_path, "gold.name_or_path", g.trust_remote_code)
    labels = [str(v) for v in (pre.config.get("id2label") or {}).values()] if pre is not None else []
    outputs = len(labels) or (pre.config.get("num_labels") if pre is not None else None)
    if outputs and (outputs == 1) != (g.kind == "hf_reward_model"):
        raise ConfigError(gold_kind_mismatch(g.name_or_path, outputs, g.kind))
    if g.kind == "hf_classifier" and labels and g.label not in labels:
        raise ConfigError(
            f"gold.label: '{g.label}' is not a label of {g.name_or_path} ({', '.join(labels)}); set "
            "gold.label to one of them"
        )
    _local_weights(g.name_or_path, "gold.name_or_path")


def check_policy(hc: HarnessConfig) -> int | None:
    """``pipeline=evaluate``: the checkpoint to evaluate can be found (a folder with config.json and weights, or a
    hub name; its tokenizer is optional, π_SFT's is used without one), runs no code of its own unless allowed, and
    has the positions for a prompt plus ``eval.max_new_tokens``, is a causal LM (not a reward model's folder), and
    can share π_SFT's vocabulary as far as config files tell. Returns its weight bytes (None when unknown). The exact
    vocabulary is compared with π_SFT's once π_SFT exists (``pipelines.evaluate.check_same_vocabulary``)."""
    if not hc.method.takes_policy:
        return None
    name = hc.pipeline.policy
    pre = find_pretrained(name, "policy", tokenizer=False)
    _no_remote_code(pre, name, "pipeline.policy", hc.pipeline.trust_remote_code)
    n_pos = positions(pre.config) if pre is not None else None
    need = hc.task.prompt_max_tokens + hc.eval.max_new_tokens
    if n_pos is not None and need > n_pos:
        raise ConfigError(
            f"policy: '{name}' has {n_pos} positions, fewer than prompts of up to "
            f"{hc.task.prompt_max_tokens} words plus eval.max_new_tokens={hc.eval.max_new_tokens}; lower "
            "eval.max_new_tokens or task.prompt_max_tokens"
        )
    if pre is not None:
        problem = not_a_causal_lm(pre.config) or vocabulary_cannot_match(pre.config, hc)
        if problem:
            raise ConfigError(f"policy: '{name}' {problem}")
    _local_weights(name, "policy")
    return pre.weight_bytes if pre is not None else None


# Heads that make a causal LM: the classes transformers names <Family>ForCausalLM / <Family>LMHeadModel (and the
# multimodal <Family>ForConditionalGeneration, which generate text too).
CAUSAL_LM_HEADS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def not_a_causal_lm(config: dict) -> str | None:
    """What a checkpoint's config.json says it is, when that is not a causal LM (a reward model's folder, a
    classifier: one score per sequence, nothing to sample); None when it is one or does not say."""
    archs = [str(a) for a in config.get("architectures") or []]
    if archs and not any(a.endswith(CAUSAL_LM_HEADS) for a in archs):
        return (
            f"is a {', '.join(archs)} (config.json's architectures), not a causal LM: it scores sequences and "
            "samples none; evaluate a policy folder (a causal LM saved with save_pretrained, e.g. <job>/policy)"
        )
    return None


def vocabulary_cannot_match(config: dict, hc: HarnessConfig) -> str | None:
    """Read from config files alone, before π_SFT exists: a checkpoint that cannot share π_SFT's vocabulary (the KL
    sums over one vocabulary). ``tiny``'s π_SFT is a GPT-2 whose tokenizer holds at most ``model.vocab_size`` tokens;
    a pretrained base's π_SFT is that model (its own family). The exact token map is compared once π_SFT is loaded
    (``pipelines.evaluate.check_same_vocabulary``)."""
    rows, kind = config.get("vocab_size"), config.get("model_type")
    fix = "evaluate a checkpoint trained from this run's π_SFT, or set model.name to the checkpoint's own base model"
    if hc.model.name == "tiny":
        if kind not in (None, "gpt2"):
            return f"is a {kind} model, π_SFT (model=tiny) a GPT-2 with its own small vocabulary; {fix}"
        if isinstance(rows, int) and rows > hc.model.vocab_size:
            return (
                f"has {rows} output logits, more than π_SFT's vocabulary of at most model.vocab_size="
                f"{hc.model.vocab_size} tokens (model=tiny); {fix}"
            )
        return None
    base = find_base(hc.model)
    base_kind = base.config.get("model_type") if base is not None else None
    if kind and base_kind and kind != base_kind:
        return f"is a {kind} model, π_SFT a {base_kind} ({hc.model.name}): their vocabularies differ; {fix}"
    return None


def check_lengths(hc: HarnessConfig, n_pos: int, where: str) -> None:
    """Every training length and every sampled prompt + completion fits the model's ``n_pos`` positions.

    A prompt of up to ``task.prompt_max_tokens`` words has at least that many tokens, so the sampling check is a lower
    bound: it never stops a job that would have run."""
    depth, pipe, words = hc.method.stages, hc.pipeline, hc.task.prompt_max_tokens
    lengths = [("sft.max_length", hc.sft.max_length)]
    if depth >= 3:
        lengths.append(("reward_model.max_length", hc.reward_model.max_length))
    if isinstance(getattr(pipe, "max_length", None), int):
        lengths.append(("pipeline.max_length", pipe.max_length))
    for key, value in lengths:
        if value > n_pos:
            raise ConfigError(f"{key}: {value} exceeds the model's {n_pos} positions ({where}); set {key}<={n_pos}")
    sampled = [("eval.max_new_tokens", hc.eval.max_new_tokens)]
    if depth >= 2:
        sampled.append(("preferences.max_new_tokens", hc.preferences.max_new_tokens))
    if isinstance(getattr(pipe, "max_new_tokens", None), int):
        sampled.append(("pipeline.max_new_tokens", pipe.max_new_tokens))
    for key, value in sampled:
        if words + value > n_pos:
            raise ConfigError(
                f"{key}: prompts of up to {words} words plus {value} new tokens need more than the model's "
                f"{n_pos} positions ({where}); lower {key} or task.prompt_max_tokens"
            )


# ---------------------------------------------------------------------------------------------------- all of it
def models_saved(hc: HarnessConfig) -> int:
    """Model-sized artifacts a job may write: π_SFT, the reward model, the method's policy."""
    return 1 + (hc.method.stages >= REWARD_MODEL) + hc.method.saves_policy


def preflight(hc: HarnessConfig, here: bool = True):
    """Every check a job needs before its first stage trains; returns the checked task data. Cheap checks first, the
    data (the slowest) last. ``here``: the job runs on this machine (see ``check_device``)."""
    check_no_secrets(hc)
    check_device(hc.device, here)
    if here:  # bf16 on this machine's device (a cluster's job checks its own node when it starts)
        from harness.lm.precision import check_precision, pick_device

        check_precision(hc.precision, pick_device(hc.device))
    check_process_split(hc)
    check_input_paths(hc)
    check_writable(hc.cache_dir, "cache_dir")
    weights = check_model(hc)
    check_policy(hc)
    check_gold(hc)
    check_free_space(hc.cache_dir, (weights or 0) * models_saved(hc) + FREE_MARGIN, "cache_dir")
    data = task_data(hc.task)
    return with_file_prompts(hc, data) if hc.preferences.source == "file" else data


def check_process_split(hc: HarnessConfig) -> None:
    """Launched as several processes (``accelerate launch``, ``torchrun``: ``harness.lm.distributed``), each batch the
    job may train on is shared equally by them: π_SFT's, the reward model's, and the method's (PPO: each minibatch)."""
    from harness.lm.distributed import launched_processes, per_process

    n = launched_processes()
    if n == 1:
        return
    for value, key in [(hc.sft.batch_size, "sft.batch_size"), *hc.method.process_batches(hc)]:
        per_process(value, key, n)


def check_jobs(jobs: Iterable[list[str]], load_job: Callable[[list[str]], HarnessConfig], here: bool) -> int:
    """Preflight every job of a sweep before the first runs; ``load_job`` composes and validates one from its
    overrides. A failure names its job at the end of its line, by its index and its overrides with secrets hidden
    (``harness.runs.secrets.redact_overrides``: the line lands in CI and Slurm logs). Jobs with the same resolved
    config are checked once. Returns the number of jobs."""
    seen, n = set(), 0
    for n, overrides in enumerate(jobs, 1):
        try:
            hc = load_job(list(overrides))
            key = json.dumps(
                {k: identity_of(v) for k, v in vars(hc).items() if k not in ("raw", "method")},
                sort_keys=True,
                default=str,
            )
            if key not in seen:
                seen.add(key)
                preflight(hc, here)
        except Exception as e:  # noqa: BLE001 - a user error gets its job appended; anything else propagates as is
            line = user_error(e)
            if line is None:
                raise
            shown = " ".join(redact_overrides(list(overrides))) or "the defaults"
            raise ConfigError(f"{line} [job {n}: {shown}]") from None
    return n
