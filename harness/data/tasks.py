"""Tasks: where the reviews and the prompts come from. One record type, whatever the source.

``reviews`` is the embedded default: a seeded generator of short English movie reviews that mix positive,
negative and neutral phrases within and across reviews, so that a model trained on them writes completions
whose gold sentiment spreads around the middle — the room alignment has to climb. ``imdb`` and ``local`` load
real text in the same shape (the paper's preset), tested here on tiny local files.
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from harness.config import TaskConfig
from harness.fields import ConfigError


@dataclass
class TaskData:
    train_texts: list[str]  # SFT corpus
    heldout_texts: list[str]  # never trained on: evaluation prompts and held-out perplexity
    train_prompts: list[str]  # prefixes of training reviews: preference set, PPO rollouts
    eval_prompts: list[str]  # prefixes of held-out reviews: the evaluator's prompts


# ------------------------------------------------------------------------------------------------ the generator
# Phrase banks. Sentiment lives mostly in adjectives, verbs and closing verdicts; the rest is neutral scaffolding
# so that a review's sentiment is a mixture, not a label.
_FILMS = (
    "movie film picture story sequel remake thriller comedy drama documentary western musical romance feature".split()
)
_PARTS = [
    "plot",
    "acting",
    "script",
    "dialogue",
    "soundtrack",
    "score",
    "cinematography",
    "direction",
    "pacing",
    "ending",
    "opening",
    "cast",
    "villain",
    "hero",
    "camera work",
    "editing",
    "costumes",
    "set design",
    "lighting",
    "humor",
    "twist",
    "finale",
    "second act",
    "premise",
    "special effects",
    "performances",
    "characters",
    "chemistry",
    "atmosphere",
    "tone",
    "writing",
    "structure",
    "visuals",
    "production",
    "sound",
    "music",
    "story",
    "runtime",
    "romance",
    "action",
    "fight scenes",
    "jokes",
    "climax",
    "subplot",
    "theme",
    "message",
    "world building",
]
_FILMS += "horror flick animation satire mystery adventure biopic debut blockbuster indie".split()
_POS_ADJ = (
    "great wonderful brilliant excellent superb delightful charming moving beautiful fantastic clever witty fresh "
    "gripping powerful memorable stunning lovely touching inspiring hilarious thoughtful elegant masterful "
    "engaging impressive outstanding solid strong warm joyful fun smart vivid rich perfect amazing enjoyable "
    "heartfelt sincere compelling graceful rousing sharp tender breathtaking refreshing"
).split()
_NEG_ADJ = (
    "terrible awful boring dull bland weak poor clumsy tedious lifeless messy confusing painful forgettable "
    "pointless stupid silly annoying ugly disappointing predictable shallow lazy flat cheap wooden hollow "
    "awkward tiresome miserable dreadful horrible bad weird sloppy stale empty frustrating ridiculous "
    "pathetic dumb incoherent grating sluggish overlong pretentious mediocre unbearable"
).split()
_NEU_ADJ = (
    "long short quiet loud slow fast old new familiar simple unusual modern classic dark bright strange "
    "ordinary typical small large serious light plain standard careful busy "
    "brief gentle noisy calm local foreign silent complex straightforward"
).split()
_ADV = "really quite very rather fairly somewhat truly mostly oddly surprisingly often sometimes always".split()
_POS_VERB = "loved enjoyed adored admired liked appreciated cherished praised treasured savored".split()
_NEG_VERB = "hated disliked regretted resented loathed dreaded despised mocked".split()
_NEU_VERB = "watched saw noticed remember expected rented streamed finished".split()
_PEOPLE = [
    "the director",
    "the writer",
    "the lead actor",
    "the lead actress",
    "the cast",
    "the composer",
    "the editor",
    "my friend",
    "my sister",
    "my brother",
    "my father",
    "my mother",
    "the audience",
    "the critics",
    "everyone",
    "nobody",
    "the kids",
    "my partner",
]
_WHEN = [
    "last night",
    "yesterday",
    "this weekend",
    "on friday",
    "at the festival",
    "at home",
    "with friends",
    "on a plane",
    "twice",
    "in the theater",
    "on tv",
    "last year",
]
_CONNECT = ["but", "and", "although", "while", "yet", "because", "even though", "and yet"]
_VERDICT_POS = [
    "i would watch it again",
    "highly recommended",
    "a real gem",
    "worth every minute",
    "one of the best this year",
    "a must see",
    "i left smiling",
]
_VERDICT_NEG = [
    "a waste of time",
    "avoid it",
    "i want my money back",
    "one of the worst this year",
    "skip this one",
    "i nearly walked out",
    "not worth it",
]
_VERDICT_NEU = [
    "it is what it is",
    "see it if you are curious",
    "your mileage may vary",
    "make up your own mind",
    "it runs about two hours",
    "it opens next week",
]


def _adj(rng: random.Random, pol: str) -> str:
    bank = {"pos": _POS_ADJ, "neg": _NEG_ADJ, "neu": _NEU_ADJ}[pol]
    word = rng.choice(bank)
    return f"{rng.choice(_ADV)} {word}" if rng.random() < 0.35 else word


def _verb(rng: random.Random, pol: str) -> str:
    return rng.choice({"pos": _POS_VERB, "neg": _NEG_VERB, "neu": _NEU_VERB}[pol])


def _clause(rng: random.Random, pol: str) -> str:
    film, part = rng.choice(_FILMS), rng.choice(_PARTS)
    forms = [
        lambda: f"the {part} was {_adj(rng, pol)}",
        lambda: f"the {part} is {_adj(rng, pol)}",
        lambda: f"i {_verb(rng, pol)} the {part}",
        lambda: f"{rng.choice(_PEOPLE)} {_verb(rng, pol)} this {film}",
        lambda: f"a {_adj(rng, pol)} {film} with a {_adj(rng, pol)} {part}",
        lambda: f"the {part} felt {_adj(rng, pol)}",
        lambda: f"{rng.choice(_PEOPLE)} did a {_adj(rng, pol)} job",
        lambda: f"this {film} has a {_adj(rng, pol)} {part}",
        lambda: f"i {_verb(rng, 'neu')} this {film} {rng.choice(_WHEN)}",
    ]
    return rng.choice(forms)()


def _sentence(rng: random.Random, pol: str) -> str:
    r = rng.random()
    if r < 0.3:  # a compound sentence that may turn: "the plot was dull but the score is lovely"
        other = rng.choice(["pos", "neg", "neu"])
        s = f"{_clause(rng, pol)} {rng.choice(_CONNECT)} {_clause(rng, other)}"
    elif r < 0.4:
        s = {"pos": rng.choice(_VERDICT_POS), "neg": rng.choice(_VERDICT_NEG), "neu": rng.choice(_VERDICT_NEU)}[pol]
    else:
        s = _clause(rng, pol)
    return s[0].upper() + s[1:] + rng.choice([".", ".", ".", "!"])


def generate_reviews(n: int, seed: int) -> list[str]:
    """``n`` short reviews from the seeded generator. Each review has a leaning (positive, negative or mixed)
    that sets the odds of each sentence's polarity, so reviews differ in overall sentiment and many mix both.

    One or two sentences (a compound sentence can turn within itself): short enough that π_SFT finishes > 95% of
    its completions within ``max_new_tokens`` = 32 (the data's 99th percentile is 29 tokens after a 2–8-word
    prompt), so that no method is judged on text cut off mid-review."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        leaning = rng.choice(["pos", "neg", "mixed", "mixed"])
        odds = {"pos": (0.55, 0.15), "neg": (0.15, 0.6), "mixed": (0.3, 0.4)}[leaning]
        sents = []
        for _ in range(rng.randint(1, 2)):
            r = rng.random()
            pol = "pos" if r < odds[0] else ("neg" if r < odds[0] + odds[1] else "neu")
            sents.append(_sentence(rng, pol))
        out.append(" ".join(sents))
    return out


def vocabulary(texts: list[str]) -> set[str]:
    return {w.strip(".,!").lower() for t in texts for w in t.split()}


# ------------------------------------------------------------------------------------------------------ loaders
# Fewer training reviews than this cannot fit a language model or give the prompts of a preference set; a file that
# small is almost always the wrong file (a header, a sample), so it stops before training rather than after.
MIN_TRAIN_REVIEWS = 50


def _decode(p: Path, key: str = "task.path") -> str:
    """The file's text; bytes that are not UTF-8 are a ConfigError naming the line and byte (a BOM is allowed).
    ``key``: the config key that named the file (every message starts with it)."""
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{key}: cannot read '{p}' ({e.strerror}); point {key} at a readable file") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{key}: '{p}' line {line}: byte {data[e.start : e.start + 1]!r} at offset {e.start} is not "
            "UTF-8; save the file as UTF-8"
        ) from None


def _jsonl_rows(p: Path, text: str, key: str = "task.path", example: str = '{"text": "..."}') -> list[tuple[str, dict]]:
    """(``line N``, object) per non-blank line. Split on newlines only: JSON strings may hold U+2028, which
    ``splitlines`` would cut. ``key`` and ``example`` (a valid line) go into the messages."""
    rows = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"{key}: '{p}' line {n} column {e.colno}: broken JSON ({e.msg}); each line must be "
                f"one object like {example}"
            ) from None
        if not isinstance(row, dict):
            raise ConfigError(
                f"{key}: '{p}' line {n}: a JSON {type(row).__name__}, not an object; each line must be "
                f"one object like {example}"
            )
        rows.append((f"line {n}", row))
    return rows


def _csv_rows(p: Path, text: str) -> list[tuple[str, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        return [(f"line {reader.line_num}", row) for row in reader]
    except csv.Error as e:
        raise ConfigError(
            f"task.path: '{p}' line {reader.line_num}: malformed CSV ({e}); quote fields that hold commas, "
            "quotes or newlines"
        ) from None


def _read_local(path: str, column: str) -> list[str]:
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"task.path: file '{path}' does not exist; point task.path at a .jsonl or .csv file")
    if p.is_dir():  # before the suffix: a folder's name has none, and "unsupported file type ''" says nothing
        raise ConfigError(f"task.path: '{path}' is a folder; task=local reads one .jsonl or .csv file{_as_dataset(p)}")
    if p.suffix not in (".jsonl", ".csv"):
        raise ConfigError(f"task.path: unsupported file type '{p.suffix}' ('{path}'); use .jsonl or .csv")
    text = _decode(p)
    rows = _jsonl_rows(p, text) if p.suffix == ".jsonl" else _csv_rows(p, text)
    return _texts_from_rows(rows, column, str(p))


def _as_dataset(folder: Path) -> str:
    """What a folder given to ``task=local`` is as a ``save_to_disk`` dataset (which ``task=imdb`` reads)."""
    problem = saved_dataset_problem(folder)
    if problem is None:
        return "; this one holds a save_to_disk dataset: set task=imdb to read it"
    if problem.startswith("it holds neither"):
        return ": point task.path at one"
    return (
        f", and as a save_to_disk dataset (task=imdb) it does not load either: {problem}; save it again with "
        "save_to_disk, or point task.path at a file"
    )


def saved_dataset_problem(folder: Path) -> str | None:
    """What keeps ``folder`` from loading as a ``save_to_disk`` dataset, read from its small files (``datasets``
    raises a bare JSON or "neither a Dataset nor a DatasetDict directory" error, naming no file): no
    dataset_dict.json or state.json (not such a folder), a JSON file that does not parse, a split or an Arrow file
    it lists that is missing. None when it looks whole (loading it may still find a damaged Arrow file)."""
    import json

    def read(f: Path):
        try:
            return json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:  # ValueError: JSON and UTF-8 errors
            raise _Unreadable(f"'{f}' cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:80]})") from None

    try:
        if (folder / "dataset_dict.json").is_file():
            splits = read(folder / "dataset_dict.json")
            names = splits.get("splits") if isinstance(splits, dict) else None
            if not isinstance(names, list):
                return f"'{folder / 'dataset_dict.json'}' lists no splits"
            parts = [folder / str(s) for s in names]
        elif (folder / "state.json").is_file():
            parts = [folder]
        else:
            return "it holds neither dataset_dict.json nor state.json (no folder written by save_to_disk)"
        for part in parts:
            if not (part / "state.json").is_file():
                return f"'{part / 'state.json'}' is missing"
            state = read(part / "state.json")
            if (part / "dataset_info.json").is_file():
                read(part / "dataset_info.json")
            files = state.get("_data_files") if isinstance(state, dict) else None
            for entry in files if isinstance(files, list) else []:
                name = entry.get("filename") if isinstance(entry, dict) else None
                if name and not (part / name).is_file():
                    return f"'{part / name}' is missing"
    except _Unreadable as e:
        return str(e)
    return None


class _Unreadable(Exception):
    """A JSON file of a saved dataset that does not parse (its message names the file)."""


def _kind(value: object) -> str:
    """How a value that is not text reads in an error: 'a number (3)', 'a list', 'null'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    return f"a {type(value).__name__}"


def _texts_from_rows(rows: list[tuple[str, dict]], column: str, where: str) -> list[str]:
    """The ``column`` of each (place, row) as whitespace-normalised text. A missing column, a value that is not text
    (a number or a list is never silently turned into a review) or an empty text stops at its row."""
    if not rows:
        raise ConfigError(f"task.path: '{where}' has no rows; give it at least {MIN_TRAIN_REVIEWS} reviews")
    texts = []
    for place, row in rows:
        if column not in row:
            have = ", ".join(str(k) for k in row if k is not None) or "none"
            raise ConfigError(
                f"task.text_column: column '{column}' missing in '{where}' ({place}; it has: {have}); "
                "set task.text_column to the column holding the reviews"
            )
        value = row[column]
        if not isinstance(value, str):
            raise ConfigError(
                f"task.text_column: '{where}' {place} column '{column}' is {_kind(value)}, not text; "
                "every review must be a string"
            )
        if not value.strip():
            raise ConfigError(f"task.path: '{where}' has an empty '{column}' at {place}; remove empty texts")
        texts.append(" ".join(value.split()))
    return texts


def _load_imdb(path: str | None, column: str) -> tuple[list[str], list[str] | None]:
    """IMDb through `datasets` (the paper's preset): by hub name, or a local ``save_to_disk`` folder with the
    same columns (a DatasetDict with a ``train`` and optionally a ``test`` split, or a single Dataset, whose held-out
    part is then carved like a local file's). Returns (train, test) texts."""
    import datasets

    name = path or "stanfordnlp/imdb"
    local = Path(name).expanduser()
    problem = saved_dataset_problem(local) if local.is_dir() else None
    if problem:  # named by its file: datasets' own error names none
        raise ConfigError(
            f"task.path: '{name}' cannot be loaded as a save_to_disk dataset: {problem}; save it again with "
            "save_to_disk, or give a hub dataset name"
        )
    try:
        ds = datasets.load_from_disk(str(local)) if local.exists() else datasets.load_dataset(name)
    except Exception as e:  # noqa: BLE001 - any failure to open the data is the user's input, said in one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(
            f"task.path: cannot open '{name}' as a dataset ({first}); give a folder written by "
            "save_to_disk or a hub dataset name"
        ) from None
    if isinstance(ds, datasets.Dataset):
        return _dataset_texts(ds, column, name, "train"), None
    if "train" not in ds:
        raise ConfigError(
            f"task.path: '{name}' has no 'train' split (it has: {', '.join(ds) or 'none'}); save a "
            "DatasetDict with a 'train' split"
        )
    train = _dataset_texts(ds["train"], column, name, "train")
    test = _dataset_texts(ds["test"], column, name, "test") if "test" in ds else None
    return train, test


def _dataset_texts(split, column: str, name: str, split_name: str) -> list[str]:
    """A split's ``column`` as texts; its declared type is checked first (one line, not a row-by-row crawl)."""
    where = f"{name}[{split_name}]"
    if column not in split.column_names:
        raise ConfigError(
            f"task.text_column: column '{column}' missing in '{where}' (it has: "
            f"{', '.join(split.column_names) or 'none'}); set task.text_column to the column holding the reviews"
        )
    dtype = getattr(split.features[column], "dtype", type(split.features[column]).__name__)
    if dtype not in ("string", "large_string"):
        raise ConfigError(
            f"task.text_column: '{where}' column '{column}' holds {dtype} values (row 0: "
            f"{_kind(split[0][column]) if len(split) else 'none'}), not text; pick the text column"
        )
    return _texts_from_rows([(f"row {i}", {column: v}) for i, v in enumerate(split[column])], column, where)


def _prompt(text: str, lo: int, hi: int, rng: random.Random) -> str | None:
    """A prefix of ``lo``..``hi`` whitespace tokens (the paper's 2–8-token prompts) that leaves at least one word to
    complete; None for a review too short for that ("Avoid it.")."""
    words = text.split()
    if len(words) <= lo:
        return None
    return " ".join(words[: min(rng.randint(lo, hi), len(words) - 1)])


def _prompts(texts: list[str], n: int, lo: int, hi: int, rng: random.Random) -> list[str]:
    """One prompt per review long enough to give one, cycling through the reviews if more prompts than reviews are
    asked for."""
    out = []
    for i in range(20 * max(n, len(texts))):
        prompt = _prompt(texts[i % len(texts)], lo, hi, rng)
        if prompt is not None:
            out.append(prompt)
            if len(out) == n:
                return out
    raise ConfigError(
        f"task.prompt_min_tokens: no training review has more than {lo} words to make a prompt from; "
        "lower task.prompt_min_tokens or use longer reviews"
    )


def heldout_prompts(texts: list[str], n: int, lo: int, hi: int, rng: random.Random, exclude: set[str]) -> list[str]:
    """``n`` distinct prompts from held-out reviews, none of them in ``exclude`` (the training prompts).

    Short prefixes repeat across reviews ("The plot was"), so a held-out review can yield a prompt that training
    also used; such candidates are skipped, and so are repeats, so that every evaluation prompt is new to every
    method and the bootstrap over prompts resamples independent units. Raises ConfigError when the held-out
    reviews cannot supply ``n`` of them.
    """
    # At most one prompt per review and prefix length: asked for more, say so now instead of trying 20 x n times.
    possible = sum(max(0, min(hi, len(t.split()) - 1) - lo + 1) for t in texts)
    if n > possible:
        raise ConfigError(
            f"task.n_eval_prompts: the held-out reviews give at most {possible} distinct prompts (asked for "
            f"{n}); lower task.n_eval_prompts or raise task.n_heldout"
        )
    out: list[str] = []
    seen = set(exclude)
    for i in range(20 * max(n, len(texts))):  # each review is tried with several prefix lengths
        candidate = _prompt(texts[i % len(texts)], lo, hi, rng)
        if candidate is not None and candidate not in seen:
            seen.add(candidate)
            out.append(candidate)
            if len(out) == n:
                return out
    raise ConfigError(
        f"task.n_eval_prompts: the held-out reviews give only {len(out)} distinct prompts that no training "
        f"prompt equals (asked for {n}); lower task.n_eval_prompts or raise task.n_heldout"
    )


def check_heldout(data: TaskData) -> None:
    """Evaluation prompts must be disjoint from every training prompt (asserted whenever a task loads)."""
    shared = set(data.eval_prompts) & set(data.train_prompts)
    if shared:
        raise AssertionError(f"{len(shared)} evaluation prompts are also training prompts, e.g. {sorted(shared)[0]!r}")


def load_task(cfg: TaskConfig) -> TaskData:
    rng = random.Random(cfg.seed)
    if cfg.name == "reviews":
        texts = generate_reviews(cfg.n_train + cfg.n_heldout, cfg.seed)
        train, held = texts[: cfg.n_train], texts[cfg.n_train :]
    else:
        if cfg.name == "imdb":
            train_all, test = _load_imdb(cfg.path, cfg.text_column)
        else:
            train_all, test = _read_local(cfg.path, cfg.text_column), None
        rng.shuffle(train_all)
        if test is not None:  # IMDb's test split is sorted by label: its first 1,000 reviews are all negative
            rng.shuffle(test)
        else:  # carve the held-out split from the one file
            k = max(1, min(cfg.n_heldout, len(train_all) // 5))
            test, train_all = train_all[:k], train_all[k:]
        train, held = train_all[: cfg.n_train], test[: cfg.n_heldout]
    if len(train) < MIN_TRAIN_REVIEWS:
        key, source = ("task.n_train", "") if cfg.n_train < MIN_TRAIN_REVIEWS else ("task.path", f" from '{cfg.path}'")
        raise ConfigError(
            f"{key}: {len(train)} training reviews{source} are too few to train on (the minimum is "
            f"{MIN_TRAIN_REVIEWS}, after the held-out split); give more reviews or raise task.n_train"
        )
    lo, hi = cfg.prompt_min_tokens, cfg.prompt_max_tokens
    train_prompts = _prompts(train, cfg.n_train_prompts, lo, hi, rng)
    data = TaskData(
        train_texts=train,
        heldout_texts=held,
        train_prompts=train_prompts,
        eval_prompts=heldout_prompts(held, cfg.n_eval_prompts, lo, hi, rng, exclude=set(train_prompts)),
    )
    check_heldout(data)
    return data
