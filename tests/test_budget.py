"""Where a search's budget went: its rungs, the trials that reached them, the time on trials
stopped early, on the console and in report.md."""

import pyarrow as pa
import pytest

from tuning.config import ExperimentConfig
from tuning.config.schema import SchedulerConfig
from tuning.results.report import report_markdown
from tuning.results.summary import budget_lines, search_summary


@pytest.mark.parametrize(
    "scheduler, epochs, rungs",
    [
        ({"kind": "asha", "grace_period": 2, "reduction_factor": 3}, 10, [2, 6]),
        ({"kind": "asha", "grace_period": 1, "reduction_factor": 2}, 3, [1, 2]),
        ({"kind": "asha", "grace_period": 1, "reduction_factor": 3}, 9, [1, 3]),  # 9 is the end
        ({"kind": "median", "grace_period": 2}, 10, []),
    ],
)
def test_asha_compares_trials_at_its_milestones(scheduler, epochs, rungs):
    assert SchedulerConfig(**scheduler).rungs(epochs) == rungs


def trial(trial_id: str, status: str, epochs: int, seconds: float) -> dict:
    return {
        "trial_id": trial_id,
        "status": status,
        "epochs_completed": epochs,
        "epochs": 10,
        "train_time_s": seconds,
        "final_val_acc": 0.4 + epochs / 100,
        "test_acc": None,
        "model": "mlp",
        "lr": 0.001,
    }


TRIALS = [
    trial("a", "early_stopped", 2, 20.0),
    trial("b", "early_stopped", 2, 20.0),
    trial("c", "early_stopped", 6, 60.0),
    trial("d", "completed", 10, 100.0),
]


def test_the_budget_lines_count_rungs_whole_budgets_and_time_on_stopped_trials():
    assert budget_lines(TRIALS, [2, 6], 10) == [
        "epochs trained: 20 of 40 without early stopping (50% saved)",
        "reached: 4 epoch 2, 2 epoch 6, 1 their whole budget (of 4 trials)",
        "training time: 50% on trials stopped early (100 of 200 s)",
    ]


def test_the_console_and_the_report_say_where_the_budget_went():
    config = ExperimentConfig.model_validate(
        {
            "trial": {"epochs": 10},
            "search": {"kind": "optuna", "space": {"lr": {"loguniform": [1e-4, 1e-2]}}},
            "scheduler": {"kind": "asha", "grace_period": 2, "reduction_factor": 3},
        }
    )
    summary = search_summary(pa.Table.from_pylist(TRIALS), "d", 0.5, 10, "val_acc", rungs=[2, 6])
    assert "reached: 4 epoch 2, 2 epoch 6, 1 their whole budget" in summary
    report = report_markdown("run", TRIALS, config, [], [])
    section = report.split("## How the search spent its budget")[1]
    assert "- training time: 50% on trials stopped early" in section
