"""Do short runs rank configurations as the full budget does?

    python benchmarks/rank_correlation.py --data-dir /tmp/cifar10 --configs 10

Draws `--configs` configurations from a search's space (`--config`, by default
configs/optuna.yaml; Optuna's random sampler, seeded) and trains each, without Ray, one thread
per process and two processes at a time, at every budget successive halving uses (2, 7 and 20
epochs for the default config), each with the schedule fitted to its budget as the search fits
it (a warm-up keeps its share of the run). For each smaller budget it prints Spearman's rank
correlation with the full budget's validation accuracy:
- fitted: the run of that budget, at its end (how `scheduler.kind: halving` compares);
- mid-run: the full run at that epoch, halfway down its schedule (how Tune's ASHA compares);
- continued: a chain that trains the first budget, then continues from there, weights and
  optimiser state kept, to each next budget with its schedule restarted over the epochs added
  (warm restarts): how halving would compare if a promoted trial continued from its checkpoint
  instead of training again from scratch (`--no-chain` leaves it out);
- warm-up unscaled: where the configurations warm up, the run of that budget with the warm-up
  the full budget's, in epochs (how halving compared before it scaled warm-ups).
For the full budget it also compares the chain's end with the from-scratch run: Spearman, and
the mean and range of the difference in validation accuracy. The chain's first budget is the
fitted run of that budget.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)


def train(args: tuple[list[dict], object]) -> list[float]:
    """Val acc after each epoch of one run (one thread) through `segments`, each a trial's
    settings for the epochs it adds: the first from scratch, each next one continued from the
    last with its own schedule (one segment: an ordinary run). `data`: a DataConfig."""
    import torch

    from trainable.data import load_dataset
    from trainable.loop import Training
    from trainable.settings import TrialConfig

    segments, data = args
    torch.set_num_threads(1)
    bundle = load_dataset(data)
    training = Training(TrialConfig.model_validate(segments[0]), bundle, torch.device("cpu"))
    curve = []
    for settings in segments:
        # The schedule sees a run of the added epochs, starting now.
        training.trial = TrialConfig.model_validate(settings)
        training.epoch = 0
        for _ in range(training.trial.epochs):
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

    from trainable.schedules import warmup_for
    from tuning.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--configs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "optuna.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-chain", action="store_true", help="leave the continued chain out")
    parser.add_argument("--out", type=Path, default=Path("/tmp/rank-correlation.json"))
    args = parser.parse_args()
    config = load_config(args.config, args.set)
    data = config.data.model_copy(update={"dir": args.data_dir})
    full = config.trial.epochs
    budgets = [*config.scheduler.rungs(full), full]
    configs = draw(config, args.configs, args.seed)
    warms = any(c["warmup"] for c in configs)

    def fitted(c: dict, epochs: int) -> dict:
        return {**c, "epochs": epochs, "warmup": warmup_for(full, c["warmup"], epochs)}

    # Each configuration's runs, by name: the segments each trains.
    runs: dict[tuple[int, str], list[dict]] = {}
    for i, c in enumerate(configs):
        first = budgets[0]
        if args.no_chain:
            runs[i, f"fitted {first}"] = [fitted(c, first)]
        else:
            spans = zip([0, *budgets[:-1]], budgets, strict=True)
            runs[i, "chain"] = [fitted(c, end - start) for start, end in spans]
        for budget in budgets[1:]:
            runs[i, f"fitted {budget}"] = [fitted(c, budget)]
        for budget in budgets[:-1] if warms else []:
            runs[i, f"unscaled {budget}"] = [{**c, "epochs": budget}]
    with ProcessPoolExecutor(2) as pool:
        curves = dict(zip(runs, pool.map(train, [(r, data) for r in runs.values()]), strict=True))

    def at(name: str, epoch: int) -> list[float]:
        return [curves[i, name][epoch - 1] for i in range(len(configs))]

    first_run = f"fitted {budgets[0]}" if args.no_chain else "chain"
    final = at(f"fitted {full}", full)
    rows = []
    for budget in budgets[:-1]:
        fitted_run = first_run if budget == budgets[0] else f"fitted {budget}"
        row = {
            "budget": budget,
            "fitted": spearmanr(at(fitted_run, budget), final).statistic,
            "mid_run": spearmanr(at(f"fitted {full}", budget), final).statistic,
        }
        if not args.no_chain:
            row["continued"] = spearmanr(at("chain", budget), final).statistic
        if warms:
            row["unscaled"] = spearmanr(at(f"unscaled {budget}", budget), final).statistic
        rows.append(row)
    result = {"configs": configs, "curves": [[k, v] for k, v in curves.items()], "rows": rows}
    print(
        f"{len(configs)} configurations, full budget {full} epochs; Spearman with the full budget:"
    )
    columns = [k for k in rows[0] if k != "budget"]
    print(f"| budget | {' | '.join(columns)} |\n|---|{'---|' * len(columns)}")
    for row in rows:
        print(f"| {row['budget']} epochs | {' | '.join(f'{row[k]:.2f}' for k in columns)} |")
    if not args.no_chain:
        ends = at("chain", full)
        gaps = [end - scratch for end, scratch in zip(ends, final, strict=True)]
        result["full"] = {
            "spearman": spearmanr(ends, final).statistic,
            "mean_gap": sum(gaps) / len(gaps),
            "gaps": [min(gaps), max(gaps)],
        }
        print(
            f"continued to {full} epochs against from scratch: Spearman "
            f"{result['full']['spearman']:.2f}, val acc {result['full']['mean_gap']:+.4f} on "
            f"average ({min(gaps):+.4f} to {max(gaps):+.4f})"
        )
    args.out.write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
