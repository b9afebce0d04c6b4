"""LinearProbes: the batched einsum is exactly sites x levels independent probes, trained by
Lightning with val-based selection; on the tiny model's features of the synthetic set the probes
learn far above chance while a shuffled-label control stays near chance."""

from __future__ import annotations

import json

import pytest
import torch

from hiertrain.base.errors import HierError
from hiertrain.features.probe_spec import ProbeSpec
from hiertrain.features.feature_store import ShardWriter, StoreLayout
from hiertrain.modules.linear_probes import LinearProbes
from probing_cli import extract_features, train_probes


def _spec(slots: int = 1, prompt_for_level=(0, 0, 0)) -> ProbeSpec:
    return ProbeSpec(
        sites=["a", "b", "c"],
        dims=[4, 6, 6],
        slots=slots,
        level_names=["l1", "l2", "l3"],
        classes=[["x", "y"], ["p", "q", "r"], ["s", "t", "u", "v"]],
        prompt_for_level=list(prompt_for_level),
        probed_levels=[i for i, p in enumerate(prompt_for_level) if p >= 0],
    )


@pytest.mark.parametrize("slots,prompt_for_level", [(1, (0, 0, 0)), (2, (0, 1, -1))])
def test_batched_probes_equal_separate_linear_layers(slots, prompt_for_level):
    probes = LinearProbes(normalize=False, seed=1)
    probes.build(_spec(slots, prompt_for_level))
    x = torch.randn(5, slots, 3, 6)
    logits = probes(x)
    for j, level in enumerate(probes.levels):
        a, z = probes.offsets[j], probes.offsets[j + 1]
        for s in range(3):
            lin = torch.nn.Linear(6, z - a)
            with torch.no_grad():
                lin.weight.copy_(probes.weight[s, :, a:z].T)
                lin.bias.copy_(probes.bias[s, a:z])
            torch.testing.assert_close(logits[j][:, s], lin(x[:, prompt_for_level[level], s]))


def test_summed_loss_trains_each_probe_as_if_alone():
    """Adam on the summed loss == Adam on one (site, level) probe with its own mean CE."""
    probes = LinearProbes(normalize=False, seed=0, lr=0.05)
    probes.build(_spec())
    x = torch.randn(16, 1, 3, 6)
    y = torch.stack([torch.randint(0, n, (16,)) for n in (2, 3, 4)], 1)
    y[3, 1] = -1  # a sample without level 2 is simply not counted there
    s, j = 1, 1
    a, z = probes.offsets[j], probes.offsets[j + 1]
    alone_w = probes.weight[s, :, a:z].detach().clone().requires_grad_()
    alone_b = probes.bias[s, a:z].detach().clone().requires_grad_()
    opt_all = torch.optim.Adam([probes.weight, probes.bias], lr=0.05)
    opt_one = torch.optim.Adam([alone_w, alone_b], lr=0.05)
    for _ in range(5):
        opt_all.zero_grad()
        probes._loss(probes(x), y).backward()
        opt_all.step()
        opt_one.zero_grad()
        keep = y[:, 1] >= 0
        torch.nn.functional.cross_entropy(x[keep, 0, s] @ alone_w + alone_b, y[keep, 1]).backward()
        opt_one.step()
    torch.testing.assert_close(probes.weight[s, :, a:z], alone_w)
    torch.testing.assert_close(probes.bias[s, a:z], alone_b)


def test_normalizer_is_the_train_mean_and_std_and_keeps_padding_finite():
    probes = LinearProbes(seed=0)
    probes.build(_spec())
    x = torch.randn(10, 1, 3, 6, dtype=torch.float64) * 5 + 2
    x[:, :, 0, 4:] = 0  # site "a" has dim 4: zero-padded to 6
    probes.fit_normalizer([{"x": x[:4]}, {"x": x[4:]}])  # two batches, one statistic
    torch.testing.assert_close(probes.feature_mean, x.mean(0).float())
    torch.testing.assert_close(probes.feature_std, (x.var(0) + 1e-5).sqrt().float())
    assert all(torch.isfinite(logits).all() for logits in probes(x.float()))


def _planted_store(root, n_per_leaf: int = 20) -> None:
    """Site 'signal' encodes the leaf (a noisy one-hot), site 'noise' carries nothing."""
    paths = {f"leaf{k}": [f"F{k // 4}", f"G{k // 2}", f"leaf{k}"] for k in range(8)}
    layout = StoreLayout("image", ["noise", "signal"], [8, 8], ["avg"], ["p"], ["family", "genus", "species"], [0, 0, 0])
    g = torch.Generator().manual_seed(0)
    w = ShardWriter(root, layout, shard_rows=50)
    sid = 0
    for k, (leaf, path) in enumerate(paths.items()):
        for i in range(n_per_leaf):
            split = "test" if i < 4 else "train"
            x = torch.randn(1, 1, 2, 8, generator=g)
            x[0, 0, 1, k] += 5.0
            w.add([{"id": sid, "label": leaf, "split": split, "levels": path}], {"avg": x})
            sid += 1
    w.flush()


def test_fit_selects_on_val_tests_once_and_is_deterministic(tmp_path):
    _planted_store(tmp_path / "store")
    kwargs = dict(lr=0.05, max_epochs=30, patience=5, batch_size=32, progress=False, accelerator="cpu")
    report = train_probes(tmp_path / "store", tmp_path / "run1", val_fraction=0.25, **kwargs)
    test = report["test"]
    assert test["hca"]["signal"] >= 0.8  # 8 leaves, chance HCA = 1/2 * 1/4 * 1/8
    assert test["hca"]["noise"] <= 0.3
    assert report["chance"]["hca"] == pytest.approx(1 / 64)
    assert (report["num_train"], report["num_val"], report["num_test"]) == (96, 32, 32)
    assert report["checkpoint"]["epoch"] is not None and report["val"]["mean_accuracy"] > 0
    on_disk = json.loads((tmp_path / "run1" / "probes.json").read_text())
    assert on_disk["test"] == test
    assert (tmp_path / "run1" / "accuracy_vs_layer.png").is_file()
    again = train_probes(tmp_path / "store", tmp_path / "run2", val_fraction=0.25, **kwargs)
    assert (again["test"], again["val"]) == (report["test"], report["val"])


def test_mlp_probe_learns(tmp_path):
    _planted_store(tmp_path / "store")
    report = train_probes(
        tmp_path / "store", tmp_path / "mlp", mlp_hidden=16, lr=0.02, max_epochs=30, patience=5,
        batch_size=32, progress=False, accelerator="cpu",
    )  # fmt: skip
    assert report["test"]["hca"]["signal"] >= 0.8
    assert report["probe"]["mlp_hidden"] == 16


@pytest.mark.slow
def test_tiny_qwen_features_of_synthetic_images_carry_the_hierarchy(tmp_path, tiny_qwen):
    """The acceptance check: real extraction + probes on the synthetic set beat chance by far;
    the same probes trained on shuffled labels stay near chance (no label leak)."""
    from hiertrain.taxonomy.synth import make_synthetic

    synth = make_synthetic(tmp_path / "synth", images_per_leaf=16, seed=0, image_size=84)
    store = extract_features(
        str(tiny_qwen), tmp_path / "store", images=str(synth["images"]), taxonomy=str(synth["taxonomy"]),
        pools=["avg"], batch_size=48, progress=False, accelerator="cpu",
    )  # fmt: skip
    common = dict(val_split="val", progress=False, accelerator="cpu", max_epochs=60, patience=10)
    real = train_probes(store, tmp_path / "real", **common)
    shuffled = train_probes(store, tmp_path / "shuffled", shuffle_labels=True, **common)
    chance = [lv["chance"] for lv in real["levels"]]
    assert chance == pytest.approx([1 / 2, 1 / 4, 1 / 12, 1 / 24])

    def mean_acc(rep):
        accs = [a for site in rep["test"]["accuracy"].values() for a in site]
        return sum(accs) / len(accs)

    chance_mean = sum(chance) / len(chance)
    best_hca = max(real["test"]["hca"].values())
    print(f"mean acc {mean_acc(real):.3f} (shuffled {mean_acc(shuffled):.3f}, chance {chance_mean:.3f}); "
          f"best HCA {best_hca:.3f} (chance {real['chance']['hca']:.5f}, shuffled best "
          f"{max(shuffled['test']['hca'].values()):.3f})")  # fmt: skip
    assert mean_acc(real) >= chance_mean + 0.1
    assert mean_acc(shuffled) <= chance_mean + 0.06
    assert best_hca >= 25 * real["chance"]["hca"]
    assert max(shuffled["test"]["hca"].values()) < best_hca


def test_probe_accuracy_matches_the_evaluation_metrics_site_by_site():
    """ProbeAccuracy (one vectorised metric) == PerLevelAccuracy + HCA run per site, padding dropped."""
    from hiertrain.metrics.classes import HierarchicalConsistentAccuracy, PerLevelAccuracy
    from hiertrain.modules.linear_probes import ProbeAccuracy

    g = torch.Generator().manual_seed(0)
    sites, levels = 5, 4
    ours = ProbeAccuracy(sites, levels)
    ref = [(PerLevelAccuracy(levels), HierarchicalConsistentAccuracy()) for _ in range(sites)]
    for _ in range(3):
        correct = torch.rand(7, sites, levels, generator=g) < 0.6
        asked = torch.rand(7, levels, generator=g) < 0.8
        asked[0] = False  # a sample with nothing asked is in no denominator
        asked[:, 3] = False  # a level never asked -> NaN
        valid = torch.rand(7, generator=g) < 0.7
        ours.update(correct, asked, valid)
        for s, (acc, hca) in enumerate(ref):
            acc.update(correct[:, s], asked, valid=valid)
            hca.update(correct[:, s], asked, valid=valid)
    acc, hca = ours.compute()
    expected_acc = torch.stack([a.compute() for a, _ in ref])
    expected_hca = torch.stack([h.compute() for _, h in ref])
    torch.testing.assert_close(acc, expected_acc.to(acc.dtype), equal_nan=True)
    torch.testing.assert_close(hca, expected_hca.to(hca.dtype), equal_nan=True)
    assert acc[:, 3].isnan().all() and not acc[:, :3].isnan().any()


def test_fit_writes_one_checkpoint_and_tests_what_it_selected(tmp_path, monkeypatch):
    """No checkpoint per improving epoch: one save when fit ends, and it holds the selected probes."""
    saves = []
    original = LinearProbes.on_save_checkpoint

    def counting(self, checkpoint):
        saves.append(checkpoint["epoch"])
        original(self, checkpoint)

    monkeypatch.setattr(LinearProbes, "on_save_checkpoint", counting)
    _planted_store(tmp_path / "store")
    report = train_probes(tmp_path / "store", tmp_path / "run", lr=0.05, max_epochs=12, patience=50,
                          batch_size=32, progress=False, accelerator="cpu")  # fmt: skip
    assert saves == [12]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last.ckpt"]
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    probes = LinearProbes()
    probes.on_load_checkpoint(checkpoint)  # builds the probes from the stored spec
    probes.load_state_dict(checkpoint["state_dict"])
    assert probes.best_val.min() >= 0  # every probe was selected at some epoch
    # val accuracies of the tested (selected) probes are the best the selection saw
    for s, site in enumerate(report["sites"]):
        for j, level in enumerate(probes.levels):
            assert report["val"]["accuracy"][site][level] == pytest.approx(float(probes.best_val[s, j]))


# ---- the paper's probe (probing/vlm_probing.py:106-111, 212; llm_probing.py:147-152) ----------------


def test_optimizer_and_init_defaults_are_hiertrains_and_the_papers_are_selectable():
    ours = LinearProbes(seed=0)
    ours.build(_spec())
    assert isinstance(ours.configure_optimizers(), torch.optim.AdamW)
    assert float(ours.bias.detach().abs().max()) == 0.0  # scaled_randn: zero bias
    paper = LinearProbes(lr=1e-4, weight_decay=0.0, optimizer="adam", init="torch_default", normalize=False, seed=0)
    paper.build(_spec())
    opt = paper.configure_optimizers()
    assert type(opt) is torch.optim.Adam  # not AdamW (a subclass in some versions: exact type)
    assert opt.defaults["lr"] == 1e-4 and opt.defaults["weight_decay"] == 0.0
    # nn.Linear's own init: weight and bias uniform in +-1/sqrt(fan_in), fan_in = the site's width
    for s, dim in enumerate(paper.spec.dims):
        bound = 1 / dim**0.5
        w = paper.weight[s, :dim]
        assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.5 * bound
        assert float(paper.bias[s].abs().max()) <= bound and float(paper.bias[s].abs().max()) > 0
        assert float(paper.weight[s, dim:].abs().sum()) == 0.0  # padded rows: no input ever reaches them
    lin = torch.nn.Linear(6, 9)  # the same distribution as torch's: compare spread, not draws
    assert abs(float(lin.weight.std()) - float(paper.weight[1].std())) < 0.1
    with pytest.raises(HierError, match="optimizer 'sgd'"):
        LinearProbes(optimizer="sgd")
    with pytest.raises(HierError, match="init 'zeros'"):
        LinearProbes(init="zeros")


@pytest.mark.slow
def test_paper_settings_and_defaults_both_train_and_label_their_selection(tmp_path):
    """One run per protocol on the same store: both complete; probes.json / run.json say which
    split chose the probes, and the paper's (test) selection reports the test-best epoch."""
    _planted_store(tmp_path / "store")
    ours = train_probes(tmp_path / "store", tmp_path / "ours", lr=0.05, max_epochs=20, patience=5, batch_size=32)
    paper = train_probes(
        tmp_path / "store", tmp_path / "paper", lr=0.05, weight_decay=0.0, max_epochs=30, batch_size=32,
        model_args={"optimizer": "adam", "init": "torch_default", "normalize": False},
        data_args={"selection": "test", "shuffle": False}, early_stopping=False,
    )  # fmt: skip
    assert ours["selection"].startswith("val") and paper["selection"].startswith("test: the paper's optimistic")
    assert paper["num_val"] == paper["num_test"] == 32 and paper["num_train"] == 128  # nothing carved from train
    assert paper["val"]["hca"] == paper["test"]["hca"]  # selected on test = reported on test
    assert paper["test"]["hca"]["signal"] >= 0.8 and ours["test"]["hca"]["signal"] >= 0.8
    run = json.loads((tmp_path / "paper" / "run.json").read_text())
    assert run["selection"].startswith("test: the paper's optimistic") and run["train_order"] == "file order (the paper's)"
    assert run["probe"]["optimizer"] == "adam" and run["probe"]["init"] == "torch_default"
    assert json.loads((tmp_path / "ours" / "run.json").read_text())["selection"].startswith("val")
