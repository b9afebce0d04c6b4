"""Where each pick sits in the taxonomy: the per sample x level codes the severity metrics count.

A pick at 1-based level k is the chosen option (or open-set node) of that level; it is *placed*
when it is a node of the taxonomy at depth k (names compared after `normalize_label`). Two small
ints per sample and level carry everything `hiertrain.metrics.functional` needs, so the metrics stay
pure tensor sums (exact under DDP):

- ``lca`` (int8): the LCA depth of a placed pick = how many levels from the root its path shares
  with the truth's path (k for a right pick, 0..k-1 for a wrong one; 0 = they meet only above the
  first level); -1 = not asked, or the pick has no place (unparseable, open-set text, not a node).
- ``links`` (int32 bits): at level c (0-based), bit c = the pick is placed; bit j < c = the pick's
  ancestor at level j is the pick at level j (both placed). Path consistency reads only these, so
  it needs no truth.

The truth of an asked level must be a node of the taxonomy at that level (else a one-line
HierError naming the sample, level and label): a taxonomy that does not fit the predictions is
not guessed around.
"""

from __future__ import annotations

from typing import Any, Iterable

from hiertrain.base.errors import HierError
from hiertrain.taxonomy.taxonomy import Taxonomy, normalize_label

NOT_PLACED = -1


def _field(lv: Any, name: str) -> Any:
    return lv.get(name) if isinstance(lv, dict) else getattr(lv, name)


class TaxonomyPlacer:
    """Looks picks and truths up in a taxonomy, level by level (depth k = 1-based level k)."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        self.source = taxonomy.source
        self.depth = taxonomy.depth
        self._paths: list[dict[str, tuple[str, ...]]] = [{} for _ in range(taxonomy.depth)]
        for path in taxonomy.paths.values():
            norm = tuple(normalize_label(node) for node in path)
            for i in range(len(norm)):
                self._paths[i].setdefault(norm[i], norm[: i + 1])

    def path(self, level: int, name: Any) -> tuple[str, ...] | None:
        """The normalised path root..node of `name` as a node of 1-based `level`, else None."""
        if not isinstance(name, str) or not 1 <= level <= self.depth:
            return None
        return self._paths[level - 1].get(normalize_label(name))

    def codes(self, sample_id: int, levels: Iterable[Any]) -> list[tuple[int, int]]:
        """(lca, links) of each level of one sample, in the given order. `levels`: objects or dicts
        with ``level``, ``truth``, ``predicted``, ``asked``, ``correct`` (a `LevelPrediction` or a
        predictions-file level)."""
        levels = list(levels)
        picks: dict[int, tuple[str, ...]] = {}
        for lv in levels:
            level = _field(lv, "level")
            if _field(lv, "asked"):
                found = self.path(level, _field(lv, "predicted"))
                if found is not None:
                    picks[level] = found
        out = []
        for lv in levels:
            level = _field(lv, "level")
            if not _field(lv, "asked"):
                out.append((NOT_PLACED, 0))
                continue
            truth = self.path(level, _field(lv, "truth"))
            if truth is None:
                raise HierError(
                    f"sample {sample_id} level {level}: truth {_field(lv, 'truth')!r} is not a level-{level} node of "
                    f"taxonomy {self.source} (give the taxonomy the predictions were made with)"
                )
            pick = picks.get(level)
            if pick is None:
                out.append((NOT_PLACED, 0))
                continue
            shared = next((i for i, (a, b) in enumerate(zip(pick, truth)) if a != b), level)
            if (shared == level) != bool(_field(lv, "correct")):
                said = "right" if _field(lv, "correct") else "wrong"
                raise HierError(
                    f"sample {sample_id} level {level}: pick {_field(lv, 'predicted')!r} is marked {said} but is "
                    f"{'not ' if shared != level else ''}the truth's node {_field(lv, 'truth')!r} in taxonomy {self.source}"
                )
            links = 1 << (level - 1)
            for j, above in picks.items():
                if j < level and pick[:j] == above:
                    links |= 1 << (j - 1)
            out.append((shared, links))
        return out


def placement_tensors(preds: list[Any], taxonomy: Taxonomy | TaxonomyPlacer, depth: int | None = None):
    """(lca int8, links int32) tensors [N, W] aligned with `predictions.to_tensors(preds, depth)`
    (the same width rule; its checks run first). Columns a sample lacks: lca -1, links 0."""
    import torch

    from hiertrain.metrics.functional import MAX_DEPTH

    deepest = max((lv.level for p in preds for lv in p.levels), default=1)
    width = depth or deepest
    if not deepest <= width <= MAX_DEPTH:
        raise HierError(f"level {deepest} is deeper than the {width} levels asked for (at most {MAX_DEPTH})")
    placer = taxonomy if isinstance(taxonomy, TaxonomyPlacer) else TaxonomyPlacer(taxonomy)
    lca = torch.full((len(preds), width), NOT_PLACED, dtype=torch.int8)
    links = torch.zeros((len(preds), width), dtype=torch.int32)
    for row, p in enumerate(preds):
        for lv, (d, bits) in zip(p.levels, placer.codes(p.id, p.levels)):
            lca[row, lv.level - 1] = d
            links[row, lv.level - 1] = bits
    return lca, links
