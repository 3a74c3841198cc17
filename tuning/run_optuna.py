"""An Optuna (TPE) search inside Ray Tune with early stopping; the choice judged once on test.

python tuning/run_optuna.py --data-dir /tmp/cifar10
python tuning/run_optuna.py --data-dir /tmp/cifar10 --set scheduler.kind=median
python tuning/run_optuna.py --smoke                     # 2 tiny trials, synthetic data
optuna-dashboard sqlite:///results/<name>/study.db      # the study, live or after
"""

import sys

from tuning.cli import main

if __name__ == "__main__":
    sys.exit(main("configs/optuna.yaml"))
