"""report.py on small runs' tables: every figure a real PNG, a report.md that links them."""

import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuning.config import ExperimentConfig
from tuning.report import main
from tuning.results.groups import grid_groups, groups_table
from tuning.results.report import write_report
from tuning.results.tables import write_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(run_dir, search: dict, rows: list[tuple]) -> None:
    """Tables as a run writes them: (trial, lr, optimizer, epochs run, final val, test)."""
    config = ExperimentConfig.model_validate({"name": "small", "search": search})
    epochs, trials = [], []
    for trial_id, lr, optimizer, ran, final, test in rows:
        for epoch in range(1, ran + 1):
            acc = final * epoch / ran
            epochs.append(
                {
                    "trial_id": trial_id,
                    "epoch": epoch,
                    "train_loss": 2 - acc,
                    "train_acc": acc,
                    "val_loss": 2.1 - acc,
                    "val_acc": acc,
                    "epoch_time_s": 1.0,
                    "lr": lr,
                    "optimizer": optimizer,
                }
            )
        trials.append(
            {
                "trial_id": trial_id,
                "status": "completed" if ran == 3 else "early_stopped",
                "lr": lr,
                "optimizer": optimizer,
                "epochs_completed": ran,
                "best_val_acc": final,
                "final_val_acc": final,
                "test_acc": test,
                "train_time_s": float(ran),
            }
        )
    run_dir.mkdir()
    write_run(run_dir, pa.Table.from_pylist(epochs), pa.Table.from_pylist(trials), config, {})


def assert_pngs(run_dir, names):
    for name in names:
        data = (run_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name  # a drawn figure
    report = (run_dir / "report.md").read_text()
    for name in names:
        assert f"]({name})" in report


def test_grid_report(tmp_path):
    rows = [
        (f"t{i}", lr, "adam", 3, 0.4 + 0.01 * i, 0.41 + 0.01 * i)
        for i, lr in enumerate([1e-3, 1e-3, 1e-4, 1e-4, 1e-2, 1e-2])
    ]
    fake_run(tmp_path / "g", {"grid": {"lr": [1e-3, 1e-4, 1e-2]}}, rows)
    written = write_report(tmp_path / "g")
    assert_pngs(tmp_path / "g", ["learning_curves.png", "accuracy_vs_lr.png"])
    assert len(written) == 3
    assert "| t5 | completed | 0.01 |" in (tmp_path / "g" / "report.md").read_text()


def test_an_interrupted_grid_plots_its_validation_accuracy(tmp_path):
    from tuning.results.report import accuracy_vs_lr

    # Every trial cut short: no test accuracy yet, so the figure shows validation accuracy
    # (it once drew nothing, and matplotlib warned about an empty legend on the console).
    rows = [(f"t{i}", lr, "adam", 2, 0.4 + 0.01 * i, None) for i, lr in enumerate([1e-3, 1e-4])]
    fake_run(tmp_path / "i", {"grid": {"lr": [1e-3, 1e-4]}}, rows)
    trials = pq.read_table(tmp_path / "i" / "trials.parquet").to_pylist()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = accuracy_vs_lr(trials)
    (axes,) = figure.axes
    assert axes.get_ylabel() == "final val acc"
    assert len(axes.collections[0].get_offsets()) == 2  # both trials drawn


def test_search_report_has_optuna_figures(tmp_path):
    space = {"lr": {"loguniform": [1e-4, 1e-2]}, "optimizer": {"choice": ["adam", "sgd"]}}
    rows = [
        ("a", 1e-3, "adam", 3, 0.5, 0.49),
        ("b", 3e-4, "sgd", 1, 0.3, None),
        ("c", 5e-3, "adam", 2, 0.4, None),
        ("d", 2e-4, "sgd", 1, 0.35, None),
    ]
    fake_run(tmp_path / "s", {"kind": "optuna", "space": space}, rows)
    write_report(tmp_path / "s")
    assert_pngs(
        tmp_path / "s",
        [
            "learning_curves.png",
            "accuracy_vs_lr.png",
            "optimization_history.png",
            "param_importances.png",
        ],
    )
    report = (tmp_path / "s" / "report.md").read_text()
    table = report.split("## Which dimensions mattered")[1].split("##")[0]
    shares = {
        line.split("|")[1].strip(): float(line.split("|")[2])
        for line in table.splitlines()
        if line.startswith("| ") and "dimension" not in line
    }
    assert set(shares) == {"lr", "optimizer"}  # every searched dimension, whatever the family
    assert sum(shares.values()) == pytest.approx(1, abs=0.01)


def test_one_trial_gets_no_importances(tmp_path):
    space = {"lr": {"loguniform": [1e-4, 1e-2]}}
    fake_run(
        tmp_path / "one", {"kind": "optuna", "space": space}, [("a", 1e-3, "adam", 3, 0.5, 0.5)]
    )
    write_report(tmp_path / "one")
    report = (tmp_path / "one" / "report.md").read_text()
    assert "importances need at least 2 trials" in report
    assert "Which dimensions mattered" not in report
    assert not (tmp_path / "one" / "param_importances.png").exists()


def test_two_trials_get_importances_and_no_skipped_note(tmp_path):
    # What `--smoke` leaves: two trials, one stopped early. Two is the fewest that get the
    # importance figure and table; the report then says nothing was skipped.
    space = {"lr": {"loguniform": [1e-4, 1e-2]}, "optimizer": {"choice": ["adam", "sgd"]}}
    rows = [("a", 1e-3, "adam", 3, 0.5, 0.49), ("b", 3e-4, "sgd", 1, 0.3, None)]
    fake_run(tmp_path / "two", {"kind": "optuna", "space": space}, rows)
    write_report(tmp_path / "two")
    assert_pngs(tmp_path / "two", ["optimization_history.png", "param_importances.png"])
    report = (tmp_path / "two" / "report.md").read_text()
    assert "## Which dimensions mattered" in report
    assert "| lr |" in report and "| optimizer |" in report
    assert "skipped" not in report and "need at least" not in report


def test_a_folder_without_tables_is_refused(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds no epochs.parquet or trials.parquet" in err and "results/<name>" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("missing", ["config.yaml"])
def test_a_run_without_its_config_is_refused(tmp_path, capsys, missing):
    fake_run(tmp_path / "g", {"grid": {"lr": [1e-3]}}, [("t", 1e-3, "adam", 3, 0.4, 0.4)])
    (tmp_path / "g" / missing).unlink()
    assert main([str(tmp_path / "g")]) == 2
    assert "cannot read config" in capsys.readouterr().err


def test_grid_report_gives_the_groups_their_seeds_intervals_and_verdict(tmp_path):
    rows = [
        (f"t{i}", lr, "adam", 3, val, test)
        for i, (lr, val, test) in enumerate(
            [(1e-3, 0.50, 0.49), (1e-3, 0.52, 0.50), (1e-3, 0.54, 0.51)]
            + [(1e-2, 0.40, 0.40), (1e-2, 0.41, 0.41), (1e-2, 0.42, 0.42)]
        )
    ]
    run = tmp_path / "g"
    fake_run(run, {"grid": {"lr": [1e-3, 1e-2]}}, rows)
    config = ExperimentConfig.model_validate({"name": "small"})
    trials, epochs = pq.read_table(run / "trials.parquet"), pq.read_table(run / "epochs.parquet")
    pq.write_table(groups_table(grid_groups(trials, epochs, config)), run / "groups.parquet")
    write_report(run)
    assert_pngs(run, ["groups.png"])
    report = (run / "report.md").read_text()
    assert "| 1 | lr 0.001 | 3 | 0.5200 (95% CI 0.4703–0.5697, n = 3) |" in report
    assert "**best grid point by mean val_acc: lr 0.001, test acc 0.5000" in report
    assert "lr 0.01 is worse than lr 0.001 on test accuracy (p < 0.001, 3 seeds each)" in report
    assert report.index("## Compared groups") < report.index("## learning curves")
