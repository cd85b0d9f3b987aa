"""The battery's in-process fixtures (``cli``: the command line with training forbidden; ``checked``: validate +
preflight of the tiny config; ``links``: a folder holding a dangling link and a link to itself), shared by every test
module of this folder."""

import pytest

from tests.preflight.test_bad_inputs import base_raw, checked, cli, files  # noqa: F401 - fixtures


@pytest.fixture
def links(tmp_path):
    # Real link conditions, not simulated errors: os.stat on them raises ENOENT and ELOOP.
    d = tmp_path / "links"
    d.mkdir()
    (d / "dangling").symlink_to(d / "nowhere")
    (d / "loop").symlink_to(d / "loop")
    return d
