"""Filesystem conditions (issue 25 step 3): one line naming the path, exit 2, before work where it can be known before
work. Real ones where they can be made (a symbolic-link loop, a dangling link, a name too long); what root cannot
stage (a read-only folder, a full disk) by raising the real OSError at the write."""

from __future__ import annotations

import errno
import os

import pytest

from harness.preflight.errors import user_error
from tests.preflight.test_bad_inputs import assert_stopped

pytestmark = pytest.mark.battery


@pytest.mark.parametrize(
    "key, name, expected",
    [
        ("cache_dir", "dangling", "which does not exist"),
        ("cache_dir", "loop", "loops back on itself"),
        ("hydra.run.dir", "dangling", "which does not exist"),
        ("hydra.run.dir", "loop", "loops back on itself"),
    ],
)
def test_a_link_that_leads_nowhere_is_one_line_before_work(cli, tmp_path, links, key, name, expected):
    code, err = cli([f"{key}={links / name}/sub"])
    assert_stopped(code, err, f"{key}: '{links / name}' is a symbolic link", tmp_path)
    assert expected in err[0]


def test_a_sweep_folder_through_a_dangling_link(cli, tmp_path, links):
    code, err = cli(["-m", "seed=0,1", f"hydra.sweep.dir={links / 'dangling'}"])
    assert_stopped(code, err, "hydra.sweep.dir: ", tmp_path)


@pytest.mark.parametrize("key", ["cache_dir", "hydra.run.dir"])
def test_a_name_longer_than_the_filesystem_allows(cli, tmp_path, key):
    code, err = cli([f"{key}={tmp_path / ('n' * 300)}"])
    assert_stopped(code, err, f"{key}: the name 'nnnn", tmp_path)
    assert "more than the" in err[0]


@pytest.mark.parametrize(
    "code, expected",
    [
        (errno.EROFS, "output: cannot write"),
        (errno.ENOSPC, "output: cannot write"),
        (errno.ELOOP, "points back into itself"),
        (errno.ENAMETOOLONG, "longer than the filesystem allows"),
        (errno.EIO, "I/O error"),
    ],
    ids=["EROFS", "ENOSPC", "ELOOP", "ENAMETOOLONG", "EIO"],
)
def test_an_oserror_at_a_write_is_one_line_naming_the_path(code, expected):
    line = user_error(OSError(code, os.strerror(code), "/cache/stage/model.safetensors"))
    assert line is not None and "'/cache/stage/model.safetensors'" in line and expected in line
    assert "\n" not in line


def test_an_oserror_at_a_stage_write_stops_the_command_in_one_line(cli, tmp_path, monkeypatch):
    """A read-only stage folder (EROFS at the write, which root cannot stage with chmod) through the command line:
    exit 2, one line naming the path."""
    import harness.app.cli as app

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "ro" / "sft-stage"))

    monkeypatch.setattr(app, "run_job", read_only)
    code, err = cli([])
    assert code == 2 and len(err) == 1 and f"'{tmp_path / 'ro' / 'sft-stage'}'" in err[0], err


def test_an_oserror_without_a_path_keeps_its_traceback():
    assert user_error(OSError(errno.EIO, "I/O error")) is None  # nothing to name: a bug, or the machine's
