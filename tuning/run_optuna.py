"""An Optuna search (a Gaussian process or TPE) inside Ray Tune, with early stopping if asked;
the choice judged once on test.

python tuning/run_optuna.py --data-dir /tmp/cifar10
python tuning/run_optuna.py --data-dir /tmp/cifar10 --set scheduler.kind=median
python tuning/run_optuna.py --smoke                     # 2 tiny trials, synthetic data
optuna-dashboard sqlite:///results/<name>/study.db      # the study, live or after
"""

import sys
from pathlib import Path

# Run as a script, Python puts tuning/ first on sys.path: the repository root instead, so a
# user's module never meets a module of the project's packages under its own name.
if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from tuning.run.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("configs/optuna.yaml"))
