"""The original learning-rate experiment as a Ray Tune grid, with the original's table beside ours.

python tuning/run_grid.py --data-dir /tmp/cifar10            # 3 lrs × 3 seeds, 5 epochs
python tuning/run_grid.py --config configs/grid-original.yaml --data-dir /tmp/cifar10
python tuning/run_grid.py --smoke                             # 2 tiny trials, synthetic data
"""

import sys

from tuning.cli import main

if __name__ == "__main__":
    sys.exit(main("configs/grid.yaml"))
