"""The original learning-rate experiment as a Ray Tune grid, with the original's table beside ours.

python tuning/run_grid.py --data-dir /tmp/cifar10            # 3 lrs × 3 seeds, 5 epochs
python tuning/run_grid.py --config configs/grid-original.yaml --data-dir /tmp/cifar10
python tuning/run_grid.py --smoke                             # 2 tiny trials, synthetic data
"""

import sys
from pathlib import Path

# Run as a script, Python puts tuning/ first on sys.path: the repository root instead, so a
# user's module never meets a module of the project's packages under its own name.
if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from tuning.run.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("configs/grid.yaml"))
