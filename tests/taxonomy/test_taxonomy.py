"""hiertrain.taxonomy.taxonomy: the six shipped taxonomies load with the README's counts, labels match
across spellings, and every defect gets its one exact message."""

from __future__ import annotations

import json

import pytest

from hiertrain.base.errors import HierError
from hiertrain.taxonomy.taxonomy import CUB_LEVELS, INAT_LEVELS, Taxonomy, level_names_path, normalize_label


def tax_file(reference_data, name):
    return reference_data / "taxonomies" / f"hierarchy_{name}.json"


# ---- normalisation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b",
    [
        ("Black footed Albatross", "Black-footed Albatross"),
        ("black_footed  albatross ", "BLACK-FOOTED ALBATROSS"),
        ("Nelson's sharp-tailed Sparrow", "Nelson's Sharp tailed  Sparrow"),
        ("\tgolf   cart\n", "golf_cart"),
    ],
)
def test_normalize_label_merges_spellings(a, b):
    assert normalize_label(a) == normalize_label(b)


def test_normalize_label_keeps_different_words_apart():
    assert normalize_label("Sooty Albatross") != normalize_label("Laysan Albatross")
    assert normalize_label("Black-footed Albatross") == "black footed albatross"


# ---- the shipped taxonomies -----------------------------------------------------------------

# (leaves, shortest path, longest path) as stated in shared/data/README.md; the two ImageNet
# files together span depth 3..12 (README); per file, counted by reading the JSON.
README_COUNTS = {
    "CUB200": (200, 4, 4),
    "Inat_animal": (5388, 7, 7),
    "Inat_plantae": (4271, 7, 7),
    "imagenet_animal": (397, 4, 12),
    "imagenet_artifact": (494, 3, 8),
    "Food": (84, 3, 5),
}


@pytest.mark.parametrize("name", sorted(README_COUNTS))
def test_shipped_taxonomies_match_readme(reference_data, name):
    leaves, low, high = README_COUNTS[name]
    tax = Taxonomy.from_json(tax_file(reference_data, name), on_multi_parent="first")
    assert len(tax) == leaves
    assert tax.depth_range() == (low, high)
    assert tax.depth == high
    assert len(tax.level_names) == high
    # every leaf resolves to itself and its path ends at it
    for leaf, path in tax.paths.items():
        assert tax.resolve(leaf) == leaf
        assert normalize_label(path[-1]) == normalize_label(leaf)
    # the classes of a level are exactly the distinct nodes at that depth
    for level in range(tax.depth):
        expected = {normalize_label(p[level]) for p in tax.paths.values() if len(p) > level}
        assert {normalize_label(n) for n in tax.nodes_at(level)} == expected


def test_imagenet_depths_span_readme_range(reference_data):
    ranges = [Taxonomy.from_json(tax_file(reference_data, n), on_multi_parent="first").depth_range()
              for n in ("imagenet_animal", "imagenet_artifact")]
    assert min(r[0] for r in ranges) == 3 and max(r[1] for r in ranges) == 12


def test_inat_plantae_classes_per_level(reference_data):
    tax = Taxonomy.from_json(tax_file(reference_data, "Inat_plantae"))
    assert tax.level_names == list(INAT_LEVELS)
    assert tax.classes_per_level() == [1, 5, 14, 85, 286, 1702, 4271]
    assert tax.nodes_at(0) == ["Plantae"]
    assert tax.trivial_levels() == [0]
    assert (
        "level 1 (kingdom) has a single class 'Plantae': it is always answered correctly; "
        "drop_trivial_levels=True removes it"
    ) in tax.problems()


def test_drop_trivial_levels_removes_kingdom(reference_data):
    tax = Taxonomy.from_json(tax_file(reference_data, "Inat_plantae"), drop_trivial_levels=True)
    assert tax.level_names == list(INAT_LEVELS[1:])
    assert tax.classes_per_level() == [5, 14, 85, 286, 1702, 4271]
    assert tax.trivial_levels() == []
    assert tax.path("Houstonia purpurea") == (
        "Tracheophyta", "Magnoliopsida", "Gentianales", "Rubiaceae", "Houstonia", "Houstonia purpurea"
    )
    assert "dropped level 1 (kingdom): single class 'Plantae'" in tax.problems()


def test_drop_trivial_levels_on_varying_depth(reference_data):
    tax = Taxonomy.from_json(tax_file(reference_data, "Food"), drop_trivial_levels=True)
    assert tax.depth_range() == (2, 4)
    assert "food" not in {normalize_label(n) for n in tax.nodes_at(0)}
    assert tax.path("eggs benedict") == ("breakfast food", "eggs benedict")


def test_level_names_cub_and_depth(reference_data):
    assert Taxonomy.from_json(tax_file(reference_data, "CUB200")).level_names == list(CUB_LEVELS)
    food = Taxonomy.from_json(tax_file(reference_data, "Food"))
    assert food.level_names == ["depth 1", "depth 2", "depth 3", "depth 4", "depth 5"]
    named = Taxonomy.from_json(tax_file(reference_data, "CUB200"), level_names=["o", "f", "g", "s"])
    assert named.level_names == ["o", "f", "g", "s"]


def test_cub_label_spellings_resolve(reference_data):
    tax = Taxonomy.from_json(tax_file(reference_data, "CUB200"))
    expected = ("Procellariiformes", "Diomedeidae", "Phoebastria", "Black-footed Albatross")
    assert tax.path("Black footed Albatross") == expected
    assert tax.path("black_footed_albatross") == expected
    assert tax.resolve("Nelson's sharp-tailed Sparrow") == "Nelson's Sharp-tailed Sparrow"
    problems = tax.problems()
    assert "leaf 'Nelson's Sharp-tailed Sparrow' is spelled 'Nelson's sharp-tailed Sparrow' at the end of its path" in problems
    # genus Sayornis and the leaf "Sayornis" are two nodes, one per level
    assert "name 'Sayornis' is a node at levels 3, 4 (counted once per level)" in problems
    assert "Sayornis" in tax.nodes_at(2) and "Sayornis" in tax.nodes_at(3)


def test_unknown_label_message_names_closest(reference_data):
    path = tax_file(reference_data, "CUB200")
    tax = Taxonomy.from_json(path)
    with pytest.raises(HierError) as err:
        tax.path("Black footed Albatros")
    assert str(err.value) == f"{path}: label 'Black footed Albatros' not in taxonomy (closest: 'Black-footed Albatross')"


def test_imagenet_artifact_multi_parent(reference_data):
    path = tax_file(reference_data, "imagenet_artifact")
    with pytest.raises(HierError) as err:
        Taxonomy.from_json(path)
    assert str(err.value) == (
        f"{path}: node 'sports equipment' at level 4 has 2 parents: 'implement' (leaf 'racket') and "
        "'equipment' (leaf 'parallel bars'); pass on_multi_parent='first' (--on-multi-parent first) "
        "to keep 'implement', or fix the file"
    )
    tax = Taxonomy.from_json(path, on_multi_parent="first")
    assert tax.path("racket")[:4] == ("artifact", "instrumentality", "implement", "sports equipment")
    assert tax.path("parallel bars") == (
        "artifact", "instrumentality", "implement", "sports equipment", "gymnastic apparatus", "parallel bars"
    )
    parents = {p[2] for p in tax.paths.values() if len(p) > 3 and p[3] == "sports equipment"}
    assert parents == {"implement"}
    assert any(p.startswith("node 'sports equipment' at level 4 had 2 parents") for p in tax.problems())


@pytest.mark.parametrize(
    "folder, train, test",
    [("CUB200", 137, 63), ("Inat21_Plant", 2508, 1763)],
)
def test_probing_taxonomies(reference_data, folder, train, test):
    tr = Taxonomy.from_json(reference_data / "probing" / folder / "train_taxonomy.json")
    te = Taxonomy.from_json(reference_data / "probing" / folder / "test_taxonomy.json")
    assert (len(tr), len(te)) == (train, test)
    assert not {normalize_label(x) for x in tr.leaves} & {normalize_label(x) for x in te.leaves}
    assert tr.depth == te.depth


# ---- other constructors --------------------------------------------------------------------

INAT_RECORD = {
    "id": 1, "name": "Theobroma cacao", "kingdom": "Plantae", "phylum": "Tracheophyta",
    "class": "Magnoliopsida", "order": "Malvales", "family": "Malvaceae", "genus": "Theobroma",
    "specific_epithet": "cacao",
}


def test_from_inat_records():
    other = dict(INAT_RECORD, name="Hibiscus syriacus", genus="Hibiscus", specific_epithet=None)
    tax = Taxonomy.from_inat_records([INAT_RECORD, other])
    assert tax.level_names == list(INAT_LEVELS)
    assert tax.path("theobroma cacao") == (
        "Plantae", "Tracheophyta", "Magnoliopsida", "Malvales", "Malvaceae", "Theobroma", "Theobroma cacao"
    )
    assert tax.path("Hibiscus syriacus")[-2:] == ("Hibiscus", "Hibiscus syriacus")
    assert tax.classes_per_level() == [1, 1, 1, 1, 1, 2, 2]


def test_from_inat_records_missing_field():
    bad = {k: v for k, v in INAT_RECORD.items() if k != "family"}
    with pytest.raises(HierError) as err:
        Taxonomy.from_inat_records([INAT_RECORD, bad], source="cats.json")
    assert str(err.value) == "cats.json: record 1 ('Theobroma cacao') has no 'family'"


def test_from_edges_builds_paths():
    edges = [("animal", "bird"), ("bird", "albatross"), ("animal", "fish"), ("bird", "pelican")]
    tax = Taxonomy.from_edges(edges)
    assert tax.paths == {
        "albatross": ("animal", "bird", "albatross"),
        "fish": ("animal", "fish"),
        "pelican": ("animal", "bird", "pelican"),
    }
    assert tax.level_names == ["depth 1", "depth 2", "depth 3"]
    assert tax.nodes_at(1) == ["bird", "fish"]


def test_from_json_reads_edges_records_and_sidecar(tmp_path):
    edges = tmp_path / "edges.json"
    edges.write_text(json.dumps([["a", "b"], ["b", "c"]]))
    assert Taxonomy.from_json(edges).paths == {"c": ("a", "b", "c")}
    cats = tmp_path / "categories.json"
    cats.write_text(json.dumps({"categories": [INAT_RECORD]}))
    assert Taxonomy.from_json(cats).leaves == ["Theobroma cacao"]
    tax = Taxonomy.from_paths({"x y": ["r", "x y"], "z": ["r", "z"]}, level_names=["root", "leaf"])
    out = tax.to_json(tmp_path / "t.json")
    assert json.loads(out.read_text()) == {"x y": ["r", "x y"], "z": ["r", "z"]}
    assert level_names_path(out) == tmp_path / "t.levels.json"
    back = Taxonomy.from_json(out)
    assert back.paths == tax.paths and back.level_names == ["root", "leaf"]


def test_first_policy_rewrites_later_paths():
    paths = {"x": ["r", "p1", "n", "x"], "y": ["r", "p2", "n", "y"], "z": ["r", "p2", "z"]}
    tax = Taxonomy.from_paths(paths, on_multi_parent="first")
    assert tax.path("y") == ("r", "p1", "n", "y")
    assert tax.path("z") == ("r", "p2", "z")
    assert tax.problems()[0] == (
        "node 'n' at level 3 had 2 parents: 'p1' (leaf 'x') and 'p2' (leaf 'y'); kept 'p1' "
        "(on_multi_parent='first'), moved 1 leaves"
    )


def test_node_spelling_variants_are_one_class():
    tax = Taxonomy.from_paths({"a": ["Birds", "a"], "b": ["birds", "b"]})
    assert tax.nodes_at(0) == ["Birds"]
    assert tax.trivial_levels() == [0]
    assert "level 1 node 'Birds' is also spelled 'birds'" in tax.problems()


# ---- every validation error, exact message ------------------------------------------------

ERRORS = [
    ({"a": []}, "<memory>: leaf 'a' has an empty path"),
    ({"a": ["r", "b"]}, "<memory>: leaf 'a' path ends at 'b', not at the leaf"),
    (
        {"Black-footed Albatross": ["r", "Black-footed Albatross"], "black footed albatross": ["r", "black footed albatross"]},
        "<memory>: leaf 'black footed albatross' duplicates leaf 'Black-footed Albatross' after normalisation",
    ),
    (
        {"x": ["r", "p1", "n", "x"], "y": ["r", "p2", "n", "y"]},
        "<memory>: node 'n' at level 3 has 2 parents: 'p1' (leaf 'x') and 'p2' (leaf 'y'); "
        "pass on_multi_parent='first' (--on-multi-parent first) to keep 'p1', or fix the file",
    ),
    ({"a": ["r", "", "a"]}, "<memory>: leaf 'a' has an empty or non-text node at level 2"),
    ({"a": "r/a"}, "<memory>: leaf 'a': path is not a list of names"),
    ({}, "<memory>: taxonomy is empty or not a {leaf: path} mapping"),
]


@pytest.mark.parametrize("paths, message", ERRORS)
def test_path_errors(paths, message):
    with pytest.raises(HierError) as err:
        Taxonomy.from_paths(paths)
    assert str(err.value) == message


def test_edge_cycle():
    with pytest.raises(HierError) as err:
        Taxonomy.from_edges([("root", "a"), ("a", "b"), ("b", "c"), ("c", "a")])
    assert str(err.value) == "<memory>: cycle in edges: 'a' -> 'b' -> 'c' -> 'a'"
    with pytest.raises(HierError) as err:
        Taxonomy.from_edges([("a", "a")], source="e.json")
    assert str(err.value) == "e.json: cycle in edges: 'a' -> 'a'"


def test_edge_multi_parent():
    edges = [("r", "p1"), ("r", "p2"), ("p1", "n"), ("p2", "n"), ("n", "leaf")]
    with pytest.raises(HierError) as err:
        Taxonomy.from_edges(edges)
    assert str(err.value) == (
        "<memory>: node 'n' has 2 parents: 'p1' and 'p2'; "
        "pass on_multi_parent='first' (--on-multi-parent first) to keep 'p1', or fix the file"
    )
    tax = Taxonomy.from_edges(edges, on_multi_parent="first")
    assert tax.path("leaf") == ("r", "p1", "n", "leaf")
    assert tax.problems()[0] == "node 'n' had parents 'p1' and 'p2'; kept 'p1' (on_multi_parent='first')"


def test_bad_edge():
    with pytest.raises(HierError) as err:
        Taxonomy.from_edges([("a", "b"), ("c",)])
    assert str(err.value) == "<memory>: edge 1 is not a [parent, child] pair of names"


def test_level_names_must_match_depth():
    with pytest.raises(HierError) as err:
        Taxonomy.from_paths({"a": ["r", "a"]}, level_names=["only"])
    assert str(err.value) == "<memory>: 1 level names given for a taxonomy of depth 2: ['only']"


def test_bad_policy_and_level():
    with pytest.raises(HierError) as err:
        Taxonomy.from_paths({"a": ["r", "a"]}, on_multi_parent="last")
    assert str(err.value) == "<memory>: on_multi_parent must be one of error, first, not 'last'"
    with pytest.raises(HierError) as err:
        Taxonomy.from_paths({"a": ["r", "a"]}).nodes_at(2)
    assert str(err.value) == "<memory>: level 2 out of range 0..1"


def test_file_errors(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(HierError) as err:
        Taxonomy.from_json(missing)
    assert str(err.value) == f"{missing}: no such file"
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "a": ["r", "a"],\n}\n')
    with pytest.raises(HierError) as err:
        Taxonomy.from_json(broken)
    assert str(err.value) == f"{broken}:3: invalid JSON: Expecting property name enclosed in double quotes"
    scalar = tmp_path / "scalar.json"
    scalar.write_text("3")
    with pytest.raises(HierError) as err:
        Taxonomy.from_json(scalar)
    assert str(err.value) == (
        f"{scalar}: expected {{leaf: [root, ..., leaf]}}, iNat category records or [parent, child] edges"
    )
