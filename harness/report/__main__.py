"""``python -m harness.report <sweep folder>``: remake a sweep's frontier report on demand.

The command itself is the composition root's (``harness.app.report_cli``: it hands the report the method registry);
this shim is the one place under ``harness/report`` that imports ``harness.app``.
"""

from harness.app.report_cli import main

if __name__ == "__main__":
    main()
