"""The paired bootstrap makes no better / worse claim from a handful of test members."""

from __future__ import annotations

import numpy as np

from weightspace.evaluation.compare import MIN_MEMBERS, TOO_FEW, compare_probes


def _compare(n_members: int, rows_per_member: int = 4):
    rng = np.random.default_rng(0)
    n = n_members * rows_per_member
    y = rng.normal(size=n)
    good, bad = y + 0.1 * rng.normal(size=n), y + 2.0 * rng.normal(size=n)
    mask = np.ones(n, dtype=bool)
    pred = {("latent", "ridge", "t"): (mask, good), ("stats", "ridge", "t"): (mask, bad)}
    groups = np.repeat(np.arange(n_members), rows_per_member)
    return compare_probes(pred, {"t": y}, groups, seed=0).iloc[0]


def test_few_test_members_give_no_verdict_but_keep_the_interval():
    few = _compare(MIN_MEMBERS - 3)
    assert few["verdict"] == TOO_FEW
    assert few["ci_low"] > 0 and np.isfinite(few["ci_high"])  # the interval is still there
    enough = _compare(MIN_MEMBERS)
    assert enough["verdict"] == "better"
