"""``python -m harness.report`` (harness/app/report_cli.py): a user error is one line on stderr, exit status 2."""

from __future__ import annotations

import json

import pytest

from harness.app.report_cli import main

pytestmark = pytest.mark.battery


def _stopped(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0] and "usage:" not in err[0]
    return err[0]


def test_a_folder_that_does_not_exist(tmp_path, capsys):
    assert f"'{tmp_path / 'nope'}' does not exist" in _stopped(capsys, [str(tmp_path / "nope")])


def test_a_file_for_a_folder(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    assert "is a file" in _stopped(capsys, [str(tmp_path / "f")])


def test_a_folder_without_rows(tmp_path, capsys):
    assert "holds no result rows" in _stopped(capsys, [str(tmp_path)])
    assert not (tmp_path / "summary.md").exists()


def test_a_damaged_row_names_its_file_and_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "points.jsonl").write_text(json.dumps({"method": "dpo"}) + "\n")
    line = _stopped(capsys, [str(tmp_path)])
    assert "points.jsonl:1: missing key(s)" in line


@pytest.mark.parametrize(
    "args, expected",
    [(["--kl", "x"], "argument --kl: invalid float"), (["--kl", "nan"], "--kl: nan"), (["--n-boot", "0"], "--n-boot")]
    + [(["--no-such-flag"], "unrecognized arguments"), ([], "the following arguments are required")],
    ids=["kl not a number", "kl nan", "no bootstrap", "unknown flag", "no folder"],
)
def test_a_bad_argument(tmp_path, capsys, args, expected):
    assert expected in _stopped(capsys, [str(tmp_path), *args] if args else [])


def test_a_folder_whose_only_row_is_cut_is_one_line_that_says_so(tmp_path, capsys):
    # the note on the skipped cut line is part of the refusal, not a line of its own before it
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "points.jsonl").write_text('{"method": "dpo", "kl": 0.1')
    line = _stopped(capsys, [str(tmp_path)])
    assert "holds no result rows" in line and "1 cut last line(s) skipped" in line and "points.jsonl:1" in line


def test_a_row_file_that_is_not_utf8_is_named(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "points.jsonl").write_bytes(b'{"method": "dpo"}\n\xa0\xff garbage\n')
    line = _stopped(capsys, [str(tmp_path)])
    assert f"{tmp_path / 'run' / 'points.jsonl'}:2: not UTF-8 text" in line


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: (d / "link").symlink_to(d / "gone"), "is a symbolic link to '"),
        (lambda d: (d / "link").symlink_to(d / "link"), "is a symbolic link that loops back on itself"),
    ],
    ids=["dangling", "loop"],
)
def test_a_folder_given_as_a_link_that_leads_nowhere_says_so(tmp_path, capsys, make, expected):
    make(tmp_path)
    line = _stopped(capsys, [str(tmp_path / "link")])
    assert line.startswith(f"error: folder: '{tmp_path / 'link'}' ") and expected in line, line
    assert "does not exist; give" not in line


def test_a_folder_name_too_long_names_the_argument(tmp_path, capsys):
    line = _stopped(capsys, [str(tmp_path / ("n" * 300))])
    assert line.startswith("error: folder: the name 'nnnn") and "more than the" in line, line
