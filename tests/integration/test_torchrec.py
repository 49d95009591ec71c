"""The optional TorchRec path (feedrank[scale]): item and creator tables sharded
table-wise and column-wise over two gloo CPU processes with DistributedModelParallel,
trained a few steps. Skipped when torchrec / fbgemm-gpu-cpu are not installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import importlib.util

import pytest

# found, not imported: importing fbgemm here would load its operators into the whole test
# session; a broken install still fails below (the workers import it), it is not skipped
MISSING = [m for m in ("torchrec", "fbgemm_gpu", "tensordict") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"optional extra feedrank[scale] not installed (missing {MISSING}): "
                                                      "pip install -c constraints.txt -e '.[scale]' && "
                                                      "pip install -c constraints.txt --no-deps torchrec==1.8.0")


def test_two_processes_shard_tables_and_learn(tmp_path: Path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "feedrank.training.sharded", "--sharding", "table_wise,column_wise", "--steps", "30",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {(s, r): json.loads((tmp_path / f"{s}-rank{r}.json").read_text())
           for s in ("table_wise", "column_wise") for r in (0, 1)}
    item, creator = "ebc.embedding_bags.item.weight", "ebc.embedding_bags.creator.weight"
    # table-wise: each table whole on one rank, nothing of it on the other
    assert got["table_wise", 0]["local_shards"][item] == [[4096, 64]] and got["table_wise", 0]["local_shards"][creator] == []
    assert got["table_wise", 1]["local_shards"][creator] == [[1024, 64]] and got["table_wise", 1]["local_shards"][item] == []
    # column-wise: every rank holds half of every table's columns
    for r in (0, 1):
        assert got["column_wise", r]["local_shards"][item] == [[4096, 32]]
        assert got["column_wise", r]["local_shards"][creator] == [[1024, 32]]
    for s in ("table_wise", "column_wise"):
        res = got[s, 0]
        assert res["world_size"] == 2 and set(res["sharding"].values()) == {s}
        assert got[s, 0]["losses"] == got[s, 1]["losses"]  # all-reduced: both ranks log the same loss
        first, last = res["losses"][0], res["losses"][-1]
        assert last < first - 0.5, (s, first, last)  # the planted topics are being learned
