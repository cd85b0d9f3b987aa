"""Cases found by trying main as a new user would (issue 25): each stops before work with exit status 2 and one
line, nothing trained, no folder made.

- a local model folder (``model.name``, ``policy``) whose tokenizer or generation config is damaged: before, its
  loader raised (a traceback, or a line after π_SFT had trained); now the preflight reads every JSON file of the
  folder and ``tokenizer.json`` with the ``tokenizers`` library;
- a number no 64-bit integer holds, in any section (it hung generating data, or trained for ever);
- a mapping where a list belongs (``study``, ``seeds``): OmegaConf's "Cannot merge DictConfig with ListConfig";
- an unquoted value with a letter beyond ASCII: the hint to quote it, as for '=' and ',';
- an input path (data, model, policy, preference file, gold classifier) that is a link looping or leading nowhere,
  or whose name is too long for the filesystem: said as that, with its key (it was "does not exist", or a line
  naming no key);
- a flag (``-m``, ``--cfg``) after the overrides: argparse's "unrecognized arguments" said as where to put it;
- a switch (a ``bool`` field of any schema) given 2, 'yes' or 1.5: OmegaConf read it as true (or false) without a
  word;
- a save_to_disk folder that cannot load (a cut dataset_dict.json or state.json, a split or Arrow file gone), given
  to ``task.path`` (task=local: "unsupported file type ''"; task=imdb: the bare JSON error) or ``preferences.path``:
  the file that is wrong is named."""

from __future__ import annotations

import dataclasses

import pytest

from tests.preflight.test_bad_inputs import GPT2, _model_folder, assert_stopped

pytestmark = pytest.mark.battery
CAUSAL = {**GPT2, "architectures": ["GPT2LMHeadModel"], "vocab_size": 400}
DAMAGE = {
    "tokenizer.json cut": ("tokenizer.json", '{"version": "1.0", "mod', "tokenizer.json' cannot be read"),
    "tokenizer.json not a tokenizer": ("tokenizer.json", "{}", "tokenizer.json' is not a tokenizer"),
    "tokenizer_config.json cut": ("tokenizer_config.json", '{"model_max', "tokenizer_config.json' cannot be read"),
    "generation_config.json cut": ("generation_config.json", "{", "generation_config.json' cannot be read"),
    "special_tokens_map.json not UTF-8": ("special_tokens_map.json", b"\xff\xfe", "special_tokens_map.json' cannot"),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
@pytest.mark.parametrize("role", ["model.name", "policy"])
def test_a_damaged_file_of_a_local_model_folder_stops_in_the_preflight(checked, tmp_path, role, damage):
    name, content, expected = damage
    folder = _model_folder(tmp_path / "given model", CAUSAL)
    path = folder / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    changes = {"model.name": str(folder)} if role == "model.name" else {"pipeline": {"name": "evaluate"}}
    if role == "policy":
        changes["pipeline"]["policy"] = str(folder)
    code, err = checked(changes)
    assert_stopped(code, err, f"{role}: '{folder / name}", tmp_path)
    assert expected in err[0]


@pytest.mark.parametrize(
    "argv, key",
    [
        (["task.n_train=99999999999999999999"], "task.n_train"),
        (["sft.epochs=1e30"], "sft.epochs"),
        (["seed=-99999999999999999999"], "seed"),
        (["pipeline=ppo", "pipeline.learning_rate=1e300"], "pipeline.learning_rate"),
        (["pipeline=dpo", "pipeline.max_steps=9223372036854775808"], "pipeline.max_steps"),
    ],
    ids=["a count", "epochs", "a negative seed", "a rate", "2**63 steps"],
)
def test_a_number_no_64_bit_integer_holds_is_refused(cli, tmp_path, argv, key):
    code, err = cli(argv)
    assert_stopped(code, err, f"{key}: ", tmp_path)
    assert "beyond what a 64-bit integer holds" in err[0]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["-m", "experiment=frontier", "study={pipeline: dpo}"], "study: is a mapping, but study takes a list"),
        (["-m", "experiment=frontier", "seeds={a: 1}"], "seeds: is a mapping, but seeds takes a list"),
    ],
    ids=["study", "seeds"],
)
def test_a_mapping_where_a_list_belongs_says_so(cli, tmp_path, argv, expected):
    code, err = cli(argv)
    assert_stopped(code, err, expected, tmp_path)


@pytest.mark.parametrize("value", ["/runs/modèle/policy", "/runs/模型/policy"], ids=["accent", "CJK"])
def test_an_unquoted_path_beyond_ascii_gets_the_hint_to_quote_it(cli, tmp_path, value):
    code, err = cli(["pipeline=evaluate", f"policy={value}"])
    assert_stopped(code, err, f"quote it: \"policy='{value}'\"", tmp_path)


# key -> (the changes that make the key read a path, given that path)
INPUT_PATHS = {
    "task.path": lambda p: {"task.name": "local", "task.path": p},
    "task.path (imdb)": lambda p: {"task.name": "imdb", "task.path": p},
    "model.name": lambda p: {"model.name": p},
    "policy": lambda p: {"pipeline": {"name": "evaluate", "policy": p}},
    "preferences.path": lambda p: {"preferences.source": "file", "preferences.path": p},
    "gold.name_or_path": lambda p: {"gold.kind": "hf_classifier", "gold.name_or_path": p},
}


@pytest.mark.parametrize("link, expected", [("dangling", "/nowhere', which does not exist"), ("loop", "loops back")])
@pytest.mark.parametrize("role", INPUT_PATHS)
def test_an_input_path_through_a_link_that_leads_nowhere_says_so(checked, tmp_path, links, role, link, expected):
    code, err = checked(INPUT_PATHS[role](str(links / link)))
    key = role.split(" ")[0]
    assert_stopped(code, err, f"{key}: '{links / link}' is a symbolic link", tmp_path)
    assert expected in err[0]


@pytest.mark.parametrize("role", INPUT_PATHS)
def test_an_input_path_with_a_name_too_long_names_its_key(checked, tmp_path, role):
    code, err = checked(INPUT_PATHS[role](str(tmp_path / ("n" * 300) / "data.jsonl")))
    assert_stopped(code, err, f"{role.split(' ')[0]}: the name 'nnnn", tmp_path)


def test_a_preference_file_through_a_dangling_link_from_the_command_line(cli, tmp_path, links):
    """The command line hashes a preference file for the job key before the preflight: the link is said first."""
    code, err = cli(["preferences.source=file", f"preferences.path={links / 'dangling'}"])
    assert_stopped(code, err, f"preferences.path: '{links / 'dangling'}' is a symbolic link", tmp_path)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["pipeline=dpo", "-m", "pipeline.beta=0.1,1"], "-m comes after an override, where it is not read; put -m (or"),
        (
            ["pipeline=dpo", "--multirun", "pipeline.beta=0.1,1"],
            "--multirun comes after an override, where it is not read; put --multirun (or -m) before",
        ),
        (["seed=1", "--cfg", "job"], "--cfg comes after an override"),
    ],
    ids=["-m", "--multirun", "--cfg"],
)
def test_a_flag_after_the_overrides_says_to_put_it_first(cli, tmp_path, argv, expected):
    code, err = cli(argv)
    assert_stopped(code, err, f"command line: {expected}", tmp_path)


def _switches(cls: type, prefix: str) -> list[str]:
    """The dotted keys of every ``bool`` field of the schema ``cls`` and of the sections it holds."""
    found = []
    for f in dataclasses.fields(cls):
        if f.type in ("bool", bool):
            found.append(prefix + f.name)
        elif dataclasses.is_dataclass(f.default_factory):
            found += _switches(f.default_factory, f"{prefix}{f.name}.")
    return found


def _every_switch() -> dict[str, list[str]]:
    """id -> the overrides that select the schema and set the switch to 2; each schema class's switches once."""
    from harness.config import Sections
    from pipelines.registry import METHODS

    cases = {key: [f"{key}=2"] for key in _switches(Sections, "")}
    seen = set()
    for name, method in METHODS.items():
        for key in _switches(method.schema, "pipeline."):
            if (method.schema, key) not in seen:
                seen.add((method.schema, key))
                cases[f"{name}: {key}"] = [f"pipeline={name}", f"{key}=2"]
    return cases


SWITCHES = _every_switch()


def test_the_walk_finds_the_switches():
    assert {"stages_per_seed", "overwrite", "model.trust_remote_code", "gold.trust_remote_code"} <= set(SWITCHES)
    assert "ppo: pipeline.whiten_rewards" in SWITCHES and "evaluate: pipeline.trust_remote_code" in SWITCHES


@pytest.mark.parametrize("argv", SWITCHES.values(), ids=SWITCHES.keys())
def test_a_switch_given_a_number_is_refused(cli, tmp_path, argv):
    key = argv[-1].split("=")[0]
    code, err = cli(argv)
    assert_stopped(code, err, f"{key}: '2' is not true or false", tmp_path)
    assert f"set {key}=true or {key}=false" in err[0]


@pytest.mark.parametrize(
    "argv, shown",
    [
        (["stages_per_seed=yes"], "'yes'"),
        (["overwrite=1.5"], "overwrite: "),
        (["-m", "stages_per_seed=false,2"], "'2' is not true or false"),
        (["-m", "experiment=frontier", "study=[['pipeline=dpo','stages_per_seed=3']]", "seeds=[0]"], "'3' is not"),
    ],
    ids=["a word", "a fraction", "a sweep", "a study entry"],
)
def test_a_switch_given_anything_but_true_or_false_is_refused(cli, tmp_path, argv, shown):
    code, err = cli(argv)
    assert_stopped(code, err, shown, tmp_path)


@pytest.mark.parametrize("value", ["true", "false", "True", "FALSE", "0", "1", "'true'"])
def test_a_switch_takes_true_false_0_and_1(value):
    from harness.app.cli import check_bool_overrides
    from tests.conftest import compose

    overrides = [f"stages_per_seed={value}"]
    check_bool_overrides(compose(overrides), overrides)  # raises ConfigError on a refused value


def _saved(folder, damage: str):
    """A save_to_disk folder of 60 reviews (a DatasetDict with a train split, or one Dataset), damaged one way."""
    from datasets import Dataset, DatasetDict

    rows = {"text": [f"review {i}: the plot was fine" for i in range(60)]}
    rows |= {"prompt": ["Q"] * 60, "chosen": ["Q good"] * 60, "rejected": ["Q bad"] * 60}
    single = damage.startswith("single")
    (Dataset.from_dict(rows) if single else DatasetDict({"train": Dataset.from_dict(rows)})).save_to_disk(str(folder))
    state = folder / "state.json" if single else folder / "train" / "state.json"
    if damage == "dataset_dict.json cut":
        (folder / "dataset_dict.json").write_text('{"spl')
    elif damage == "single: state.json cut":
        state.write_text(state.read_text()[:5])
    elif damage == "split folder gone":
        import shutil

        shutil.rmtree(folder / "train")
    elif damage == "arrow file gone":
        next(state.parent.glob("*.arrow")).unlink()
    return folder


SAVED_DAMAGE = {
    "dataset_dict.json cut": "dataset_dict.json' cannot be read (JSONDecodeError",
    "single: state.json cut": "state.json' cannot be read (JSONDecodeError",
    "split folder gone": "train/state.json' is missing",
    "arrow file gone": ".arrow' is missing",
}


@pytest.mark.parametrize("damage", SAVED_DAMAGE)
@pytest.mark.parametrize("role", ["task=local", "task=imdb", "preferences.path"])
def test_a_save_to_disk_folder_that_cannot_load_names_what_is_wrong(checked, tmp_path, role, damage):
    folder = _saved(tmp_path / "saved", damage)
    changes = {
        "task=local": {"task.name": "local", "task.path": str(folder)},
        "task=imdb": {"task.name": "imdb", "task.path": str(folder)},
        "preferences.path": {"preferences.source": "file", "preferences.path": str(folder)},
    }[role]
    code, err = checked(changes)
    key = role if role == "preferences.path" else "task.path"
    assert_stopped(code, err, f"{key}: '{folder}' ", tmp_path)
    assert SAVED_DAMAGE[damage] in err[0] and "unsupported file type" not in err[0]


def test_a_whole_save_to_disk_folder_given_to_task_local_says_to_use_task_imdb(checked, tmp_path):
    folder = _saved(tmp_path / "saved", "none")
    code, err = checked({"task.name": "local", "task.path": str(folder)})
    assert_stopped(code, err, "task.path: ", tmp_path)
    assert "holds a save_to_disk dataset: set task=imdb to read it" in err[0]
