"""``harness.app.jobs.warm_up``: what a study's worker processes import while the study's configs are checked."""

import sys

from harness.app import jobs


def test_warm_up_imports_the_modules_quietly_and_skips_what_cannot_import(tmp_path, monkeypatch, capfd):
    probe = "warm_probe_module"
    # a module that writes on import to both file descriptors (in a worker process sys.stdout and sys.stderr, and so
    # the logging handlers, write to them too; pytest's capture replaces the Python streams, so they are not used here)
    (tmp_path / f"{probe}.py").write_text("import os\nos.write(1, b'fd out\\n')\nos.write(2, b'fd err\\n')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, probe, raising=False)
    monkeypatch.setattr(jobs, "WARM_MODULES", ("warm_module_that_does_not_exist", probe))

    jobs.warm_up(("no_such_method",))

    assert probe in sys.modules  # imported, after the one that could not be
    assert capfd.readouterr() == ("", "")  # nothing it printed reached the terminal
    print("after")  # and the terminal is back
    print("after err", file=sys.stderr)
    assert capfd.readouterr() == ("after\n", "after err\n")


def test_warm_up_imports_the_runner_of_each_method_named(monkeypatch):
    imported = []
    monkeypatch.setattr(jobs, "WARM_MODULES", ())
    monkeypatch.setattr(jobs.importlib, "import_module", imported.append)
    jobs.warm_up(("dpo", "ppo", "not_a_method"))
    assert imported == ["pipelines.dpo", "pipelines.ppo"]
