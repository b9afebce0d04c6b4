"""Open-set answers: a free reply matched to the taxonomy's nodes, and what the matches say.

In the open condition (hiertrain.protocol.conditions) a level is asked without options, so the reply
is a name, maybe with words around it ("It is a Passeriformes."). `OpenSetMatcher.match` finds
which taxonomy nodes the reply names:

- normalisation on both sides: NFKC, casefold, every non-alphanumeric run -> one space, and each
  word's plural "s" dropped ("Sparrows" = "sparrow"; the node "Passeriformes" and a reply
  "passeriforme" meet at "passeriforme");
- a node counts when its normalised words occur as a contiguous run of the reply's words
  (surrounding text is allowed); a match inside a longer match is dropped ("albatross" inside
  "black footed albatross");
- synonyms: an optional {alias: node} map (hiertrain's shipped taxonomies carry none);
- verdict: exactly one node of the asked level named -> "level" (that node is the answer);
  two or more -> "ambiguous"; none of the asked level but a node of another level -> "other_level";
  nothing -> "none". Only "level" can be correct.

`open_set_metrics` adds to metrics.json the rate of each verdict over all asked levels and per
level (per-level exact-match accuracy and open-set HCA are the ordinary metrics of the run).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hiertrain.base.errors import HierError

VERDICTS: tuple[str, ...] = ("level", "ambiguous", "other_level", "none")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def _word(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def normalize_name(text: str) -> tuple[str, ...]:
    """The words a name is matched by: casefolded, punctuation gone, plural "s" dropped."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return tuple(_word(w) for w in _NON_ALNUM.sub(" ", text).split())


@dataclass
class OpenMatch:
    """What a reply named: the verdict, the answer node (verdict "level"), every node found."""

    verdict: str
    node: str | None
    found: list[tuple[str, int]]  # (node, 0-based level) of each match, in reply order

    def to_json(self) -> dict[str, Any]:
        return {"match": self.verdict, "node": self.node, "found": [[n, lvl + 1] for n, lvl in self.found]}


class OpenSetMatcher:
    """Matches replies to the nodes of a taxonomy, level by level.

    Args:
        levels: the node names of each level (0-based depth), e.g. `[taxonomy.nodes_at(i) ...]`.
        synonyms: optional {alias: node name}; an alias matches as its node does.
    """

    def __init__(self, levels: list[list[str]], synonyms: Mapping[str, str] | None = None) -> None:
        self.levels = [list(nodes) for nodes in levels]
        self._keys: dict[tuple[str, ...], set[tuple[str, int]]] = {}
        for depth, nodes in enumerate(self.levels):
            for node in nodes:
                self._add(normalize_name(node), node, depth)
        known = {node: depth for depth, nodes in enumerate(self.levels) for node in nodes}
        for alias, node in (synonyms or {}).items():
            if node not in known:
                raise HierError(f"synonym {alias!r} names {node!r}, which is not a node of the taxonomy")
            for depth, nodes in enumerate(self.levels):
                if node in nodes:
                    self._add(normalize_name(alias), node, depth)
        self._longest = max((len(k) for k in self._keys), default=0)

    @classmethod
    def from_taxonomy(cls, taxonomy: Any, synonyms: Mapping[str, str] | None = None) -> OpenSetMatcher:
        return cls([taxonomy.nodes_at(i) for i in range(taxonomy.depth)], synonyms)

    def _add(self, key: tuple[str, ...], node: str, depth: int) -> None:
        if key:
            self._keys.setdefault(key, set()).add((node, depth))

    def candidates(self, level: int) -> int:
        """How many nodes the asked level has (uniform guessing among them is its chance level)."""
        if not 0 <= level < len(self.levels):
            raise HierError(f"level {level + 1} is not in the taxonomy (depth {len(self.levels)})")
        return len(self.levels[level])

    def match(self, reply: str, level: int) -> OpenMatch:
        """The verdict for `reply` to a question about 0-based `level`."""
        self.candidates(level)
        words = normalize_name(reply)
        spans = []  # (start, end, key)
        for start in range(len(words)):
            for end in range(min(len(words), start + self._longest), start, -1):
                key = words[start:end]
                if key in self._keys:
                    spans.append((start, end, key))
        kept = [s for s in spans if not any(o[0] <= s[0] and s[1] <= o[1] and (o[1] - o[0]) > (s[1] - s[0]) for o in spans)]
        found: list[tuple[str, int]] = []
        for _, _, key in sorted(kept):
            for hit in sorted(self._keys[key], key=lambda h: (h[1], h[0])):
                if hit not in found:
                    found.append(hit)
        at_level = sorted({node for node, depth in found if depth == level})
        if len(at_level) == 1:
            return OpenMatch("level", at_level[0], found)
        if at_level:
            return OpenMatch("ambiguous", None, found)
        return OpenMatch("other_level" if found else "none", None, found)

    def same(self, node: str, truth: str) -> bool:
        """Whether the answer node is the truth (the question file may spell it in another case)."""
        return normalize_name(node) == normalize_name(truth)


def open_set_metrics(preds: list[Any], depth: int) -> dict[str, Any] | None:
    """`{"open_set": {verdict rates overall and per level}}` for a run's SamplePredictions; None
    when no level holds an open-set match (not an open-set run)."""
    totals = {v: 0 for v in VERDICTS}
    per_level = [{v: 0 for v in VERDICTS} for _ in range(depth)]
    asked = [0] * depth
    for p in preds:
        for lv in p.levels:
            verdict = (lv.detail or {}).get("match") if lv.asked else None
            if verdict is None:
                continue
            if verdict not in totals:
                raise HierError(f"sample {p.id} level {lv.level}: unknown open-set verdict {verdict!r}")
            totals[verdict] += 1
            per_level[lv.level - 1][verdict] += 1
            asked[lv.level - 1] += 1
    n = sum(totals.values())
    if not n:
        return None
    return {
        "open_set": {
            "asked": n,
            **{f"{v}_rate": totals[v] / n for v in VERDICTS},
            "per_level": [
                {f"{v}_rate": (counts[v] / k if k else None) for v in VERDICTS} for counts, k in zip(per_level, asked)
            ],
        }
    }
