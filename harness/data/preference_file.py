"""Your own preference data: ``preferences.source=file preferences.path=<file>``, in TRL's preference formats.

The formats, as ``trl.data_utils`` names them (``is_conversational``, ``apply_chat_template``, ``extract_prompt``):

- **standard**: ``prompt``, ``chosen``, ``rejected`` strings; ``chosen`` / ``rejected`` are the completions alone.
- **standard, implicit prompt**: only ``chosen`` and ``rejected``, each the whole text. The prompt is their shared
  beginning cut back to the last whitespace before they differ, so each completion starts at a word with its space
  (our byte-level tokenizers carry the space with the word that follows; TRL's ``extract_prompt`` cuts the same way).
- **conversational**: the same columns holding lists of ``{"role", "content"}`` messages (``prompt`` the turns before
  the answer, ``chosen`` / ``rejected`` the answer); with an implicit prompt, the prompt is the longest run of
  messages that ``chosen`` and ``rejected`` begin with.

A conversation becomes text with the tokenizer's chat template when it has one, as TRL's ``apply_chat_template`` does
(the prompt with the generation prompt; a completion is what the rendered prompt + completion adds to the shared
rendered beginning). A tokenizer without a template (the ``tiny`` model's, trained on the task corpus) gets a plain
role-prefixed rendering instead, :func:`render_plain`: one ``Role: content`` line per message, and the prompt ends
with the answering role's cue (``"User: hi\\nAssistant:"`` + ``" Hello."``).

Containers: ``.jsonl`` (one object per line), ``.parquet``, or a folder written by ``datasets``' ``save_to_disk`` (a
Dataset, or a DatasetDict whose ``train`` split is read). Other columns (scores, ids) are ignored.

The split: the file's distinct prompts (in order of first appearance) are shuffled with ``task.seed``, the data seed,
and ``round(preferences.eval_fraction x count)`` of them (at least one) are held out. Their pairs are the validation
pairs (reward-model accuracy) and, with ``preferences.eval_prompts=file``, the first ``task.n_eval_prompts`` of them are
the evaluator's prompts: no method trains on them. The other prompts' pairs are the training pairs, and the first
``task.n_train_prompts`` training prompts are PPO's rollout prompts. ``task.seed``, not the stage seed: every seed and
method is evaluated on the same prompts, also with ``stages_per_seed=true``.

Every row is checked as it is read (:func:`load_preference_file`): a missing column, a field that is not text (or not
a list of messages), an empty field, chosen == rejected, a shared beginning too short to be a prompt — each a one-line
:class:`ConfigError` naming the file, the row and the column, before anything trains.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from harness.fields import ConfigError

KEY = "preferences.path"
COLUMNS = ("prompt", "chosen", "rejected")
EXAMPLE = '{"prompt": "...", "chosen": "...", "rejected": "..."}'
SUFFIXES = (".jsonl", ".parquet")
_HASHES: dict[tuple, str] = {}  # (path, size, mtime) -> sha256: a job hashes its file once, not at every look


# ------------------------------------------------------------------------------------------------- the file itself
def _absent(path: str) -> ConfigError:
    return ConfigError(
        f"{KEY}: '{path}' does not exist; point {KEY} at a .jsonl or .parquet file or a save_to_disk folder"
    )


def content_hash(path: str) -> str:
    """sha256 of the file's bytes; of a folder, of every file in it (relative name and bytes, in name order). The
    preference set's identity: editing the file rebuilds it and everything built on it; moving it does not."""
    p = Path(path).expanduser()
    if not p.exists():
        raise _absent(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    stamp = (str(p.resolve()), tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if stamp not in _HASHES:
        h = hashlib.sha256()
        for f in files:
            if p.is_dir():  # a folder's layout is content; a file's own name is not (sha256sum gives the same hash)
                h.update(str(f.relative_to(p)).encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        _HASHES[stamp] = h.hexdigest()
    return _HASHES[stamp]


def read_rows(path: str) -> tuple[str, list[tuple[str, dict]]]:
    """(how the data is named in messages, [(place, row)]): ``line N`` of a .jsonl file, ``row i`` of a Parquet file
    or dataset. An unreadable file or an unknown container is a ConfigError."""
    from harness.data.tasks import _decode, _jsonl_rows

    p = Path(path).expanduser()
    if not p.exists():
        raise _absent(path)
    if p.is_dir():
        return _dataset_rows(p, path)
    if p.suffix == ".jsonl":
        return path, _jsonl_rows(p, _decode(p, KEY), KEY, EXAMPLE)
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(str(p))
        except Exception as e:  # noqa: BLE001 - any failure to parse is the user's file, said in one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ConfigError(
                f"{KEY}: '{path}' cannot be read as Parquet ({first}); write it with pandas.to_parquet or "
                "Dataset.to_parquet"
            ) from None
        return path, [(f"row {i}", r) for i, r in enumerate(table.to_pylist())]
    raise ConfigError(
        f"{KEY}: '{path}' has an unsupported file type '{p.suffix or p.name}'; use .jsonl, .parquet or a "
        "folder written by Dataset.save_to_disk"
    )


def _dataset_rows(p: Path, path: str) -> tuple[str, list[tuple[str, dict]]]:
    import datasets

    from harness.data.tasks import saved_dataset_problem

    problem = saved_dataset_problem(p)
    if problem:  # named by its file: datasets' own error names none
        raise ConfigError(
            f"{KEY}: '{path}' cannot be loaded as a save_to_disk dataset: {problem}; save it again with "
            "save_to_disk, or give a .jsonl / .parquet file"
        )

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:  # noqa: BLE001 - as above
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ConfigError(
            f"{KEY}: '{path}' cannot be opened as a dataset folder ({first}); give a folder written by "
            "save_to_disk, or a .jsonl / .parquet file"
        ) from None
    where = path
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise ConfigError(
                f"{KEY}: '{path}' has no 'train' split (it has: {', '.join(ds) or 'none'}); save a "
                "Dataset, or a DatasetDict with a 'train' split"
            )
        ds, where = ds["train"], f"{path}[train]"
    return where, [(f"row {i}", r) for i, r in enumerate(ds.to_list())]


# ---------------------------------------------------------------------------------------------- checking a field
def _kind(value: object) -> str:
    from harness.data.tasks import _kind as kind

    return "text" if isinstance(value, str) else kind(value)


def _text(value: object, where: str, place: str, column: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(
            f"{KEY}: '{where}' {place} column '{column}' is {_kind(value)}, not text; every {column} must "
            "be a string (or, in the conversational format, a list of messages)"
        )
    if not value.strip():
        raise ConfigError(f"{KEY}: '{where}' {place} column '{column}' is empty; give it text or drop the row")
    return value


def _messages(value: object, where: str, place: str, column: str) -> list[dict]:
    if not isinstance(value, list):
        raise ConfigError(
            f"{KEY}: '{where}' {place} column '{column}' is {_kind(value)}, not a list of messages; "
            "use the conversational format throughout, or text throughout"
        )
    if not value:
        raise ConfigError(
            f"{KEY}: '{where}' {place} column '{column}' is an empty conversation; give it at least one "
            "message or drop the row"
        )
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ConfigError(
                f"{KEY}: '{where}' {place} column '{column}' message {i} is {_kind(m)} without 'role' "
                'and \'content\'; each message must be like {"role": "user", "content": "..."}'
            )
        for part in ("role", "content"):
            if not isinstance(m[part], str):
                raise ConfigError(
                    f"{KEY}: '{where}' {place} column '{column}' message {i} has a {part} that is "
                    f"{_kind(m[part])}, not text; only text messages are supported"
                )
            if not m[part].strip():
                raise ConfigError(
                    f"{KEY}: '{where}' {place} column '{column}' message {i} has an empty {part}; give "
                    "it text or drop the row"
                )
        out.append({"role": m["role"], "content": m["content"]})
    return out


def file_format(first: dict, place: str, where: str, columns: tuple[str, ...]) -> bool:
    """Whether the file is conversational, decided from each column of its first row on its own (text, or a list of
    messages) so that a message names the column at fault: one message dict where a list belongs, a number, or a
    column whose format differs from ``chosen``'s (the completion decides: TRL's formats hold every column alike)."""
    kinds = {}
    for c in columns:
        value = first[c]
        if isinstance(value, dict):
            raise ConfigError(
                f"{KEY}: '{where}' {place} column '{c}' is one message (a dict), not a list of messages; wrap it "
                'in a list: [{"role": ..., "content": ...}], or give text'
            )
        if not isinstance(value, (str, list)):
            raise ConfigError(
                f"{KEY}: '{where}' {place} column '{c}' is {_kind(value)}; every {c} must be text (the standard "
                "format) or a list of messages (the conversational format)"
            )
        kinds[c] = "a list of messages" if isinstance(value, list) else "text"
    for c in columns:
        if kinds[c] != kinds["chosen"]:
            raise ConfigError(
                f"{KEY}: '{where}' {place} column '{c}' is {kinds[c]}, but column 'chosen' is {kinds['chosen']}; "
                "give every column in one format (text throughout, or lists of messages throughout)"
            )
    return kinds["chosen"] != "text"


# ----------------------------------------------------------------------------------- implicit prompts, rendering
def shared_text_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) from two whole texts: the prompt is their common beginning cut back to the last
    whitespace before they differ; the completions keep that whitespace. The prompt is "" when there is none."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    cut = max((i for i in range(n) if chosen[i].isspace()), default=0)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def shared_message_prompt(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt, chosen, rejected) from two whole conversations: the prompt is the messages both begin with."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def render_plain(prompt: list[dict], completion: list[dict]) -> tuple[str, str]:
    """(prompt text, completion text) for a tokenizer without a chat template: one ``Role: content`` line per message
    (role capitalised); the prompt ends with the cue of the completion's first role (``\\nAssistant:``) and the
    completion starts with a space, so prompt + completion reads as one transcript."""

    def line(m: dict) -> str:
        return f"{m['role'].capitalize()}: {m['content']}"

    head = "\n".join(line(m) for m in prompt) + f"\n{completion[0]['role'].capitalize()}:"
    rest = "".join("\n" + line(m) for m in completion[1:])
    return head, " " + completion[0]["content"] + rest


def render_template(tok, prompt: list[dict], chosen: list[dict], rejected: list[dict]) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) text with the tokenizer's chat template, TRL's way: the prompt with the generation
    prompt (or continuing a final assistant message), cut to what it shares with both rendered conversations (some
    templates add a token after the generation prompt); the completions are the rest of each conversation."""
    last = prompt[-1]["role"]
    head = tok.apply_chat_template(
        prompt, tokenize=False, add_generation_prompt=last != "assistant", continue_final_message=last == "assistant"
    )
    full_c = tok.apply_chat_template(prompt + chosen, tokenize=False)
    full_r = tok.apply_chat_template(prompt + rejected, tokenize=False)
    head = os.path.commonprefix([head, full_c, full_r])
    return head, full_c[len(head) :], full_r[len(head) :]


def rendering_of(tok) -> str:
    """How conversations become text with ``tok`` (part of the preference set's identity)."""
    template = getattr(tok, "chat_template", None) if tok is not None else None
    if isinstance(template, str) and template:
        return "chat_template:" + hashlib.sha256(template.encode()).hexdigest()[:12]
    return "plain"


# ------------------------------------------------------------------------------------------------- the split
def split_prompts(prompts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts): the distinct ``prompts`` (first appearance order) shuffled with ``seed``;
    ``round(fraction x count)`` of them, at least 1 and at most count - 1, held out. Needs >= 2 distinct prompts."""
    distinct = list(dict.fromkeys(prompts))
    order = random.Random(seed).sample(distinct, len(distinct))
    n_held = min(len(distinct) - 1, max(1, round(fraction * len(distinct))))
    return order[n_held:], order[:n_held]


# ------------------------------------------------------------------------------------------------- the record
@dataclass
class PreferenceFile:
    """A checked preference file, rendered to text and split. One entry per pair in file order."""

    path: str
    sha256: str
    layout: str  # "standard" | "conversational", with ", implicit prompt" when the file has no prompt column
    rendering: str  # "text" (standard) | "plain" | "chat_template:<hash>" (conversational)
    places: list[str] = field(repr=False)  # "line 3" / "row 2": where each pair is in the file, for messages
    prompt: list[str] = field(repr=False)
    chosen: list[str] = field(repr=False)
    rejected: list[str] = field(repr=False)
    train_prompts: list[str] = field(repr=False)  # distinct, in the seeded order
    heldout_prompts: list[str] = field(repr=False)  # distinct, in the seeded order; never trained on

    def identity(self) -> dict:
        return {"source": "file", "sha256": self.sha256, "layout": self.layout, "rendering": self.rendering}

    def split(self, name: str) -> dict[str, list[str]]:
        """Columns prompt / chosen / rejected of the ``train`` or ``test`` (held-out prompts) pairs, in file order."""
        held = set(self.heldout_prompts)
        keep = [i for i, p in enumerate(self.prompt) if (p in held) == (name == "test")]
        return {c: [getattr(self, c)[i] for i in keep] for c in COLUMNS}


def load_preference_file(path: str, tok=None, eval_fraction: float = 0.1, seed: int = 0) -> PreferenceFile:
    """Read, check, render and split a preference file. ``tok``: the policy's tokenizer when it is at hand (its chat
    template renders conversations); None renders them plainly (:func:`render_plain`)."""
    where, rows = read_rows(path)
    if not rows:
        raise ConfigError(f"{KEY}: '{where}' has no rows; give it preference pairs like {EXAMPLE}")
    first_place, first = rows[0]
    missing = [c for c in ("chosen", "rejected") if c not in first]
    if missing:
        have = ", ".join(str(k) for k in first) or "none"
        raise ConfigError(
            f"{KEY}: '{where}' {first_place} has no column '{missing[0]}' (it has: {have}); a preference "
            f"file needs chosen and rejected, and prompt unless both hold the whole text"
        )
    explicit = "prompt" in first
    conversational = file_format(first, first_place, where, COLUMNS if explicit else COLUMNS[1:])
    layout = ("conversational" if conversational else "standard") + ("" if explicit else ", implicit prompt")
    read = _messages if conversational else _text
    columns = COLUMNS if explicit else COLUMNS[1:]
    places, out = [], {c: [] for c in COLUMNS}
    for place, row in rows:
        for c in columns:
            if c not in row:
                raise ConfigError(
                    f"{KEY}: '{where}' {place} has no column '{c}' ({first_place} has it); give every "
                    f"row the same columns ({', '.join(columns)})"
                )
        if not explicit and "prompt" in row:
            raise ConfigError(
                f"{KEY}: '{where}' {place} has a column 'prompt' that {first_place} lacks; give every "
                "row the same columns"
            )
        value = {c: read(row[c], where, place, c) for c in columns}
        if value["chosen"] == value["rejected"]:
            raise ConfigError(
                f"{KEY}: '{where}' {place} column 'rejected' equals column 'chosen', so the pair teaches "
                "nothing; fix its labels or drop the row"
            )
        if not explicit:
            shared = shared_message_prompt if conversational else shared_text_prompt
            prompt, chosen, rejected = shared(value["chosen"], value["rejected"])
            if not prompt or (not conversational and not prompt.strip()):
                raise ConfigError(
                    f"{KEY}: '{where}' {place} column 'chosen' and column 'rejected' share no beginning "
                    "to take as the prompt; add a 'prompt' column"
                )
            for name, completion in (("chosen", chosen), ("rejected", rejected)):
                if not completion or (not conversational and not completion.strip()):
                    raise ConfigError(
                        f"{KEY}: '{where}' {place} column '{name}' has nothing after the beginning it "
                        "shares with the other (the prompt); add a 'prompt' column or drop the row"
                    )
            value = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        if conversational:
            if rendering_of(tok) == "plain":
                head, c_text = render_plain(value["prompt"], value["chosen"])
                r_text = render_plain(value["prompt"], value["rejected"])[1]
            else:
                head, c_text, r_text = render_template(tok, value["prompt"], value["chosen"], value["rejected"])
            value = {"prompt": head, "chosen": c_text, "rejected": r_text}
        places.append(place)
        for c in COLUMNS:
            out[c].append(value[c])
    train, held = split_prompts(out["prompt"], eval_fraction, seed)
    if not held:
        raise ConfigError(
            f"{KEY}: '{where}' has {len(held) + len(train)} distinct prompt(s); give at least 2, so that "
            "some can be held out for evaluation"
        )
    return PreferenceFile(
        path=str(path),
        sha256=content_hash(path),
        layout=layout,
        rendering=rendering_of(tok) if conversational else "text",
        places=places,
        train_prompts=train,
        heldout_prompts=held,
        **out,
    )
