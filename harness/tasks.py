"""Tasks: where the reviews and the prompts come from. One record type, whatever the source.

``reviews`` is the embedded default: a seeded generator of short English movie reviews that mix positive,
negative and neutral phrases within and across reviews, so that a model trained on them writes completions
whose gold sentiment spreads around the middle — the room alignment has to climb. ``imdb`` and ``local`` load
real text in the same shape (the paper's preset), tested here on tiny local files.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

from harness.config import ConfigError, TaskConfig


@dataclass
class TaskData:
    train_texts: list[str]  # SFT corpus
    heldout_texts: list[str]  # never trained on: evaluation prompts and held-out perplexity
    train_prompts: list[str]  # prefixes of training reviews: preference set, PPO rollouts
    eval_prompts: list[str]  # prefixes of held-out reviews: the evaluator's prompts


# ------------------------------------------------------------------------------------------------ the generator
# Phrase banks. Sentiment lives mostly in adjectives, verbs and closing verdicts; the rest is neutral scaffolding
# so that a review's sentiment is a mixture, not a label.
_FILMS = "movie film picture story sequel remake thriller comedy drama documentary western musical romance feature".split()
_PARTS = [
    "plot", "acting", "script", "dialogue", "soundtrack", "score", "cinematography", "direction", "pacing", "ending",
    "opening", "cast", "villain", "hero", "camera work", "editing", "costumes", "set design", "lighting", "humor",
    "twist", "finale", "second act", "premise", "special effects", "performances", "characters", "chemistry",
    "atmosphere", "tone", "writing", "structure", "visuals", "production", "sound", "music", "story", "runtime",
    "romance", "action", "fight scenes", "jokes", "climax", "subplot", "theme", "message", "world building",
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
_PEOPLE = ["the director", "the writer", "the lead actor", "the lead actress", "the cast", "the composer",
           "the editor", "my friend", "my sister", "my brother", "my father", "my mother", "the audience",
           "the critics", "everyone", "nobody", "the kids", "my partner"]
_WHEN = ["last night", "yesterday", "this weekend", "on friday", "at the festival", "at home", "with friends",
         "on a plane", "twice", "in the theater", "on tv", "last year"]
_CONNECT = ["but", "and", "although", "while", "yet", "because", "even though", "and yet"]
_VERDICT_POS = ["i would watch it again", "highly recommended", "a real gem", "worth every minute",
                "one of the best this year", "a must see", "i left smiling"]
_VERDICT_NEG = ["a waste of time", "avoid it", "i want my money back", "one of the worst this year",
                "skip this one", "i nearly walked out", "not worth it"]
_VERDICT_NEU = ["it is what it is", "see it if you are curious", "your mileage may vary", "make up your own mind",
                "it runs about two hours", "it opens next week"]


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
def _read_local(path: str, column: str) -> list[str]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"task.path: file '{path}' does not exist; point task.path at a .jsonl or .csv file")
    if p.suffix == ".jsonl":
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    elif p.suffix == ".csv":
        with p.open(newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        raise ConfigError(f"task.path: unsupported file type '{p.suffix}'; use .jsonl or .csv")
    return _texts_from_rows(rows, column, str(p))


def _texts_from_rows(rows: list[dict], column: str, where: str) -> list[str]:
    if not rows:
        raise ConfigError(f"task.path: '{where}' has no rows; give it at least one review per line")
    missing = [i for i, r in enumerate(rows) if column not in r]
    if missing:
        raise ConfigError(f"task.text_column: column '{column}' missing in '{where}' (row {missing[0]}); set task.text_column to the column holding the reviews")
    empty = [i for i, r in enumerate(rows) if not str(r[column] or "").strip()]
    if empty:
        raise ConfigError(f"task.path: '{where}' has an empty '{column}' at row {empty[0]}; remove empty texts")
    return [" ".join(str(r[column]).split()) for r in rows]


def _load_imdb(path: str | None, column: str) -> tuple[list[str], list[str] | None]:
    """IMDb through `datasets` (the paper's preset): by hub name, or a local ``save_to_disk`` folder with the
    same columns. Returns (train, test) texts."""
    import datasets

    name = path or "stanfordnlp/imdb"
    ds = datasets.load_from_disk(name) if Path(name).exists() else datasets.load_dataset(name)
    train = _texts_from_rows(list(ds["train"]), column, f"{name}[train]")
    test = _texts_from_rows(list(ds["test"]), column, f"{name}[test]") if "test" in ds else None
    return train, test


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
    raise ConfigError(f"task.prompt_min_tokens: no training review has more than {lo} words to make a prompt from; "
                      "lower task.prompt_min_tokens or use longer reviews")


def heldout_prompts(texts: list[str], n: int, lo: int, hi: int, rng: random.Random, exclude: set[str]) -> list[str]:
    """``n`` distinct prompts from held-out reviews, none of them in ``exclude`` (the training prompts).

    Short prefixes repeat across reviews ("The plot was"), so a held-out review can yield a prompt that training
    also used; such candidates are skipped, and so are repeats, so that every evaluation prompt is new to every
    method and the bootstrap over prompts resamples independent units. Raises ConfigError when the held-out
    reviews cannot supply ``n`` of them.
    """
    out: list[str] = []
    seen = set(exclude)
    for i in range(20 * max(n, len(texts))):  # each review is tried with several prefix lengths
        candidate = _prompt(texts[i % len(texts)], lo, hi, rng)
        if candidate is not None and candidate not in seen:
            seen.add(candidate)
            out.append(candidate)
            if len(out) == n:
                return out
    raise ConfigError(f"task.n_eval_prompts: the held-out reviews give only {len(out)} distinct prompts that no training "
                      f"prompt equals (asked for {n}); lower task.n_eval_prompts or raise task.n_heldout")


def check_heldout(data: "TaskData") -> None:
    """Evaluation prompts must be disjoint from every training prompt (asserted whenever a task loads)."""
    shared = set(data.eval_prompts) & set(data.train_prompts)
    if shared:
        raise AssertionError(f"{len(shared)} evaluation prompts are also training prompts, e.g. {sorted(shared)[0]!r}")


def load_task(cfg: TaskConfig) -> TaskData:
    rng = random.Random(cfg.seed)
    if cfg.name == "reviews":
        texts = generate_reviews(cfg.n_train + cfg.n_heldout, cfg.seed)
        train, held = texts[: cfg.n_train], texts[cfg.n_train:]
    else:
        if cfg.name == "imdb":
            train_all, test = _load_imdb(cfg.path, cfg.text_column)
        else:
            train_all, test = _read_local(cfg.path, cfg.text_column), None
        rng.shuffle(train_all)
        if test is None:  # carve the held-out split from the one file
            if len(train_all) < 2:
                raise ConfigError(f"task.path: needs at least 2 reviews (got {len(train_all)}); add more rows")
            k = max(1, min(cfg.n_heldout, len(train_all) // 5))
            test, train_all = train_all[:k], train_all[k:]
        train, held = train_all[: cfg.n_train], test[: cfg.n_heldout]
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
