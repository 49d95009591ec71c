"""The prior's terms as offsets of the two-tower training logit (``retrieval.train_offsets``):
point-in-time features, the not-yet-published mask, config checks, and training with them;
and the id dropout of training (``retrieval.id_dropout``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from feedrank.config import RetrievalConfig, load_config
from feedrank.features.catalog import ItemCatalog
from feedrank.features.history import ClickLog, category_affinity
from feedrank.features.vocab import Vocab
from feedrank.retrieval.encode import encode_items, item_inputs
from feedrank.retrieval.train import train_two_tower, two_tower_dims
from feedrank.retrieval.train_offsets import DAY_S, TrainOffsets, offset_terms, parse_terms
from feedrank.retrieval.two_tower import TwoTower
from feedrank.training.common import seed_everything

T0 = 1_767_225_600.0
CFG = RetrievalConfig(embed_dim=16, out_dim=16, history_len=8, id_buckets=4096, text_buckets=4096, epochs=3,
                      batch_size=128, lr=1e-2, temperature=0.1)
CATS = ("politics", "sports", "science", "music")


def _world(seed: int = 0):
    """Items published over two days; each user clicks live items of one category only."""
    rng = np.random.default_rng(seed)
    n_per, n_users, per_user = 30, 120, 12
    rows = [{"item_id": f"{c}-{j}", "title": f"{c}word story{j}", "category": c, "subcategory": f"{c}-s{j % 2}",
             "creator": f"{c}-w{j % 3}", "published_at": T0 + 3600.0 * rng.uniform(0, 48)}
            for c in CATS for j in range(n_per)]
    items = pd.DataFrame(rows)
    vocabs = {"category": Vocab.build("category", items["category"]),
              "subcategory": Vocab.build("subcategory", items["subcategory"])}
    catalog = ItemCatalog.build(items, vocabs, CFG.id_buckets, CFG.text_buckets)
    cat_of_item = np.repeat(np.arange(len(CATS)), n_per)
    pub = items["published_at"].to_numpy()
    u, ts, it = [], [], []
    for user in range(n_users):
        for t in np.sort(T0 + 3600.0 * rng.uniform(6, 60, per_user)):
            pool = np.flatnonzero((cat_of_item == user % len(CATS)) & (pub <= t))
            if len(pool):
                u.append(user), ts.append(t), it.append(int(rng.choice(pool)))
    return catalog, vocabs, ClickLog.build(np.array(u), np.array(ts), np.array(it), n_users)


def _catalog(published: list[float], cats: list[str]) -> ItemCatalog:
    items = pd.DataFrame({"item_id": [f"i{j}" for j in range(len(cats))], "title": ["a b"] * len(cats),
                          "category": cats, "subcategory": cats, "creator": ["c"] * len(cats),
                          "published_at": published})
    vocabs = {"category": Vocab.build("category", items["category"]),
              "subcategory": Vocab.build("subcategory", items["subcategory"])}
    return ItemCatalog.build(items, vocabs, 64, 64)


def test_offset_features_are_point_in_time():
    cat = _catalog([T0, T0 + DAY_S, np.nan], ["x", "y", "x"])
    # item 0 clicked at T0+10, T0+20, T0+30; item 1 at T0+DAY+5
    clicks = ClickLog.build(np.array([0, 1, 2, 0]), np.array([T0 + 10, T0 + 20, T0 + 30, T0 + DAY_S + 5]),
                            np.array([0, 0, 0, 1]), 3)
    off = TrainOffsets.build(("category", "popularity", "age"), cat, clicks)
    ts = np.array([T0 + 20, T0 + 2 * DAY_S])
    hist = np.array([[-1, 0], [1, 1]])
    aff = category_affinity(hist, cat.cat_idx, int(cat.cat_idx.max()) + 1)
    feats, dead = off.pairs(aff, ts, np.array([0, 1, 2]))
    assert feats.shape == (3, 2, 3) and dead.shape == (2, 3)
    np.testing.assert_allclose(feats[0].numpy(), np.log(aff[:, cat.cat_idx[[0, 1, 2]]]), rtol=1e-6)
    # clicks strictly before t: at T0+20 item 0 has 1 (the one at T0+20 itself is not counted)
    np.testing.assert_allclose(feats[1].numpy(), np.log1p([[1, 0, 0], [3, 1, 0]]), rtol=1e-6)
    # -age in days; unknown publish time = age 0; not yet published = age 0 and dead
    np.testing.assert_allclose(feats[2].numpy(), [[-20 / DAY_S, 0.0, 0.0], [-2.0, -1.0, 0.0]], rtol=1e-5, atol=1e-7)
    assert dead.numpy().tolist() == [[False, True, False], [False, False, False]]
    rows, rdead = off.rows(aff, ts, np.array([1, 0]))
    np.testing.assert_allclose(rows.numpy(), feats.numpy()[:, [0, 1], [1, 0]], rtol=1e-6)
    assert rdead.numpy().tolist() == [True, False]


def test_without_age_nothing_is_masked():
    cat = _catalog([T0, T0 + DAY_S], ["x", "y"])
    clicks = ClickLog.build(np.array([0]), np.array([T0 + 10]), np.array([0]), 1)
    off = TrainOffsets.build(("category",), cat, clicks)
    feats, dead = off.pairs(category_affinity(np.array([[0]]), cat.cat_idx, int(cat.cat_idx.max()) + 1), np.array([T0 + 20]), np.array([0, 1]))
    assert feats.shape == (1, 1, 2) and not dead.numpy().any()


def test_bad_choices_are_named():
    with pytest.raises(ValueError, match="train_offsets"):
        offset_terms("everything")
    with pytest.raises(ValueError, match="unknown two-tower offset terms"):
        parse_terms("category,ctr")
    with pytest.raises(Exception, match="train_offsets"):
        load_config(None, ["retrieval.train_offsets=bogus"])
    assert offset_terms("prior") == ("category", "popularity", "age")
    assert two_tower_dims(dataclasses.replace(CFG, train_offsets="category"), 3, 3).offset_terms == "category"
    assert two_tower_dims(CFG, 3, 3).offset_terms == ""


@pytest.fixture(scope="module")
def trained_prior():
    catalog, vocabs, clicks = _world()
    cfg = dataclasses.replace(CFG, train_offsets="prior")
    model, report = train_two_tower(cfg, catalog, clicks, len(vocabs["category"]), len(vocabs["subcategory"]),
                                    seed_everything(0), show_progress=False)
    return model, report, catalog, vocabs, clicks


def test_training_learns_the_offset_weights(trained_prior):
    model, report, *_ = trained_prior
    assert np.isfinite(report.final_loss)
    w = model.offset_weights.detach().numpy()
    assert w.shape == (3,) and np.isfinite(w).all()
    # every user clicks one category only: the category share explains the clicks, its weight grows from 1
    assert w[0] > 1.2
    assert CFG.id_dropout > 0 and model.item.id_dropout == 0.0  # the id dropout stays in training


def test_offset_model_round_trips_and_encodes_like_before(trained_prior):
    model, _, catalog, *_ = trained_prior
    again = TwoTower(model.dims)
    again.load_state_dict(model.state_dict())
    again.set_content(None)
    np.testing.assert_array_equal(encode_items(again, catalog), encode_items(model, catalog))
    # the offsets' weights are not part of the vectors: a model without them encodes the same
    plain = TwoTower(dataclasses.replace(model.dims, offset_terms=""))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "offset_weights"})
    np.testing.assert_array_equal(encode_items(plain, catalog), encode_items(model, catalog))


def test_offset_training_is_deterministic(trained_prior):
    model, _, catalog, vocabs, clicks = trained_prior
    cfg = dataclasses.replace(CFG, train_offsets="prior")
    again, _ = train_two_tower(cfg, catalog, clicks, len(vocabs["category"]), len(vocabs["subcategory"]),
                               seed_everything(0), show_progress=False)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


def test_id_dropout_only_in_training():
    """``retrieval.id_dropout``: in training a share of the items are encoded without their id
    row (as a never-trained item is); encoding (eval mode) never drops it."""
    catalog, vocabs, _ = _world()
    model = TwoTower(two_tower_dims(CFG, len(vocabs["category"]), len(vocabs["subcategory"])))
    model.set_content(None)
    with torch.no_grad():
        model.item.id_emb.weight.normal_()  # make the id rows matter
    idx = np.arange(len(catalog))
    plain = encode_items(model, catalog, idx)
    model.item.id_dropout = 0.5
    assert np.array_equal(encode_items(model, catalog, idx), plain)  # eval: nothing dropped
    inputs = list(item_inputs(catalog, idx, model))
    no_id = inputs.copy()
    no_id[0] = torch.zeros_like(inputs[0])
    model.eval()
    with torch.no_grad():
        without = model.item(*no_id).numpy()
        model.train()
        torch.manual_seed(0)
        dropped = model.item(*inputs).numpy()
    same_as_without = np.isclose(dropped, without, atol=1e-6).all(axis=1)
    same_as_plain = np.isclose(dropped, plain, atol=1e-6).all(axis=1)
    assert (same_as_without ^ same_as_plain).all()  # each item either kept or dropped its id row
    assert 0.3 < same_as_without.mean() < 0.7
    with pytest.raises(Exception, match="id_dropout"):
        load_config(None, ["retrieval.id_dropout=1.5"])


def test_warm_start_with_other_offsets_is_refused(trained_prior):
    model, _, catalog, vocabs, clicks = trained_prior
    with pytest.raises(ValueError, match="train_offsets"):
        train_two_tower(CFG, catalog, clicks, len(vocabs["category"]), len(vocabs["subcategory"]),
                        seed_everything(0), show_progress=False, init=model)
