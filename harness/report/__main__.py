"""``python -m harness.report <sweep folder>``: remake a sweep's frontier report on demand."""

from harness.report.frontier import main

if __name__ == "__main__":
    main()
