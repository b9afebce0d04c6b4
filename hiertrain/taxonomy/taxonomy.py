"""The label hierarchy: leaf -> path of nodes, one node per level (a level is a depth).

Every other file asks this one which nodes exist at a level (the classes and the
distractor pool of that level) and which path a label has. Labels are matched after
`normalize_label`, because the real files disagree on case and punctuation
("Black footed Albatross" vs "Black-footed Albatross").

Formats read:
- the paper's JSON `{leaf: [root, ..., leaf]}` (level names may sit in a sidecar
  `<stem>.levels.json`, a JSON list of strings, so the main file stays in the paper's format);
- iNat21-style category records (kingdom .. genus, specific_epithet / name);
- a parent-child edge list.
"""

from __future__ import annotations

import difflib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from hiertrain.base.errors import HierError
from hiertrain.base.resources import read_data_text, resolve_data_path

INAT_LEVELS: tuple[str, ...] = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
CUB_LEVELS: tuple[str, ...] = ("order", "family", "genus", "species")
INAT_RANK_FIELDS: tuple[str, ...] = INAT_LEVELS[:-1]
MULTI_PARENT_POLICIES: tuple[str, ...] = ("error", "first")
MultiParent = Literal["error", "first"]

_SPACES = re.compile(r"\s+")


def normalize_label(s: str) -> str:
    """Casefold, '-'/'_' -> space, collapse whitespace: the key every label match uses."""
    s = unicodedata.normalize("NFKC", s).casefold().replace("-", " ").replace("_", " ")
    return _SPACES.sub(" ", s).strip()


def level_names_path(path: str | Path) -> Path:
    """Where the level names of a taxonomy JSON live: `taxonomy.json` -> `taxonomy.levels.json`
    (`taxonomy.json.gz` too: the sidecar is never compressed)."""
    path = Path(path)
    name = path.name[: -len(".gz")] if path.name.endswith(".gz") else path.name
    return path.with_name(f"{Path(name).stem}.levels.json")


def _join(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _quote_list(items: Sequence[str]) -> str:
    return _join([f"'{x}'" for x in items])


def _multi_parent_hint(first: str) -> str:
    return f"pass on_multi_parent='first' (--on-multi-parent first) to keep '{first}', or fix the file"


class Taxonomy:
    """A validated tree of labels. Construction raises HierError on the first fatal defect."""

    def __init__(
        self,
        paths: Mapping[str, Sequence[str]],
        level_names: Sequence[str] | None = None,
        source: str = "<memory>",
        on_multi_parent: MultiParent = "error",
        drop_trivial_levels: bool = False,
    ) -> None:
        self.source = str(source)
        if on_multi_parent not in MULTI_PARENT_POLICIES:
            raise HierError(
                f"{self.source}: on_multi_parent must be one of {', '.join(MULTI_PARENT_POLICIES)}, "
                f"not '{on_multi_parent}'"
            )
        self._notes: list[str] = []
        checked = self._check_paths(paths)
        checked = self._resolve_multi_parents(checked, on_multi_parent)
        self.depth = max((len(p) for p in checked.values()), default=0)
        names = self._check_level_names(checked, level_names)
        if drop_trivial_levels:
            checked, names = self._drop_trivial(checked, names)
            self.depth = max((len(p) for p in checked.values()), default=0)
        self.paths: dict[str, tuple[str, ...]] = checked
        self.level_names: list[str] = names
        self._by_norm = {normalize_label(leaf): leaf for leaf in checked}
        self._levels = self._collect_levels()
        self._note_cross_depth_names()

    # ---- constructors -------------------------------------------------------------------

    @classmethod
    def from_paths(cls, paths: Mapping[str, Sequence[str]], **kwargs) -> Taxonomy:
        """The paper's `{leaf: [root, ..., leaf]}` mapping, already in memory."""
        return cls(paths, **kwargs)

    @classmethod
    def from_inat_records(cls, records: Iterable[Mapping], source: str = "<memory>", **kwargs) -> Taxonomy:
        """iNat21 category records; the species label is "genus specific_epithet" (else `name`)."""
        paths: dict[str, list[str]] = {}
        for i, rec in enumerate(records):
            if not isinstance(rec, Mapping):
                raise HierError(f"{source}: record {i} is not an object")
            ranks = []
            for field in INAT_RANK_FIELDS:
                value = rec.get(field)
                if not isinstance(value, str) or not value.strip():
                    raise HierError(f"{source}: record {i} ('{rec.get('name', '?')}') has no '{field}'")
                ranks.append(value.strip())
            epithet = rec.get("specific_epithet")
            if isinstance(epithet, str) and epithet.strip():
                species = f"{ranks[-1]} {epithet.strip()}"
            elif isinstance(rec.get("name"), str) and rec["name"].strip():
                species = rec["name"].strip()
            else:
                raise HierError(f"{source}: record {i} has neither 'specific_epithet' nor 'name'")
            if species in paths:
                raise HierError(f"{source}: record {i}: species '{species}' appears twice")
            paths[species] = [*ranks, species]
        if kwargs.get("level_names") is None:
            kwargs["level_names"] = INAT_LEVELS
        return cls(paths, source=source, **kwargs)

    @classmethod
    def from_edges(
        cls,
        edges: Iterable[Sequence[str]],
        source: str = "<memory>",
        on_multi_parent: MultiParent = "error",
        **kwargs,
    ) -> Taxonomy:
        """(parent, child) pairs; leaves are the nodes without children, in first-seen order."""
        pairs: list[tuple[str, str]] = []
        for i, edge in enumerate(edges):
            if (
                not isinstance(edge, Sequence)
                or isinstance(edge, str)
                or len(edge) != 2
                or not all(isinstance(x, str) and x.strip() for x in edge)
            ):
                raise HierError(f"{source}: edge {i} is not a [parent, child] pair of names")
            pairs.append((edge[0].strip(), edge[1].strip()))
        children: dict[str, list[str]] = {}
        parents: dict[str, list[str]] = {}
        order: dict[str, None] = {}
        for parent, child in pairs:
            order.setdefault(parent)
            order.setdefault(child)
            children.setdefault(parent, [])
            if child not in children[parent]:
                children[parent].append(child)
            parents.setdefault(child, [])
            if parent not in parents[child]:
                parents[child].append(parent)
        cycle = _find_cycle(list(order), children)
        if cycle:
            raise HierError(f"{source}: cycle in edges: {' -> '.join(repr(n) for n in cycle)}")
        if on_multi_parent not in MULTI_PARENT_POLICIES:
            raise HierError(
                f"{source}: on_multi_parent must be one of {', '.join(MULTI_PARENT_POLICIES)}, "
                f"not '{on_multi_parent}'"
            )
        notes = []
        for node, ps in parents.items():
            if len(ps) > 1:
                if on_multi_parent == "error":
                    raise HierError(
                        f"{source}: node '{node}' has {len(ps)} parents: {_quote_list(ps)}; "
                        + _multi_parent_hint(ps[0])
                    )
                notes.append(f"node '{node}' had parents {_quote_list(ps)}; kept '{ps[0]}' (on_multi_parent='first')")
        paths: dict[str, list[str]] = {}
        for node in order:
            if children.get(node):
                continue
            path = [node]
            while path[-1] in parents:
                path.append(parents[path[-1]][0])
            paths[node] = path[::-1]
        tax = cls(paths, source=source, **kwargs)
        tax._notes[:0] = notes
        return tax

    @classmethod
    def from_json(
        cls,
        path: str | Path,
        level_names: Sequence[str] | None = None,
        on_multi_parent: MultiParent = "error",
        drop_trivial_levels: bool = False,
    ) -> Taxonomy:
        """Read a taxonomy file: paper mapping, iNat records (list or {"categories": [...]}) or edges.

        `path` may be gzipped or a packaged `hiertrain://` name (hiertrain.base.resources)."""
        path = resolve_data_path(path)
        data = _read_json(path)
        if level_names is None and level_names_path(path).is_file():
            level_names = _read_level_names(level_names_path(path))
        kwargs = dict(
            level_names=level_names,
            source=str(path),
            on_multi_parent=on_multi_parent,
            drop_trivial_levels=drop_trivial_levels,
        )
        if isinstance(data, dict) and isinstance(data.get("categories"), list):
            data = data["categories"]
        if isinstance(data, dict):
            return cls(data, **kwargs)
        if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
            return cls.from_inat_records(data, **kwargs)
        if isinstance(data, list) and data:
            return cls.from_edges(data, **kwargs)
        raise HierError(f"{path}: expected {{leaf: [root, ..., leaf]}}, iNat category records or [parent, child] edges")

    def to_json(self, path: str | Path) -> Path:
        """Write the paper's format (indent 4, like the shipped files) plus the level-names sidecar."""
        path = Path(path)
        path.write_text(json.dumps({k: list(v) for k, v in self.paths.items()}, indent=4, ensure_ascii=False) + "\n")
        level_names_path(path).write_text(json.dumps(self.level_names, ensure_ascii=False) + "\n")
        return path

    # ---- queries --------------------------------------------------------------------------

    @property
    def leaves(self) -> list[str]:
        """Leaf labels in file order."""
        return list(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, label: object) -> bool:
        return isinstance(label, str) and normalize_label(label) in self._by_norm

    def nodes_at(self, level: int) -> list[str]:
        """Sorted unique nodes at depth `level` (0-based): the classes and distractor pool of that level."""
        if not 0 <= level < self.depth:
            raise HierError(f"{self.source}: level {level} out of range 0..{self.depth - 1}")
        return sorted(self._levels[level].values())

    def classes_per_level(self) -> list[int]:
        return [len(nodes) for nodes in self._levels]

    def depth_range(self) -> tuple[int, int]:
        """(shortest, longest) path length; they differ for WordNet-style taxonomies."""
        lengths = [len(p) for p in self.paths.values()]
        return (min(lengths), max(lengths)) if lengths else (0, 0)

    def resolve(self, label: str) -> str:
        """The canonical leaf label for any spelling of it."""
        leaf = self._by_norm.get(normalize_label(label))
        if leaf is None:
            close = difflib.get_close_matches(normalize_label(label), list(self._by_norm), n=1)
            hint = f" (closest: '{self._by_norm[close[0]]}')" if close else ""
            raise HierError(f"{self.source}: label '{label}' not in taxonomy{hint}")
        return leaf

    def path(self, label: str) -> tuple[str, ...]:
        return self.paths[self.resolve(label)]

    def trivial_levels(self) -> list[int]:
        """Levels with a single class: every answer there is correct, so they inflate scores."""
        return [i for i, nodes in enumerate(self._levels) if len(nodes) == 1]

    def problems(self) -> list[str]:
        """Non-fatal findings, one line each (fatal ones raised HierError at construction)."""
        found = list(self._notes)
        for i in self.trivial_levels():
            (only,) = self._levels[i].values()
            found.append(
                f"level {i + 1} ({self.level_names[i]}) has a single class '{only}': it is always "
                f"answered correctly; drop_trivial_levels=True removes it"
            )
        return found

    def __repr__(self) -> str:
        return f"Taxonomy({self.source!r}, leaves={len(self)}, levels={self.level_names})"

    # ---- validation (construction) -------------------------------------------------------

    def _note(self, line: str) -> None:
        if line not in self._notes:
            self._notes.append(line)

    def _check_paths(self, paths: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
        if not isinstance(paths, Mapping) or not paths:
            raise HierError(f"{self.source}: taxonomy is empty or not a {{leaf: path}} mapping")
        checked: dict[str, tuple[str, ...]] = {}
        seen: dict[str, str] = {}
        for leaf, path in paths.items():
            if not isinstance(leaf, str) or not leaf.strip():
                raise HierError(f"{self.source}: empty leaf label")
            if isinstance(path, str) or not isinstance(path, Sequence):
                raise HierError(f"{self.source}: leaf '{leaf}': path is not a list of names")
            if not path:
                raise HierError(f"{self.source}: leaf '{leaf}' has an empty path")
            for i, node in enumerate(path):
                if not isinstance(node, str) or not node.strip():
                    raise HierError(f"{self.source}: leaf '{leaf}' has an empty or non-text node at level {i + 1}")
            key = normalize_label(leaf)
            if normalize_label(path[-1]) != key:
                raise HierError(f"{self.source}: leaf '{leaf}' path ends at '{path[-1]}', not at the leaf")
            if path[-1] != leaf:
                self._notes.append(f"leaf '{leaf}' is spelled '{path[-1]}' at the end of its path")
            if key in seen:
                raise HierError(f"{self.source}: leaf '{leaf}' duplicates leaf '{seen[key]}' after normalisation")
            seen[key] = leaf
            checked[leaf] = tuple(n.strip() for n in path)
        return checked

    def _resolve_multi_parents(
        self, paths: dict[str, tuple[str, ...]], policy: MultiParent
    ) -> dict[str, tuple[str, ...]]:
        """A node (name at a depth) must have one parent; 'first' rewrites later paths to the first
        one. Ancestors take their first spelling, so a level's classes and a path always agree."""
        canon: dict[tuple[int, str], tuple[str, ...]] = {}
        first_leaf: dict[tuple[int, str], str] = {}
        conflicts: dict[tuple[int, str], dict[str, str]] = {}  # node -> {parent: example leaf}
        out: dict[str, tuple[str, ...]] = {}
        for leaf, path in paths.items():
            new: list[str] = []
            for i, node in enumerate(path):
                key = (i, normalize_label(node))
                is_leaf = i == len(path) - 1
                if key not in canon or is_leaf:
                    if key not in canon:
                        canon[key], first_leaf[key] = (*new, node), leaf
                    new.append(node)
                    continue
                known = canon[key]
                if known[-1] != node:
                    self._note(f"level {i + 1} node '{known[-1]}' is also spelled '{node}'")
                if i and normalize_label(known[-2]) != normalize_label(new[-1]):
                    seen = conflicts.setdefault(key, {known[-2]: first_leaf[key]})
                    seen.setdefault(new[-1], leaf)
                new = list(known)
            out[leaf] = tuple(new)
        for (i, key), parents in conflicts.items():
            node = canon[(i, key)][-1]
            listed = _join([f"'{p}' (leaf '{lf}')" for p, lf in parents.items()])
            first = next(iter(parents))
            if policy == "error":
                raise HierError(
                    f"{self.source}: node '{node}' at level {i + 1} has {len(parents)} parents: {listed}; "
                    + _multi_parent_hint(first)
                )
            moved = sum(
                1
                for lf, p in paths.items()
                if p != out[lf] and len(p) > i and normalize_label(p[i]) == key
            )
            self._notes.append(
                f"node '{node}' at level {i + 1} had {len(parents)} parents: {listed}; kept '{first}' "
                f"(on_multi_parent='first'), moved {moved} leaves"
            )
        return out

    def _check_level_names(self, paths: dict[str, tuple[str, ...]], names: Sequence[str] | None) -> list[str]:
        if names is None:
            return _default_level_names(paths, self.source, self.depth)
        names = list(names)
        if len(names) != self.depth or not all(isinstance(n, str) and n.strip() for n in names):
            raise HierError(
                f"{self.source}: {len(names)} level names given for a taxonomy of depth {self.depth}: {names}"
            )
        return names

    def _drop_trivial(
        self, paths: dict[str, tuple[str, ...]], names: list[str]
    ) -> tuple[dict[str, tuple[str, ...]], list[str]]:
        """Remove single-class levels (never a path's leaf), so questions and metrics skip them."""
        trivial = []
        for i in range(self.depth):
            inner = {normalize_label(p[i]) for p in paths.values() if len(p) > i + 1}
            leaves_here = [p for p in paths.values() if len(p) == i + 1]
            if len(inner) == 1 and not leaves_here:
                trivial.append(i)
        for i in trivial:
            only = next(p[i] for p in paths.values() if len(p) > i)
            self._notes.append(f"dropped level {i + 1} ({names[i]}): single class '{only}'")
        keep = [i for i in range(self.depth) if i not in trivial]
        paths = {leaf: tuple(p[i] for i in keep if i < len(p)) for leaf, p in paths.items()}
        return paths, [names[i] for i in keep]

    def _collect_levels(self) -> list[dict[str, str]]:
        """Per depth: normalised name -> first spelling; notes other spellings of the same node."""
        levels: list[dict[str, str]] = [{} for _ in range(self.depth)]
        for path in self.paths.values():
            for i, node in enumerate(path):
                first = levels[i].setdefault(normalize_label(node), node)
                if first != node:
                    self._note(f"level {i + 1} node '{first}' is also spelled '{node}'")
        return levels

    def _note_cross_depth_names(self) -> None:
        """A name used at two depths (CUB's genus 'Sayornis' and species 'Sayornis') is two nodes."""
        where: dict[str, list[int]] = {}
        for i, nodes in enumerate(self._levels):
            for key in nodes:
                where.setdefault(key, []).append(i + 1)
        for key, levels in where.items():
            if len(levels) > 1:
                name = self._levels[levels[0] - 1][key]
                self._notes.append(
                    f"name '{name}' is a node at levels {', '.join(map(str, levels))} (counted once per level)"
                )


def _default_level_names(paths: Mapping[str, Sequence[str]], source: str, depth: int) -> list[str]:
    """iNat (7 ranks) and CUB (4 ranks, file named CUB*) by shape; otherwise 'depth k'."""
    lengths = {len(p) for p in paths.values()}
    if lengths == {len(INAT_LEVELS)}:
        return list(INAT_LEVELS)
    if lengths == {len(CUB_LEVELS)} and "cub" in source.casefold():
        return list(CUB_LEVELS)
    return [f"depth {k}" for k in range(1, depth + 1)]


def _find_cycle(nodes: list[str], children: Mapping[str, list[str]]) -> list[str] | None:
    """First cycle found by an iterative DFS, as a closed list of names (a -> b -> a)."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for start in nodes:
        if start in state:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        state[start] = 1
        while stack:
            node, k = stack[-1]
            kids = children.get(node, [])
            if k == len(kids):
                state[node] = 2
                stack.pop()
                continue
            stack[-1] = (node, k + 1)
            child = kids[k]
            if state.get(child) == 1:
                on_stack = [n for n, _ in stack]
                return [*on_stack[on_stack.index(child):], child]
            if child not in state:
                state[child] = 1
                stack.append((child, 0))
    return None


def _read_json(path: Path):
    text = read_data_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise HierError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None


def _read_level_names(path: Path) -> list[str]:
    names = _read_json(path)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise HierError(f"{path}: level names must be a JSON list of strings")
    return names
