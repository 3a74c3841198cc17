"""Figures and a `report.md` from a run folder's tables, written beside them.

python tuning/report.py results/<name>
"""

import sys
from pathlib import Path

# Run as a script, Python puts tuning/ first on sys.path: the repository root instead, so a
# user's module never meets a module of the project's packages under its own name.
if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402

from tuning.config import ConfigError  # noqa: E402
from tuning.results.report import ReportError, write_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder, e.g. results/<name>")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.run_dir)
    except (ReportError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {written[-1]} ({len(written) - 1} figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
