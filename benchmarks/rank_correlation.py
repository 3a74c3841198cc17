"""Do short runs rank configurations as the full budget does?

    python benchmarks/rank_correlation.py --data-dir /tmp/cifar10 --configs 12

Draws `--configs` configurations from the default search's space (configs/optuna.yaml, Optuna's
random sampler, seeded) and trains each, without Ray, one thread per process and two processes
at a time, at every budget successive halving uses (2, 7 and 20 epochs for that config), each
with the schedule fitted to its budget. For each smaller budget it prints Spearman's rank
correlation with the full budget's validation accuracy, two ways:
- fitted: the run of that budget, at its end (how `scheduler.kind: halving` compares);
- mid-run: the full run at that epoch, halfway down its schedule (how Tune's ASHA compares).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)


def train(args: tuple[dict, str]) -> list[float]:
    """Val acc after each epoch of one run of `settings` (one thread)."""
    import torch

    from trainable.data import DataConfig, load_dataset
    from trainable.loop import Training
    from trainable.settings import TrialConfig

    settings, data_dir = args
    torch.set_num_threads(1)
    data = load_dataset(DataConfig(dir=data_dir))
    training = Training(TrialConfig.model_validate(settings), data, torch.device("cpu"))
    curve = []
    for _ in range(settings["epochs"]):
        training.train_epoch()
        curve.append(training.evaluate("val")["val_acc"])
    return curve


def draw(config, count: int, seed: int) -> list[dict]:
    import optuna

    from tuning.config.keys import nested
    from tuning.config.space import optuna_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    space = optuna_space(config)
    base = config.trial.model_dump()
    return [{**base, **nested(study.ask(space).params, sep="/")} for _ in range(count)]


def main() -> None:
    from scipy.stats import spearmanr

    from tuning.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--configs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/rank-correlation.json"))
    args = parser.parse_args()
    config = load_config(ROOT / "configs" / "optuna.yaml")
    full = config.trial.epochs
    budgets = [*config.scheduler.rungs(full), full]
    configs = draw(config, args.configs, args.seed)
    jobs = [({**c, "epochs": b}, args.data_dir) for c in configs for b in budgets]
    with ProcessPoolExecutor(2) as pool:
        curves = list(pool.map(train, jobs))
    by_config = [curves[i * len(budgets) : (i + 1) * len(budgets)] for i in range(len(configs))]
    final = [runs[-1][-1] for runs in by_config]
    rows = []
    for index, budget in enumerate(budgets[:-1]):
        fitted = [runs[index][-1] for runs in by_config]
        mid_run = [runs[-1][budget - 1] for runs in by_config]
        rows.append(
            {
                "budget": budget,
                "fitted": spearmanr(fitted, final).statistic,
                "mid_run": spearmanr(mid_run, final).statistic,
            }
        )
    args.out.write_text(json.dumps({"configs": configs, "curves": by_config, "rows": rows}))
    print(
        f"{len(configs)} configurations, full budget {full} epochs; Spearman with the full budget:"
    )
    print("| budget | fitted schedule, at its end | full run, at that epoch |\n|---|---|---|")
    for row in rows:
        print(f"| {row['budget']} epochs | {row['fitted']:.2f} | {row['mid_run']:.2f} |")


if __name__ == "__main__":
    main()
