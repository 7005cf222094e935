"""A cohort: the members of one zoo that are analysed together, with a label for legends; and
whether two zoos' members compare layer by layer (:func:`architecture_mismatch`)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from weightspace.errors import ConfigError
from weightspace.nets.spec import MLPSpec, Params
from weightspace.zoo.store import Zoo
from weightspace.zoo.tasks import Task


def architecture_mismatch(a: MLPSpec, b: MLPSpec) -> str:
    """Why the members of two zoos cannot be compared layer by layer ('' when their widths
    agree): a section's reason to be skipped."""
    if a.widths == b.widths:
        return ""
    return f"the two zoos have different architectures ({list(a.widths)} vs {list(b.widths)})."


@dataclass(frozen=True, eq=False)
class Cohort:
    """Members ``ids`` of ``zoo`` (non-diverged unless chosen otherwise), named ``label``."""

    zoo: Zoo
    ids: np.ndarray
    label: str

    @classmethod
    def of(
        cls,
        zoo: Zoo,
        label: str | None = None,
        ids: np.ndarray | None = None,
        include_diverged: bool = False,
    ) -> Cohort:
        members = zoo.members
        if ids is None:
            ids = members["member_id"].to_numpy()
        ids = np.asarray(ids, dtype=np.int64)
        if not include_diverged:
            ids = ids[~members["diverged"].to_numpy()[ids]]
        if len(ids) == 0:
            raise ConfigError(f"{zoo.root}: no (non-diverged) members to analyse")
        return cls(zoo, ids, label or zoo.root.name)

    def subset(self, ids: np.ndarray, label: str | None = None) -> Cohort:
        return Cohort(self.zoo, np.asarray(ids, dtype=np.int64), label or self.label)

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def members(self) -> pd.DataFrame:
        return self.zoo.members.iloc[self.ids].reset_index(drop=True)

    @cached_property
    def metrics(self) -> pd.DataFrame:
        m = self.zoo.metrics
        return m[m["member_id"].isin(self.ids)].reset_index(drop=True)

    @cached_property
    def spec(self) -> MLPSpec:
        """The architecture with the first member's activation (a cohort usually shares one)."""
        return self.zoo.member_spec(int(self.ids[0]))

    @cached_property
    def epochs(self) -> list[int]:
        """Checkpoint epochs that every member of the cohort has."""
        per_member = self.metrics.groupby("member_id")["epoch"].apply(set)
        return sorted(set.intersection(*per_member.tolist()))

    @property
    def last_epoch(self) -> int:
        return self.epochs[-1]

    @cached_property
    def task(self) -> Task:
        return self.zoo.task()

    def weights(self, epoch: int, trainable: bool = False) -> Params:
        """Stacked parameters of the members at ``epoch`` (:meth:`Zoo.weights`: effective
        ``weight`` / ``bias``, plus ``weight_g`` / ``weight_v`` when ``trainable`` and the zoo
        uses weight normalization)."""
        return self.zoo.weights(epoch, self.ids, trainable=trainable)

    def metric(self, name: str, epoch: int) -> np.ndarray:
        """One metric of every member at ``epoch``, in the order of ``ids``."""
        m = self.metrics[self.metrics["epoch"] == epoch].set_index("member_id")
        return m.loc[self.ids, name].to_numpy(np.float64)
