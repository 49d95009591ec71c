"""The synthetic world: the embedded default dataset and the scale test bed.

Users with drifting topic preferences, items with publish times and decaying appeal,
creators in two groups, a stochastic logging policy with exact propensities and
position-biased clicks from a known click model. Because the ground truth is stored next to
the data (``<dataset>/truth/``), tests and evaluation can measure what a perfect ranker
would score.

    from feedrank.data.synth import WorldConfig, generate_world, WorldTruth
    generate_world("var/world", WorldConfig(n_users=20_000, n_items=5_000, n_days=14, seed=1))
    truth = WorldTruth.load("var/world")

See docs/synthetic-world.md for the generative model and its defaults.
"""

from feedrank.data.synth.policy import Feeds, LoggingPolicy
from feedrank.data.synth.simulate import SynthSummary, generate_world
from feedrank.data.synth.truth import WorldTruth, parse_ids
from feedrank.data.synth.world import GROUPS, World, WorldConfig

__all__ = [
    "GROUPS",
    "Feeds",
    "LoggingPolicy",
    "SynthSummary",
    "World",
    "WorldConfig",
    "WorldTruth",
    "generate_world",
    "parse_ids",
]
