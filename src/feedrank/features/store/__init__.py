"""Online feature store: one ``OnlineStore`` Protocol, backends memory | sqlite | redis.

    from feedrank.features.store import open_store
    store = open_store("sqlite:///var/features.db")
"""

from feedrank.features.store.factory import open_store
from feedrank.features.store.protocol import FeatureBatch, OnlineStore

__all__ = ["FeatureBatch", "OnlineStore", "open_store"]
