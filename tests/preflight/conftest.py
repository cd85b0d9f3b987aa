"""The battery's in-process fixtures (``cli``: the command line with training forbidden; ``checked``: validate +
preflight of the tiny config), shared by every test module of this folder."""

from tests.preflight.test_bad_inputs import base_raw, checked, cli, files  # noqa: F401 - fixtures
