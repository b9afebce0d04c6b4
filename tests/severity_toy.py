"""The toy taxonomy and predictions the severity and path tests share, with the values worked out
by hand (tests/metrics/test_placement.py checks them; score, report and compare tests reuse them)."""

from __future__ import annotations

from hiertrain.metrics.predictions import LevelPrediction, SamplePrediction
from hiertrain.taxonomy.taxonomy import Taxonomy

# Level 1: A, B.  A -> A1, A2;  B -> B1.  A1 -> a, b;  A2 -> c;  B1 -> d.
TOY = Taxonomy.from_paths({"a": ("A", "A1", "a"), "b": ("A", "A1", "b"), "c": ("A", "A2", "c"), "d": ("B", "B1", "d")})
LEVELS = [["A", "B"], ["A1", "A2", "B1"], ["a", "b", "c", "d"]]
PATHS = {"a": ("A", "A1", "a"), "b": ("A", "A1", "b"), "c": ("A", "A2", "c"), "d": ("B", "B1", "d")}


def sample(sid: int, leaf: str, picks: list[str | None]) -> SamplePrediction:
    """`picks[k]` = the option chosen at level k + 1 (None = unparseable)."""
    levels = []
    for k, (truth, pick) in enumerate(zip(PATHS[leaf], picks)):
        options = LEVELS[k] + (["zebra"] if pick == "zebra" else [])
        levels.append(
            LevelPrediction(
                level=k + 1, truth=truth, options=options, letter=None if pick is None else "A",
                predicted=pick, correct=pick == truth,
            )
        )
    return SamplePrediction(id=sid, levels=levels, label=leaf)


# truth path          picks                 wrong picks: (level, LCA depth, tree distance)
# s0 A A1 a           A  A1 b               (3, 2, 2)                          path: yes
# s1 A A1 a           B  A2 c               (1, 0, 2) (2, 1, 2) (3, 1, 4)      path: no (A2 is under A)
# s2 B B1 d           B  B1 d               none                               path: yes
# s3 A A2 c           A  ?  a               level 2 unparseable; (3, 1, 4)     path: no (a pick missing)
# s4 B B1 d           A  A1 a               (1, 0, 2) (2, 0, 4) (3, 0, 6)      path: yes (wrong, but a path)
# s5 A A1 b           A  zebra b            level 2 not a node (unplaced)      path: no
PREDS = [
    sample(0, "a", ["A", "A1", "b"]),
    sample(1, "a", ["B", "A2", "c"]),
    sample(2, "d", ["B", "B1", "d"]),
    sample(3, "c", ["A", None, "a"]),
    sample(4, "d", ["A", "A1", "a"]),
    sample(5, "b", ["A", "zebra", "b"]),
]
HAND = {
    # per level: L1 LCA 0, 0 -> 0, distances 2, 2 -> 2; L2 LCA 1, 0 -> 1/2, distances 2, 4 -> 3;
    # L3 LCA 2, 1, 1, 0 -> 1, distances 2, 4, 4, 6 -> 4. Overall: 5 / 8 and 26 / 8.
    "mistake_lca_depth": 5 / 8,
    "mistake_lca_depth_per_level": [0.0, 0.5, 1.0],
    "mistake_distance": 26 / 8,
    "mistake_distance_per_level": [2.0, 3.0, 4.0],
    "mistake_severity": [4, 3, 1],  # wrong placed picks at LCA depth 0, 1, 2
    "mistakes_unplaced": 2,  # s3 level 2 (unparseable), s5 level 2 ("zebra")
    "path_consistency": 0.5,  # s0, s2, s4 of 6
}
