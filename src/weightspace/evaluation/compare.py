"""Paired comparisons of probes: is the latent better than a baseline, or only different?

:func:`compare_probes` sets one representation's probe of a target (the ``subject``: the
latent, or the encoder's own coordinates "learned") against other representations' probes of
the same family (linear / boosting) on the same test rows, with a bootstrap over test
*members* (a member's checkpoints are not independent draws) in which both probes are scored
on the same resample: the difference and its percentile interval decide ``better`` /
``worse`` / ``tied``. Column ``representation`` names the subject, ``baseline`` the other.
Rendered by :func:`weightspace.evaluation.tables.format_comparisons`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import pandas as pd

COMPARISON_COLUMNS = [
    "representation", "target", "probe", "baseline", "metric", "ours", "theirs", "difference",
    "ci_low", "ci_high", "verdict",
]  # fmt: skip
# Below this many test members a bootstrap interval is too rough to claim better or worse
# (7 members once gave R² differences of [+0.317, +13.018]): such a claim reads TOO_FEW.
MIN_MEMBERS = 10
TOO_FEW = "too few test members"


def _weighted_score(y: np.ndarray, pred: np.ndarray, w: np.ndarray, categorical: bool):
    """R² (or accuracy) of ``pred`` under each row of weights ``w`` (B, n): (B,)."""
    if categorical:
        return (w * (y == pred)).sum(1) / w.sum(1)
    mean = (w * y).sum(1, keepdims=True) / w.sum(1, keepdims=True)
    sst = (w * (y - mean) ** 2).sum(1)
    sse = (w * (y - pred) ** 2).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - sse / sst


def compare_probes(
    predictions: Mapping[tuple[str, str, str], tuple[np.ndarray, np.ndarray]],
    y_test: Mapping[str, np.ndarray],
    groups: np.ndarray,
    categorical: Collection[str] = (),
    subject: str = "latent",
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    baselines: Sequence[str] | None = None,
) -> pd.DataFrame:
    """``subject``'s probes against every other representation's probe of the same family
    on the same target (``baselines``: only those, in that order), with a paired bootstrap
    over test *members*.

    ``predictions``: from :func:`probe_table`; ``y_test``: target -> test values (all test
    rows); ``groups``: the member of each test row. A member's checkpoints are not
    independent draws, so whole members are resampled (with replacement), and both probes
    are scored on the same resample. One row per comparison: the two scores (R², or accuracy
    for categorical targets) on the test split, their difference, its ``level`` percentile
    interval, and a verdict: ``better`` / ``worse`` when the interval excludes 0, else
    ``tied``; with fewer than :data:`MIN_MEMBERS` test members a better / worse reads
    :data:`TOO_FEW` instead (the interval is still reported).

    The resamples depend only on ``seed``, ``groups`` and the order of ``subject``'s probes in
    ``predictions`` (one draw per probe, whatever it is compared with): other subjects'
    probes and the choice of ``baselines`` leave a comparison's numbers unchanged.
    """
    rng = np.random.default_rng(seed)
    rows = []
    family = {"ridge": "linear", "logistic": "linear", "boosting": "boosting"}
    for key, (mask, ours) in predictions.items():
        rep, kind, target = key
        if rep != subject:
            continue
        y = np.asarray(y_test[target])[mask]
        g = np.unique(np.asarray(groups)[mask], return_inverse=True)[1]
        counts = rng.multinomial(g.max() + 1, np.full(g.max() + 1, 1 / (g.max() + 1)), n_boot)
        w = counts[:, g].astype(np.float64)  # (n_boot, rows): each row's weight in a resample
        is_cat = target in categorical
        mine = _weighted_score(y, ours, w, is_cat)
        others = [other for other, okind, otarget in predictions if (okind, otarget) == key[1:]]
        if baselines is not None:
            others = [b for b in baselines if b in others]
        for other in others:
            if other == subject:
                continue
            omask, theirs = predictions[(other, kind, target)]
            if not np.array_equal(omask, mask):
                raise ValueError(f"{other} {kind} on {target}: scored on other rows")
            with np.errstate(invalid="ignore"):  # (a constant resample: R² undefined)
                diff = mine - _weighted_score(y, theirs, w, is_cat)
            diff = diff[np.isfinite(diff)]
            tail = 100 * (1 - level) / 2
            lo, hi = np.percentile(diff, [tail, 100 - tail]) if len(diff) else (np.nan, np.nan)
            full = np.ones((1, len(y)))
            a = float(_weighted_score(y, ours, full, is_cat)[0])
            b = float(_weighted_score(y, theirs, full, is_cat)[0])
            verdict = "better" if lo > 0 else "worse" if hi < 0 else "tied"
            if verdict != "tied" and g.max() + 1 < MIN_MEMBERS:
                verdict = TOO_FEW
            metric = "accuracy" if is_cat else "r2"
            values = (subject, target, family[kind], other, metric, a, b, a - b, lo, hi, verdict)
            rows.append(dict(zip(COMPARISON_COLUMNS, values)))
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
