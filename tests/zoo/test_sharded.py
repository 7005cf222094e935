"""A zoo made by several jobs, each its own part, is the zoo one job makes."""

from __future__ import annotations

import pytest
from conftest import compose_cfg

from weightspace.errors import ConfigError, ZooError
from weightspace.zoo.generate import generate
from weightspace.zoo.store import Zoo

PARTS = ("zoo.size=12", "zoo.shard_size=3")  # 4 shard files


def test_jobs_make_the_same_zoo_as_one_run(tmp_path):
    whole = generate(compose_cfg(tmp_path / "one", *PARTS)).path
    root = tmp_path / "jobs"
    first = generate(compose_cfg(root, *PARTS, "zoo.shard=1", "zoo.num_shards=2"))
    assert first.missing_shards == [0, 2]
    with pytest.raises(ZooError, match=r"2 of 4 shards missing \(0, 2\)"):
        Zoo.open(first.path)
    last = generate(compose_cfg(root, *PARTS, "zoo.shard=0", "zoo.num_shards=2"))
    assert last.missing_shards == [] and last.n_members == 12
    for f in sorted((whole / "shards").iterdir()):
        assert (last.path / "shards" / f.name).read_bytes() == f.read_bytes(), f.name
    assert Zoo.open(last.path).members.equals(Zoo.open(whole).members)


@pytest.mark.parametrize("bad", [("zoo.shard=2", "zoo.num_shards=2"), ("zoo.num_shards=0",)])
def test_bad_job_index_is_refused(tmp_path, bad):
    with pytest.raises(ConfigError, match=r"zoo\.(shard|num_shards)"):
        generate(compose_cfg(tmp_path, *PARTS, *bad))
