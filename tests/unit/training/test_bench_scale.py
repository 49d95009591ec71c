"""`feedrank bench scale`: which worlds it measures, and bad sizes rejected up front."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from feedrank.bench.scale import points_for
from feedrank.cli.main import cli


def test_points_vary_one_axis_or_both():
    assert points_for([10, 20], "both", 5) == [(10, 10), (20, 20)]
    assert points_for([10, 20], "items", 5) == [(5, 10), (5, 20)]   # (users, items)
    assert points_for([10, 20], "users", 5) == [(10, 5), (20, 5)]
    with pytest.raises(ValueError, match="vary"):
        points_for([10], "sideways", 5)


@pytest.mark.parametrize("args, message", [
    (["--sizes", "10,abc"], "comma-separated integers"),
    (["--sizes", "50"], "sizes >= 100"),
    (["--procs", "0"], "process counts"),
    (["--result-name", "../x"], "--result-name"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, args, message):
    r = CliRunner().invoke(cli, ["bench", "scale", "--workdir", str(tmp_path / "w"), *args])
    assert r.exit_code != 0 and message in r.output, r.output
    assert not (tmp_path / "w").exists()
