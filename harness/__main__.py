"""``python -m harness <hydra overrides>``: compose, validate, run one pipeline (``-m`` for sweeps)."""

from harness.app.cli import main

if __name__ == "__main__":
    main()
