"""Replicates → groups: mean, spread, a 95% t interval, Welch's test against the best, in words.

A group is what a comparison is about: a grid point over its seeds, or a finalist over its
re-runs. `group_rows` makes `groups.parquet`'s rows; `verdict` says what they allow one to
conclude.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


def student_t():
    """scipy's Student t distribution, imported at first use: scipy.stats is slow to import,
    and the entry scripts import this module before they check their input."""
    from scipy.stats import t

    return t


LEVEL = 0.95  # confidence of the intervals; a difference counts at p < 1 - LEVEL
MEASURES = ("val_acc", "test_acc")  # what every group is summarised on
WORDS = {"val_acc": "validation accuracy", "test_acc": "test accuracy"}


@dataclass(frozen=True)
class Summary:
    """One group's values on one measure; `std` needs n ≥ 2 and the interval too."""

    n: int
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None


def summarize(values: list[float], level: float = LEVEL) -> Summary:
    """Mean, sample standard deviation and the t-distribution interval for the mean.

    n = 0: nothing; n = 1: the value alone, no spread or interval; zero spread: an interval of
    width 0 (the data show no uncertainty, although the next seed may)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    n = len(values)
    if n == 0:
        return Summary(0, None, None, None, None)
    mean = statistics.fmean(values)
    if n == 1:
        return Summary(1, mean, None, None, None)
    std = statistics.stdev(values)
    half = student_t().ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test for equal means; None when a side has n < 2.

    Both sides without spread: 1.0 for equal means, 0.0 for different ones (the t statistic is
    infinite); scipy would return nan there."""
    a = [v for v in a if v is not None and math.isfinite(v)]
    b = [v for v in b if v is not None and math.isfinite(v)]
    if len(a) < 2 or len(b) < 2:
        return None
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    sa, sb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if sa + sb == 0:
        return 1.0 if ma == mb else 0.0
    t = (ma - mb) / math.sqrt(sa + sb)
    df = (sa + sb) ** 2 / (sa**2 / (len(a) - 1) + sb**2 / (len(b) - 1))
    return float(2 * student_t().sf(abs(t), df))


def group_rows(groups: list[dict], metric: str, mode: str, level: float = LEVEL) -> list[dict]:
    """`groups.parquet`'s rows, best first.

    Each input group: `label`, `settings` (flat), and per measure a list of its replicates'
    values (`val_acc`, `test_acc`, and the run's `metric`). Rank 1 is the best mean of the run's
    metric; every other group gets, per measure, Welch's p against the rank-1 group and whether
    it is distinguishable from it at `level`."""
    measures = list(dict.fromkeys([*MEASURES, metric]))
    sign = -1 if mode == "max" else 1

    def order(group: dict) -> tuple:
        mean = summarize(group[metric]).mean
        return (mean is None, sign * (mean if mean is not None else 0.0))

    ranked = sorted(groups, key=order)
    best = ranked[0] if ranked else None
    rows = []
    for rank, group in enumerate(ranked, start=1):
        row = {"group": group["label"], **group["settings"]}
        row["n"] = max(len([v for v in group[m] if v is not None]) for m in measures)
        for measure in measures:
            s = summarize(group[measure], level)
            row.update(
                {
                    f"{measure}_mean": s.mean,
                    f"{measure}_std": s.std,
                    f"{measure}_ci_low": s.ci_low,
                    f"{measure}_ci_high": s.ci_high,
                }
            )
        row["rank"] = rank
        for measure in measures:
            p = None if group is best else welch_p(group[measure], best[measure])
            row[f"{measure}_p_vs_best"] = p
            row[f"{measure}_distinguishable"] = None if p is None else p < 1 - level
        rows.append(row)
    return rows


def p_text(p: float) -> str:
    """E.g. "p < 0.001", "p = 0.0068" or "p = 0.20": two significant digits, as a reader needs."""
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.2f}" if p >= 0.1 else f"p = {p:.2g}"


def seeds_text(counts: list[int]) -> str:
    if len(set(counts)) == 1:
        return f"{counts[0]} seed{'s' if counts[0] != 1 else ''} each"
    return "seeds " + " and ".join(map(str, counts))


def verdict(
    rows: list[dict], measure: str = "test_acc", how_to_repeat: str = "", level: float = LEVEL
) -> str | None:
    """A sentence on `rows` (from `group_rows`, best first): which groups differ from the best
    on `measure`, with p and the seeds behind it; `how_to_repeat` says how to get more seeds.
    None with fewer than two groups."""
    if len(rows) < 2:
        return None
    words = WORDS.get(measure, measure.replace("_", " "))
    best = rows[0]
    if best[f"{measure}_mean"] is None:
        return f"no verdict on {words}: the groups have none to compare"
    if all(row[f"{measure}_std"] is None for row in rows):
        return (
            f"no verdict is possible on {words}: with one seed per group a difference cannot be "
            f"told from seed-to-seed noise. {how_to_repeat}"
        ).strip()
    lines = []
    for row in rows[1:]:
        p = row[f"{measure}_p_vs_best"]
        if p is None:
            lines.append(
                f"{row['group']} against {best['group']}: no verdict on {words} with one seed "
                "on a side"
            )
            continue
        seeds = seeds_text([best["n"], row["n"]])
        if p >= 1 - level:
            lines.append(
                f"{row['group']} and {best['group']} are not distinguishable on {words} "
                f"({p_text(p)}, {seeds})"
            )
        else:
            better = row[f"{measure}_mean"] > best[f"{measure}_mean"]
            if measure.endswith("_loss"):
                better = not better
            lines.append(
                f"{row['group']} is {'better' if better else 'worse'} than {best['group']} on "
                f"{words} ({p_text(p)}, {seeds})"
            )
    if any(row[f"{measure}_p_vs_best"] is None for row in rows[1:]) and how_to_repeat:
        lines.append(how_to_repeat.rstrip("."))
    return "; ".join(lines)


def interval_text(row: dict, measure: str) -> str:
    """E.g. "0.5123 (95% CI 0.5083–0.5163, n = 3)", or the lone value for n = 1. No "±": the
    grid's table gives mean ± standard deviation, and one sign must not mean two things."""
    mean = row[f"{measure}_mean"]
    if mean is None:
        return "—"
    low, high = row[f"{measure}_ci_low"], row[f"{measure}_ci_high"]
    if low is None:
        return f"{mean:.4f} (n = 1, no interval)"
    return f"{mean:.4f} (95% CI {low:.4f}–{high:.4f}, n = {row['n']})"
