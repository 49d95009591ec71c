"""Category names, subcategories and title vocabularies of the synthetic world.

Titles are built from three word pools so that a text model can learn the category (and,
more weakly, the subcategory) of an item from its title alone:

    category words     ~20 per category, shared by its subcategories
    subcategory words  the subcategory name plus a few words of its own
    generic words      shared by every category (noise)

With more categories than the 12 named ones, the extra categories get synthetic names
(``topic13``) and synthetic words (``t13w0``...), so any ``--categories`` value works.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# category -> (category words, {subcategory: subcategory words})
CATEGORIES: dict[str, tuple[list[str], dict[str, list[str]]]] = {
    "sports": (
        "match league season coach team score player fans stadium title final cup win defeat record injury transfer champion playoff rally".split(),
        {"football": "football striker goalkeeper penalty".split(), "tennis": "tennis serve grandslam racket".split(),
         "basketball": "basketball dunk court rebound".split(), "motorsport": "motorsport grandprix lap pitstop".split()},
    ),
    "politics": (
        "election vote minister parliament senate campaign policy party government president law bill debate coalition reform poll opposition cabinet governor mayor".split(),
        {"elections": "ballot turnout candidate primary".split(), "diplomacy": "diplomacy summit treaty embassy".split(),
         "legislation": "legislation amendment committee statute".split()},
    ),
    "tech": (
        "software startup app chip cloud data device launch platform developer code update smartphone internet security hardware gadget digital network algorithm".split(),
        {"ai": "ai model neural chatbot".split(), "gadgets": "gadgets wearable headset laptop".split(),
         "cybersecurity": "cybersecurity breach malware ransomware".split(), "startups": "startups founder funding venture".split()},
    ),
    "business": (
        "market company profit earnings shares investor stock revenue deal merger bank trade economy growth quarter ceo retail industry supply prices".split(),
        {"markets": "markets index bond rally".split(), "companies": "companies acquisition layoffs board".split(),
         "economy": "economy inflation rates jobs".split()},
    ),
    "entertainment": (
        "film movie star actor actress premiere show series music album concert celebrity festival award director streaming trailer box office cast".split(),
        {"movies": "movies blockbuster sequel studio".split(), "music": "music singer tour chart".split(),
         "tv": "tv episode season finale".split(), "celebrities": "celebrities wedding gossip red carpet".split()},
    ),
    "health": (
        "health doctor patient hospital study disease treatment vaccine diet sleep research symptoms care clinic medicine heart brain risk therapy virus".split(),
        {"fitness": "fitness workout running muscle".split(), "nutrition": "nutrition protein sugar vitamins".split(),
         "medicine": "medicine trial drug surgery".split()},
    ),
    "science": (
        "scientists discovery study research space planet physics biology experiment telescope species fossil climate ocean lab theory universe galaxy cell gene".split(),
        {"space": "space rocket mars orbit".split(), "biology": "biology evolution dna organism".split(),
         "physics": "physics quantum particle energy".split()},
    ),
    "travel": (
        "travel trip destination hotel flight beach island city tour vacation guide resort airline passport journey cruise mountain village hidden adventure".split(),
        {"destinations": "destinations itinerary sights coast".split(), "airlines": "airlines airport delays luggage".split(),
         "adventure": "adventure hiking trek camping".split()},
    ),
    "food": (
        "recipe cooking chef restaurant dinner kitchen flavor dish meal bake ingredients taste cuisine dessert menu spicy bread cheese wine breakfast".split(),
        {"recipes": "recipes easy quick homemade".split(), "restaurants": "restaurants review michelin opening".split(),
         "drinks": "drinks cocktail coffee brewery".split()},
    ),
    "finance": (
        "money savings budget loan mortgage tax retirement invest credit debt pension wealth income fund crypto insurance spending bills rent interest".split(),
        {"personalfinance": "personalfinance tips household plan".split(), "crypto": "crypto bitcoin token blockchain".split(),
         "realestate": "realestate housing buyers listing".split()},
    ),
    "weather": (
        "weather storm rain snow forecast temperature heat wind flood warning cold sunny hurricane tornado drought frost cloud humidity alert season".split(),
        {"storms": "storms thunder lightning damage".split(), "climate": "climate warming emissions record".split(),
         "forecast": "forecast weekend outlook chance".split()},
    ),
    "lifestyle": (
        "home style fashion design family parenting relationship dating wellness garden pets decor wedding shopping trend beauty habits kids routine friends".split(),
        {"fashion": "fashion outfit runway designer".split(), "parenting": "parenting toddler school teens".split(),
         "home": "home renovation interior garden".split(), "pets": "pets dog cat puppy".split()},
    ),
}

GENERIC_WORDS: list[str] = (
    "new how why what this the best top first big latest report update says after over amid inside "
    "week today year day people world local national five things know could will more"
).split()


def category_names(n_categories: int) -> list[str]:
    """The first ``n_categories`` category names (synthetic ``topicK`` names beyond 12)."""
    names = list(CATEGORIES)[:n_categories]
    names += [f"topic{k + 1}" for k in range(len(names), n_categories)]
    return names


def build_vocab(n_categories: int) -> tuple[list[str], list[list[str]], list[list[str]], list[list[list[str]]]]:
    """(category names, category words, subcategory names per category, subcategory words).

    Returns:
        names: C category names; cat_words: C lists of words; sub_names: C lists of
        subcategory names; sub_words: C lists of lists of words (one list per subcategory).
    """
    names = category_names(n_categories)
    cat_words: list[list[str]] = []
    sub_names: list[list[str]] = []
    sub_words: list[list[list[str]]] = []
    for k, name in enumerate(names):
        if name in CATEGORIES:
            words, subs = CATEGORIES[name]
            cat_words.append(list(words))
            sub_names.append(list(subs))
            sub_words.append([list(v) for v in subs.values()])
        else:
            cat_words.append([f"t{k + 1}w{j}" for j in range(20)])
            subs_n = 3
            sub_names.append([f"{name}-s{j + 1}" for j in range(subs_n)])
            sub_words.append([[f"t{k + 1}s{j + 1}w{m}" for m in range(4)] for j in range(subs_n)])
    return names, cat_words, sub_names, sub_words


def make_titles(
    rng: np.random.Generator,
    cat: np.ndarray,
    sub_local: np.ndarray,
    cat_words: list[list[str]],
    sub_words: list[list[list[str]]],
    p_category: float = 0.45,
    p_subcategory: float = 0.2,
    min_len: int = 5,
    max_len: int = 10,
) -> pa.Array:
    """Titles for items, vectorised (no Python loop over items).

    Each word is a category word with probability ``p_category``, a subcategory word with
    probability ``p_subcategory``, else a generic word; the first word is always a
    category or subcategory word.

    Args:
        cat: (N,) int category index; sub_local: (N,) int subcategory index within its category.
    Returns:
        (N,) Arrow string array.
    """
    n = len(cat)
    # One flat word table: generic words, then each category's words, then subcategory words.
    table: list[str] = list(GENERIC_WORDS)
    cat_off = np.zeros(len(cat_words), dtype=np.int64)
    cat_len = np.zeros(len(cat_words), dtype=np.int64)
    for c, words in enumerate(cat_words):
        cat_off[c], cat_len[c] = len(table), len(words)
        table += words
    max_sub = max(len(s) for s in sub_words)
    sub_off = np.zeros((len(sub_words), max_sub), dtype=np.int64)
    sub_len = np.ones((len(sub_words), max_sub), dtype=np.int64)
    for c, subs in enumerate(sub_words):
        for s, words in enumerate(subs):
            sub_off[c, s], sub_len[c, s] = len(table), len(words)
            table += words

    lengths = rng.integers(min_len, max_len + 1, size=n)
    kind_u = rng.random((n, max_len))
    pick = rng.random((n, max_len))
    kind_u[:, 0] *= p_category + p_subcategory  # first word is never generic
    c_idx = cat_off[cat][:, None] + (pick * cat_len[cat][:, None]).astype(np.int64)
    s_idx = sub_off[cat, sub_local][:, None] + (pick * sub_len[cat, sub_local][:, None]).astype(np.int64)
    g_idx = (pick * len(GENERIC_WORDS)).astype(np.int64)
    words = np.where(kind_u < p_category, c_idx, np.where(kind_u < p_category + p_subcategory, s_idx, g_idx))
    mask = np.arange(max_len)[None, :] < lengths[:, None]
    flat = words[mask]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = pa.array(table, type=pa.string()).take(pa.array(flat))
    lists = pa.ListArray.from_arrays(pa.array(offsets), values)
    titles = pc.binary_join(lists, " ")
    return pc.utf8_capitalize(titles)
