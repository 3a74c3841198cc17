"""The statistics behind groups.parquet and the verdict, against values worked out by hand."""

import math

import pytest
from scipy import stats as scipy_stats

from tuning.results.stats import group_rows, p_text, summarize, verdict, welch_p

A = [0.50, 0.52, 0.54]  # mean 0.52, s = 0.02
B = [0.40, 0.41, 0.42]  # mean 0.41, s = 0.01


def test_mean_std_and_t_interval():
    s = summarize(A)
    assert s.n == 3 and s.mean == pytest.approx(0.52) and s.std == pytest.approx(0.02)
    # t(0.975, 2) = 4.302653 (tables); half width 4.302653 · 0.02 / √3 = 0.0496828
    assert s.ci_low == pytest.approx(0.52 - 0.0496828, abs=1e-6)
    assert s.ci_high == pytest.approx(0.52 + 0.0496828, abs=1e-6)


def test_one_value_has_no_spread_or_interval():
    s = summarize([0.7])
    assert (s.n, s.mean, s.std, s.ci_low, s.ci_high) == (1, 0.7, None, None, None)


def test_zero_variance_gives_an_interval_of_width_zero():
    s = summarize([0.5, 0.5, 0.5, 0.5])
    assert (s.n, s.mean, s.std, s.ci_low, s.ci_high) == (4, 0.5, 0.0, 0.5, 0.5)


def test_nothing_and_non_finite_values_are_left_out():
    assert summarize([]).mean is None
    assert summarize([None, float("nan"), 0.3]).n == 1


def test_welch_with_equal_variances():
    # a = [1, 2, 3], b = [2, 3, 4]: t = -1 / √(1/3 + 1/3) = -1.2247, df = 4;
    # for df = 4, P(|T| > 1.2247) = 0.2879 (t tables)
    assert welch_p([1, 2, 3], [2, 3, 4]) == pytest.approx(0.2879, abs=1e-4)


def test_welch_with_one_side_constant():
    # a = [1, 1, 1], b = [1, 2, 3]: t = -1 / √(1/3) = -1.7321, df = (1/3)² / ((1/3)² / 2) = 2;
    # for df = 2, P(T > t) = (1 - t / √(t² + 2)) / 2 = (1 - 0.7746) / 2, so p = 0.2254
    assert welch_p([1, 1, 1], [1, 2, 3]) == pytest.approx(1 - math.sqrt(3) / math.sqrt(5))


def test_welch_with_unequal_variances_matches_scipy():
    # t = 0.11 / √(0.0004/3 + 0.0001/3) = 8.5206, df = 2.9412 (Welch–Satterthwaite, by hand)
    p = welch_p(A, B)
    assert p == pytest.approx(2 * scipy_stats.t.sf(8.5206, 2.9412), rel=1e-3)
    assert p == pytest.approx(scipy_stats.ttest_ind(A, B, equal_var=False).pvalue)
    assert p < 0.01


def test_welch_needs_two_values_a_side_and_handles_zero_variance():
    assert welch_p([0.5], A) is None and welch_p(A, []) is None
    assert welch_p([0.5, 0.5], [0.5, 0.5, 0.5]) == 1.0  # the same constant: no difference
    assert welch_p([0.5, 0.5], [0.4, 0.4]) == 0.0  # two constants: t is infinite


def group(label, val, test):
    return {
        "label": label,
        "settings": {"lr": float(label.split()[1])},
        "val_acc": val,
        "test_acc": test,
    }


def test_group_rows_rank_by_the_metric_and_compare_with_the_best():
    rows = group_rows(
        [
            group("lr 0.01", B, B),
            group("lr 0.001", A, [0.49, 0.50, 0.51]),
            group("lr 0.0001", [0.51, 0.52, 0.53], [0.48, 0.50, 0.52]),
            group("lr 0.1", [0.3], [0.3]),
        ],
        metric="val_acc",
        mode="max",
    )
    assert [r["group"] for r in rows] == ["lr 0.001", "lr 0.0001", "lr 0.01", "lr 0.1"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4] and [r["n"] for r in rows] == [3, 3, 3, 1]
    best, near, worse, lone = rows
    assert best["val_acc_p_vs_best"] is None and best["test_acc_distinguishable"] is None
    assert best["lr"] == 0.001 and best["test_acc_mean"] == pytest.approx(0.50)
    # Same means on test (0.50): t = 0, p = 1
    assert near["test_acc_p_vs_best"] == pytest.approx(1.0)
    assert near["test_acc_distinguishable"] is False
    assert worse["test_acc_distinguishable"] is True and worse["test_acc_p_vs_best"] < 0.01
    assert lone["test_acc_p_vs_best"] is None and lone["test_acc_ci_low"] is None
    for row in rows[:3]:
        assert row["test_acc_ci_low"] <= row["test_acc_mean"] <= row["test_acc_ci_high"]


def test_a_loss_metric_ranks_the_lowest_first():
    groups = [
        {"label": "a", "settings": {}, "val_acc": A, "test_acc": A, "val_loss": [1.0, 1.1]},
        {"label": "b", "settings": {}, "val_acc": B, "test_acc": B, "val_loss": [0.5, 0.6]},
    ]
    rows = group_rows(groups, metric="val_loss", mode="min")
    assert [r["group"] for r in rows] == ["b", "a"]
    assert rows[1]["val_loss_mean"] == pytest.approx(1.05) and "val_loss_p_vs_best" in rows[1]


def test_verdict_in_words():
    rows = group_rows(
        [
            group("lr 0.001", A, [0.49, 0.50, 0.51]),
            group("lr 0.0001", [0.51, 0.52, 0.53], [0.47, 0.49, 0.51]),
            group("lr 0.01", B, B),
        ],
        metric="val_acc",
        mode="max",
    )
    text = verdict(rows, "test_acc")
    p_near = rows[1]["test_acc_p_vs_best"]
    assert text == (
        f"lr 0.0001 and lr 0.001 are not distinguishable on test accuracy ({p_text(p_near)}, "
        f"3 seeds each); lr 0.01 is worse than lr 0.001 on test accuracy (p < 0.001, 3 seeds "
        "each)"
    )


def test_no_verdict_with_one_seed_per_group_says_how_to_get_one():
    rows = group_rows(
        [group("lr 0.001", [0.5], [0.5]), group("lr 0.01", [0.4], [0.4])], "val_acc", "max"
    )
    text = verdict(rows, "test_acc", "Give each point three seeds.")
    assert text.startswith("no verdict is possible on test accuracy: with one seed per group")
    assert text.endswith("Give each point three seeds.")
    assert verdict(rows[:1]) is None  # one group: nothing to compare


def test_p_text():
    assert p_text(0.0004) == "p < 0.001" and p_text(0.2134) == "p = 0.21"
    assert p_text(0.049) == "p = 0.049" and p_text(0.2017) == "p = 0.20"
