from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from feedrank.errors import SchemaError
from feedrank.serving.experiments import ExperimentRouter, assign, parse_experiments
from feedrank.types import FeedRequest, FeedResponse, ScoredItem

TWO_ARMS = {"experiments": [{"name": "fresh", "salt": "s1", "traffic": 0.6,
                             "arms": [{"name": "control", "weight": 0.5},
                                      {"name": "mmr", "weight": 0.5, "settings": {"rerank.mmr_lambda": 0.7}}]}]}


def test_assignment_is_deterministic_and_proportional():
    exps = parse_experiments(TWO_ARMS)
    users = [f"u{i}" for i in range(40_000)]
    arms = [assign(exps, u) for u in users]
    assert arms == [assign(exps, u) for u in users]
    inside = [a for a in arms if a is not None]
    assert abs(len(inside) / len(users) - 0.6) < 0.01
    share_mmr = sum(a[1].name == "mmr" for a in inside) / len(inside)
    assert abs(share_mmr - 0.5) < 0.015


def test_experiments_never_overlap_and_salt_reshuffles():
    raw = {"experiments": [
        {"name": "a", "traffic": 0.3, "arms": [{"name": "control", "weight": 0.5}, {"name": "t", "weight": 0.5}]},
        {"name": "b", "traffic": 0.3, "arms": [{"name": "control", "weight": 0.5}, {"name": "t", "weight": 0.5}]},
    ]}
    exps = parse_experiments(raw)
    names = [assign(exps, f"u{i}") for i in range(20_000)]
    counts = {n: sum(1 for a in names if a and a[0].name == n) for n in ("a", "b")}
    assert abs(counts["a"] / 20_000 - 0.3) < 0.015 and abs(counts["b"] / 20_000 - 0.3) < 0.015
    resalted = parse_experiments({"experiments": [{**TWO_ARMS["experiments"][0], "salt": "s2"}]})
    same = sum(assign(parse_experiments(TWO_ARMS), f"u{i}") == assign(resalted, f"u{i}") for i in range(2000))
    assert same < 1900  # a new salt gives a new split inside the experiment


def test_every_problem_is_listed():
    bad = {"experiments": [
        {"name": "x", "traffic": 0.8, "bogus": 1,
         "arms": [{"name": "a", "weight": 0.3, "settings": {"rerank.mmr_lambda": "high", "retrieval.epochs": 3}},
                  {"name": "a", "weight": 0.5, "model_version": 0}]},
        {"name": "x", "traffic": 0.5, "arms": [{"name": "only", "weight": 1.0}]},
    ]}
    with pytest.raises(SchemaError) as exc:
        parse_experiments(bad)
    text = "\n".join(exc.value.problems)
    for needle in ("bogus: unknown key", "retrieval.epochs", "mmr_lambda: expected float", "duplicate arm 'a'",
                   "model_version", "weights must sum to 1", "duplicate experiment 'x'", "at least two arms",
                   "traffic shares sum to 1.3"):
        assert needle in text, needle


@dataclass
class FakeRec:
    model_version: str = "v1"
    tag: str = "base"
    observed: int = 0

    def with_settings(self, settings):
        if ("rerank.mmr_lambda", "broken") in settings:
            raise ValueError("cannot build")
        return replace(self, tag=f"view{dict(settings)}")

    def recommend(self, req: FeedRequest) -> FeedResponse:
        return FeedResponse(request_id="r", user_id=req.user_id, items=(ScoredItem("i1", 1.0, 1, self.tag),),
                            model_version=self.model_version, tier="full")

    def observe(self, events):
        self.observed += len(events)

    def has_item(self, item_id):
        return True

    def get_item(self, item_id):
        return None

    def stage_names(self):
        return ()


def test_router_labels_serves_views_and_reloads(tmp_path: Path):
    import yaml

    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump(TWO_ARMS))
    router = ExperimentRouter(FakeRec(), f)
    exps = parse_experiments(TWO_ARMS)
    seen_arms = set()
    for i in range(300):
        u = f"u{i}"
        resp = router.recommend(FeedRequest(user_id=u))
        hit = assign(exps, u)
        if hit is None:
            assert resp.arm is None and resp.items[0].source == "base"
        else:
            assert resp.arm == f"fresh/{hit[1].name}"
            assert resp.items[0].source == ("base" if hit[1].name == "control" else "view{'rerank.mmr_lambda': 0.7}")
            seen_arms.add(resp.arm)
    assert seen_arms == {"fresh/control", "fresh/mmr"}
    # an arm that cannot be built serves the default, unlabelled, and is counted
    broken = {"experiments": [{"name": "e", "traffic": 1.0, "arms": [
        {"name": "control", "weight": 0.5}, {"name": "b", "weight": 0.5, "settings": {"rerank.mmr_lambda": 0.5}}]}]}
    g = tmp_path / "broken.yaml"
    g.write_text(yaml.safe_dump(broken))
    failing = FakeRec()
    failing.with_settings = lambda settings: (_ for _ in ()).throw(ValueError("cannot build this arm"))
    router2 = ExperimentRouter(failing, g)
    in_b = next(f"x{i}" for i in range(1000) if assign(parse_experiments(broken), f"x{i}")[1].name == "b")
    resp = router2.recommend(FeedRequest(user_id=in_b))
    assert resp.arm is None and resp.items[0].source == "base" and router2.view_errors == 1
    # reload: the file now puts everyone in the experiment
    import os
    import time

    f.write_text(yaml.safe_dump({"experiments": [{**TWO_ARMS["experiments"][0], "traffic": 1.0}]}))
    os.utime(f, (time.time() + 5, time.time() + 5))
    router.source.check_every_s = 0.0
    assert all(router.recommend(FeedRequest(user_id=f"u{i}")).arm is not None for i in range(50))


def test_views_of_a_swapped_out_model_are_dropped(tmp_path: Path):
    """A settings view holds its model: after a hot swap the old version's views must go,
    or the old model stays alive (and frozen: serving/heap.py) for the life of the process."""
    import weakref

    import yaml
    from types import SimpleNamespace

    class HoldingRec(FakeRec):  # a view keeps its model alive, as Recommender.with_settings does
        def with_settings(self, settings):
            view = super().with_settings(settings)
            view.model = self
            return view

    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump({"experiments": [{**TWO_ARMS["experiments"][0], "traffic": 1.0}]}))
    manager = SimpleNamespace(active=HoldingRec(model_version="v1"))
    manager.recommend = lambda req: manager.active.recommend(req)
    router = ExperimentRouter(manager, f)
    for i in range(40):
        router.recommend(FeedRequest(user_id=f"u{i}"))
    old = weakref.ref(manager.active)
    assert router._views and all(k[2] == "v1" for k in router._views)
    manager.active = HoldingRec(model_version="v2")  # the hot swap
    for i in range(40):
        router.recommend(FeedRequest(user_id=f"u{i}"))
    assert router._views and all(k[2] == "v2" for k in router._views)
    assert old() is None
