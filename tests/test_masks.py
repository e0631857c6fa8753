import pytest
import torch

from ticketx import masks as M


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(10, 10, generator=g), "b": torch.randn(20, 5, generator=g),
            "out": torch.randn(4, 10, generator=g)}


def kept(m: torch.Tensor) -> int:
    return int(m.sum())


def test_layerwise_removes_exact_counts_of_smallest():
    w = weights()
    new = M.magnitude(w, M.ones(w), 0.2)
    assert [kept(new[n]) for n in w] == [80, 80, 32]
    # the kept weights of each layer are exactly its largest magnitudes
    for n in w:
        cutoff = w[n].abs()[new[n] > 0].min()
        assert bool((w[n].abs()[new[n] == 0] <= cutoff).all())


def test_rounding_is_half_up_on_survivors():
    w = {"x": torch.arange(1.0, 8.0)}  # 7 weights; 20% of 7 = 1.4 -> 1
    assert kept(M.magnitude(w, M.ones(w), 0.2)["x"]) == 6
    w = {"x": torch.arange(1.0, 11.0)}  # 25% of 10 = 2.5 -> 3
    new = M.magnitude(w, M.ones(w), 0.25)["x"]
    assert new.tolist() == [0, 0, 0] + [1] * 7


def test_once_pruned_stays_pruned_even_if_weight_grows():
    w = weights()
    m1 = M.magnitude(w, M.ones(w), 0.5)
    grown = {n: torch.where(m1[n] == 0, torch.full_like(w[n], 100.0), w[n]) for n in w}
    m2 = M.magnitude(grown, m1, 0.5)
    for n in w:
        assert bool((m2[n] <= m1[n]).all())
        assert kept(m2[n]) == kept(m1[n]) - int(0.5 * kept(m1[n]) + 0.5)


def test_per_layer_rate_override_and_exclude():
    w = weights()
    new = M.magnitude(w, M.ones(w), 0.5, layer_rates={"out": 0.25}, exclude=["b"])
    assert kept(new["a"]) == 50 and kept(new["out"]) == 30 and kept(new["b"]) == 100


def test_global_scope_ranks_layers_together():
    w = {"small": torch.full((10,), 0.1), "big": torch.full((10,), 5.0)}
    new = M.magnitude(w, M.ones(w), 0.5, scope="global")
    assert kept(new["small"]) == 0 and kept(new["big"]) == 10


def test_global_with_override_keeps_override_layerwise():
    w = {"small": torch.full((10,), 0.1), "big": torch.full((10,), 5.0), "out": torch.full((8,), 0.01)}
    new = M.magnitude(w, M.ones(w), 0.5, scope="global", layer_rates={"out": 0.25})
    assert kept(new["out"]) == 6 and kept(new["small"]) + kept(new["big"]) == 10


def test_inputs_not_mutated():
    w = weights()
    masks = M.ones(w)
    before_w = {n: t.clone() for n, t in w.items()}
    before_m = {n: t.clone() for n, t in masks.items()}
    M.magnitude(w, masks, 0.3)
    M.random_like(masks, torch.Generator().manual_seed(0))
    assert all(torch.equal(w[n], before_w[n]) and torch.equal(masks[n], before_m[n]) for n in w)


def test_random_masks_keep_per_layer_counts_but_move():
    w = weights()
    m = M.magnitude(w, M.ones(w), 0.6, layer_rates={"out": 0.3})
    r = M.random_like(m, torch.Generator().manual_seed(1))
    assert {n: kept(r[n]) for n in m} == {n: kept(m[n]) for n in m}
    assert not all(torch.equal(r[n], m[n]) for n in m)
    r2 = M.random_like(m, torch.Generator().manual_seed(1))
    assert all(torch.equal(r[n], r2[n]) for n in m)


def test_density_and_layer_density():
    m = {"a": torch.tensor([1.0, 0.0, 0.0, 0.0]), "b": torch.ones(4)}
    assert M.density(m) == pytest.approx(5 / 8)
    assert M.layer_density(m) == {"a": 0.25, "b": 1.0}


@pytest.mark.parametrize("kwargs, match", [
    ({"rate": 1.0}, r"prune.rate must be in \[0, 1\), got 1.0"),
    ({"rate": -0.1}, r"prune.rate must be in"),
    ({"rate": 0.2, "layer_rates": {"nope": 0.1}}, r"no prunable weight named \['nope'\]"),
    ({"rate": 0.2, "exclude": ["zzz"]}, r"no prunable weight named \['zzz'\]"),
    ({"rate": 0.2, "scope": "row"}, r"prune.scope must be 'layerwise' or 'global'"),
])
def test_bad_arguments(kwargs, match):
    w = weights()
    with pytest.raises(M.MaskError, match=match):
        M.magnitude(w, M.ones(w), **kwargs)


def test_mismatched_masks():
    w = weights()
    masks = M.ones(w)
    masks["a"] = torch.ones(3)
    with pytest.raises(M.MaskError, match=r"a: weight shape \(10, 10\) but mask shape \(3,\)"):
        M.magnitude(w, masks, 0.2)
    with pytest.raises(M.MaskError, match="only in weights"):
        M.magnitude(w, {"a": torch.ones(10, 10)}, 0.2)
