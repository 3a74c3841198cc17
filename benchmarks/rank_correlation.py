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


def train(args: tuple[dict, list[int], str]) -> list[float]:
    """Val acc after each epoch of one run of `settings` (one thread) through `budgets`: the
    first from scratch, each next one continued with the schedule restarted over its added
    epochs (one budget: an ordinary run)."""
    import torch

    from trainable.data import DataConfig, load_dataset
    from trainable.loop import Training
    from trainable.settings import TrialConfig

    settings, budgets, data_dir = args
    torch.set_num_threads(1)
    data = load_dataset(DataConfig(dir=data_dir))
    training = Training(TrialConfig.model_validate(settings), data, torch.device("cpu"))
    curve, done = [], 0
    for budget in budgets:
        # The schedule sees a run of the added epochs, starting now.
        training.trial = TrialConfig.model_validate({**settings, "epochs": budget - done})
        training.epoch = 0
        for _ in range(budget - done):
            training.train_epoch()
            curve.append(training.evaluate("val")["val_acc"])
        done = budget
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
    # Per configuration: the chain through every budget, then each later budget from scratch.
    runs = [budgets, *([b] for b in budgets[1:])]
    jobs = [({**c, "epochs": full}, r, args.data_dir) for c in configs for r in runs]
    with ProcessPoolExecutor(2) as pool:
        curves = list(pool.map(train, jobs))
    by_config = [curves[i * len(runs) : (i + 1) * len(runs)] for i in range(len(configs))]
    chains = [curves[0] for curves in by_config]
    # Each budget's run with its schedule fitted to it: the chain's first part is the first.
    fitted_at = {budgets[0]: [chain[budgets[0] - 1] for chain in chains]}
    for index, budget in enumerate(budgets[1:], start=1):
        fitted_at[budget] = [curves[index][-1] for curves in by_config]
    final = fitted_at[full]
    rows = [
        {
            "budget": budget,
            "fitted": spearmanr(fitted_at[budget], final).statistic,
            "mid_run": spearmanr([c[-1][budget - 1] for c in by_config], final).statistic,
            "continued": spearmanr([chain[budget - 1] for chain in chains], final).statistic,
        }
        for budget in budgets[:-1]
    ]
    ends = [chain[-1] for chain in chains]
    gaps = [end - scratch for end, scratch in zip(ends, final, strict=True)]
    at_full = {
        "spearman": spearmanr(ends, final).statistic,
        "mean_gap": sum(gaps) / len(gaps),
        "gaps": [min(gaps), max(gaps)],
    }
    args.out.write_text(
        json.dumps({"configs": configs, "curves": by_config, "rows": rows, "full": at_full})
    )
    print(
        f"{len(configs)} configurations, full budget {full} epochs; Spearman with the full budget:"
    )
    print("| budget | fitted schedule, at its end | full run, at that epoch | continued |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['budget']} epochs | {row['fitted']:.2f} | {row['mid_run']:.2f} "
            f"| {row['continued']:.2f} |"
        )
    print(
        f"continued to {full} epochs against from scratch: Spearman {at_full['spearman']:.2f}, "
        f"val acc {at_full['mean_gap']:+.4f} on average ({at_full['gaps'][0]:+.4f} to "
        f"{at_full['gaps'][1]:+.4f})"
    )


if __name__ == "__main__":
    main()
