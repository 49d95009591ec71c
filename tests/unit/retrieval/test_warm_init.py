"""``train_two_tower(init=...)``: a warm start trains a copy of a trained two-tower (dims and
weights kept, the original untouched) and refuses data that does not fit it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from feedrank.config import RetrievalConfig
from feedrank.features.catalog import ItemCatalog
from feedrank.features.history import ClickLog
from feedrank.features.vocab import Vocab
from feedrank.retrieval.train import train_two_tower
from feedrank.training.checkpoint import checkpointing

T0 = 1_767_225_600.0
CFG = RetrievalConfig(embed_dim=8, out_dim=8, history_len=4, id_buckets=512, text_buckets=512, epochs=1,
                      batch_size=32, lr=1e-2, temperature=0.1)


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    cats = ("a", "b", "c")
    items = pd.DataFrame([{"item_id": f"{c}{j}", "title": f"{c}word{j % 4} {c}thing", "category": c,
                           "subcategory": f"{c}-{j % 2}", "creator": f"{c}w", "published_at": T0}
                          for c in cats for j in range(20)])
    vocabs = {"category": Vocab.build("category", items["category"]),
              "subcategory": Vocab.build("subcategory", items["subcategory"])}
    catalog = ItemCatalog.build(items, vocabs, CFG.id_buckets, CFG.text_buckets)
    n_users, per = 60, 6
    users = np.repeat(np.arange(n_users), per)
    picks = (users % 3) * 20 + rng.integers(0, 20, len(users))
    ts = T0 + np.tile(np.arange(per), n_users) * 60.0 + users
    clicks = ClickLog.build(users, ts, picks, n_users)
    n_cat, n_sub = len(vocabs["category"]), len(vocabs["subcategory"])
    torch.manual_seed(0)
    champion, _ = train_two_tower(CFG, catalog, clicks, n_cat, n_sub, np.random.default_rng(0), show_progress=False)
    return catalog, clicks, n_cat, n_sub, champion


def test_warm_start_trains_a_copy_and_keeps_the_dims(world):
    catalog, clicks, n_cat, n_sub, champion = world
    before = {k: v.clone() for k, v in champion.state_dict().items()}
    cfg = dataclasses.replace(CFG, embed_dim=16, out_dim=16)   # table sizes come from init, not cfg
    same, rep0 = train_two_tower(dataclasses.replace(cfg, epochs=0), catalog, clicks, n_cat, n_sub,
                                 np.random.default_rng(1), show_progress=False, init=champion)
    assert same is not champion and same.dims == champion.dims and rep0.epochs == 0
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in before.items())       # starts from init
    tuned, rep = train_two_tower(cfg, catalog, clicks, n_cat, n_sub, np.random.default_rng(1), show_progress=False,
                                 init=champion)
    assert all(torch.equal(v, champion.state_dict()[k]) for k, v in before.items())   # init untouched
    assert tuned.dims == champion.dims and np.isfinite(rep.final_loss)
    assert any(not torch.equal(v, tuned.state_dict()[k]) for k, v in before.items())


def test_warm_start_rejects_data_that_does_not_fit(world, tmp_path):
    catalog, clicks, n_cat, n_sub, champion = world
    with pytest.raises(ValueError, match="categories"):
        train_two_tower(CFG, catalog, clicks, n_cat + 1, n_sub, np.random.default_rng(0), show_progress=False,
                        init=champion)
    with pytest.raises(ValueError, match="content"):
        train_two_tower(CFG, catalog, clicks, n_cat, n_sub, np.random.default_rng(0), show_progress=False,
                        content=np.zeros((len(catalog), 4), np.float32), init=champion)


def test_warm_start_never_resumes_a_cold_runs_checkpoint(world, tmp_path):
    catalog, clicks, n_cat, n_sub, champion = world
    with checkpointing(tmp_path, every_steps=0):
        train_two_tower(CFG, catalog, clicks, n_cat, n_sub, np.random.default_rng(2), show_progress=False)
        _, warm = train_two_tower(CFG, catalog, clicks, n_cat, n_sub, np.random.default_rng(2), show_progress=False,
                                  init=champion)
        _, again = train_two_tower(CFG, catalog, clicks, n_cat, n_sub, np.random.default_rng(2), show_progress=False,
                                   init=champion)
    assert warm.resumed_from == "" and again.resumed_from.endswith("(finished)")
