"""Pruning criteria (ticketx.pruning) and their tensor math (ticketx.masks): scores against values worked out
by hand, allocations against their formulas, exact counts, ablations, early-bird detection, refusals."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ticketx import config as C
from ticketx import earlybird
from ticketx import masks as M
from ticketx import pruning as P
from ticketx import training
from ticketx.task import Plan, StopTraining, TaskError
from toy import ToyTask


def two_layer(w: list[float], v: float) -> nn.Module:
    """f(x) = v * (w . x): Linear(2, 1) then Linear(1, 1), no biases."""
    model = nn.Sequential(nn.Linear(2, 1, bias=False), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([w]))
        model[1].weight.copy_(torch.tensor([[v]]))
    return model


def half_squared(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return 0.5 * ((model(x) - y) ** 2).sum()


# w = (0.5, 1), v = 2, x = (1, 2), y = 0: h = w.x = 2.5, f = v h = 5, L = f^2 / 2
# g = dL/d(w1, w2, v) = (f v x1, f v x2, f h) = (10, 20, 12.5)
# H = [[v^2 x1^2, v^2 x1 x2, 2 v h x1], [., v^2 x2^2, 2 v h x2], [., ., h^2]]
#   = [[4, 8, 10], [8, 16, 20], [10, 20, 6.25]]
# Hg = (325, 650, 578.125); GraSP's S = -θ ⊙ Hg = (-162.5, -650, -1156.25)
BATCH = (torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0]]))
NAMES = ("0.weight", "1.weight")


def scoring(model: nn.Module, **kw) -> P.Scoring:
    return P.Scoring(model, NAMES, M.ones({n: p for n, p in model.named_parameters()}), **kw)


def flat(scores: dict[str, torch.Tensor]) -> list[float]:
    return [float(x) for n in NAMES for x in scores[n].flatten()]


def test_snip_scores_are_theta_times_gradient_by_hand():
    scores = P.snip_scores(scoring(two_layer([0.5, 1.0], 2.0), batches=[BATCH], loss=half_squared))
    assert flat(scores) == pytest.approx([0.5 * 10, 1.0 * 20, 2.0 * 12.5])


def test_grasp_keeps_the_lowest_s_by_hand():
    model = two_layer([0.5, 1.0], 2.0)
    keep_scores = P.grasp_scores(scoring(model, batches=[BATCH], loss=half_squared), temperature=1.0)
    assert flat(keep_scores) == pytest.approx([162.5, 650.0, 1156.25])  # θ ⊙ Hg = -S
    # Wang et al. remove the highest S: w1 (S = -162.5) goes first, v (S = -1156.25) is kept longest
    masks = M.ones({n: p for n, p in model.named_parameters()})
    one = P.cut(P.CRITERIA["grasp"], model, masks, 1, batches=[BATCH], loss=half_squared)
    assert one["0.weight"].tolist() == [[0.0, 0.0]] and one["1.weight"].tolist() == [[1.0]]
    two = P.cut(P.CRITERIA["grasp"], model, masks, 2, batches=[BATCH], loss=half_squared)
    assert two["0.weight"].tolist() == [[0.0, 1.0]] and two["1.weight"].tolist() == [[1.0]]
    inverted = P.cut(P.CRITERIA["grasp"], model, masks, 1, batches=[BATCH], loss=half_squared, invert=True)
    assert inverted["0.weight"].tolist() == [[1.0, 0.0]] and inverted["1.weight"].tolist() == [[0.0]]


def test_synflow_conserves_flow_layer_by_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 4, bias=False), nn.ReLU(),
                          nn.Linear(4, 3, bias=False))
    names = ("0.weight", "2.weight", "4.weight")
    s = P.Scoring(model, names, M.ones({n: p for n, p in model.named_parameters()}), input_shape=(6,))
    scores = P.synflow_scores(s)
    with torch.no_grad():
        r = float(model(torch.ones(1, 6, dtype=torch.float64)).sum())  # the model is |θ| in float64 now
    sums = [float(scores[n].sum()) for n in names]
    assert sums == pytest.approx([r] * 3, rel=1e-12)
    assert all(scores[n].dtype == torch.float64 for n in names)


def test_iterative_scoring_follows_the_exponential_schedule_and_never_revives():
    model = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 4, bias=False))
    seen = []

    def revive(s: P.Scoring) -> dict[str, torch.Tensor]:
        seen.append({n: m.clone() for n, m in s.masks.items()})
        # pruned weights (zero in the scored copy) score highest: a cut that ranked them would revive them
        return {n: torch.where(w == 0, torch.full_like(w, 1e9), w.detach().abs()) for n, w in s.weights().items()}

    crit = P.Criterion("revive", revive, "global", "test", iterative=True)
    masks = M.ones({n: p for n, p in model.named_parameters()})
    out = P.cut(crit, model, masks, 10, rounds=4)
    total = 96
    kept = [sum(int(m.sum()) for m in s.values()) for s in seen]
    assert kept == [96] + [round(total * (10 / total) ** (r / 4)) for r in (1, 2, 3)]
    for before, after in zip(seen + [out], seen[1:] + [out]):
        assert all(bool((after[n] <= before[n]).all()) for n in before)
    assert sum(int(m.sum()) for m in out.values()) == 10


def test_erk_densities_follow_the_formula_and_resolve_a_layer_over_one():
    shapes = {"a": (10, 10), "b": (100, 100), "c": (4, 3, 2, 2)}
    # raw shares sum(shape)/prod(shape): a 0.2, b 0.02, c 11/48 = 0.229; at 10% eps = 1014.8 / 231 = 4.39
    # gives c 1.007 > 1: c is made dense and eps solved again for a and b
    eps = (0.1 * 10_148 - 48) / (0.2 * 100 + 0.02 * 10_000)
    d = M.erk_densities(shapes, 0.1)
    assert d == pytest.approx({"a": eps * 0.2, "b": eps * 0.02, "c": 1.0})
    assert sum(d[n] * math.prod(s) for n, s in shapes.items()) == pytest.approx(0.1 * 10_148)
    counts = M.erk_counts(shapes, 1015)
    assert sum(counts.values()) == 1015 and counts["c"] == 48
    assert counts["a"] in (math.floor(eps * 20), math.ceil(eps * 20))


def test_apportion_hits_the_total_exactly_by_largest_remainder():
    sizes = {"a": 10, "b": 10, "c": 10}
    assert M.apportion(sizes, {"a": 3.4, "b": 3.35, "c": 3.25}, 10) == {"a": 4, "b": 3, "c": 3}
    assert M.apportion(sizes, {"a": 3.5, "b": 3.5, "c": 3.0}, 10) == {"a": 4, "b": 3, "c": 3}  # tie: earlier layer
    assert M.uniform_counts({"a": (7,), "b": (3,)}, 5) == {"a": 4, "b": 1}  # 3.5 and 1.5: a first


def test_lamp_scores_by_hand_and_ranked_globally():
    w = {"x": torch.tensor([1.0, -2.0, 3.0]), "y": torch.tensor([0.1, 0.2])}
    scores = M.lamp_scores(w, M.ones(w))
    assert scores["x"].tolist() == pytest.approx([1 / 14, 4 / 13, 1.0])
    assert scores["y"].tolist() == pytest.approx([0.01 / 0.05, 1.0])
    # LAMP keeps each layer's largest weight; global magnitude would empty layer y
    kept = P.imp_masks("lamp", w, M.ones(w), 0.4, scope="global", layer_rates={}, exclude=())
    assert kept["x"].tolist() == [0, 1, 1] and kept["y"].tolist() == [0, 1]
    by_magnitude = P.imp_masks("magnitude", w, M.ones(w), 0.4, scope="global", layer_rates={}, exclude=())
    assert by_magnitude["y"].tolist() == [0, 0]


def test_every_criterion_keeps_exactly_the_count_asked():
    task = ToyTask("gauss", {})
    model = task.build_model(0)
    masks = M.ones(task.prunable(model))
    batches, loss = P.scoring_sample(task, 3, seed=0)
    for c in P.CRITERIA.values():
        for invert in (False, True):
            out = P.cut(c, model, masks, 777, batches=batches, loss=loss, input_shape=(16,), rounds=5,
                        generator=torch.Generator().manual_seed(1), invert=invert)
            assert sum(int(m.sum()) for m in out.values()) == 777, (c.name, invert)


def test_inverted_keeps_the_complement_in_the_same_order_ties_included():
    scores = {"a": torch.tensor([3.0, 1.0, 1.0, 2.0, 1.0]), "b": torch.tensor([1.0, 5.0, 0.0])}
    alive = {"a": torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]), "b": torch.ones(3)}  # a[4] pruned before
    for n_keep in range(8):
        top = M.keep_top(scores, alive, 7 - n_keep)
        bottom = M.keep_top(scores, alive, n_keep, invert=True)
        for name in scores:
            assert torch.equal(bottom[name], alive[name] * (1 - top[name])), (n_keep, name)
    # among the three scores of 1, the earlier index ranks higher; a[4] (pruned) is never kept
    assert M.keep_top(scores, alive, 4)["a"].tolist() == [1, 1, 0, 1, 0]
    assert M.keep_top({"a": torch.tensor([0.0, 9.0])}, {"a": torch.tensor([1.0, 0.0])}, 1)["a"].tolist() == [1, 0]


def test_early_bird_detection_on_hand_made_masks():
    def m(*bits: int) -> dict[str, torch.Tensor]:
        return {"w": torch.tensor(bits, dtype=torch.bool)}

    history = [(10, m(1, 1, 0, 0, 0, 0, 0, 0, 0, 0)), (20, m(0, 0, 1, 1, 0, 0, 0, 0, 0, 0)),
               (30, m(0, 0, 1, 0, 1, 0, 0, 0, 0, 0)), (40, m(0, 0, 1, 0, 1, 0, 0, 0, 0, 0)),
               (50, m(0, 0, 1, 1, 0, 0, 0, 0, 0, 0))]
    # distances /10: 10-20 0.4, 20-30 0.2, 30-40 0, 20-40 0.2, 40-50 0.2, 30-50 0.2
    assert earlybird.largest_distance([history[1][1], history[2][1], history[3][1]], 10) == pytest.approx(0.2)
    assert earlybird.first_early_bird(history, 10, distance=0.2, window=3) == 40
    assert earlybird.first_early_bird(history, 10, distance=0.0, window=2) == 40
    assert earlybird.first_early_bird(history, 10, distance=0.1, window=3) is None
    assert earlybird.first_early_bird(history, 10, distance=0.4, window=2) == 20


def test_fit_ends_where_the_observer_raises_stop_training():
    task = ToyTask("gauss", {})
    plan = Plan(steps=200, batch_size=32, optimizer="adam", lr=0.01, eval_every=50, data_seed=3)

    class StopAt:
        def __init__(self, at: int | None) -> None:
            self.at, self.evals = at, []

        def on_step(self, step, model):
            if step == self.at:
                raise StopTraining

        def on_eval(self, step, metrics):
            self.evals.append((step, dict(metrics)))

    stopped, obs = task.build_model(0), StopAt(70)
    task.train(stopped, {}, plan, obs)
    short, ref = task.build_model(0), StopAt(None)
    task.train(short, {}, Plan(**{**plan.__dict__, "steps": 70}), ref)
    assert all(torch.equal(a, b) for a, b in zip(stopped.state_dict().values(), short.state_dict().values()))
    assert [s for s, _ in obs.evals] == [s for s, _ in ref.evals] and obs.evals[-1][0] == 70
    assert "test_accuracy" in obs.evals[-1][1] and "trainset_accuracy" in obs.evals[-1][1]


class NoHooks:
    """A task with nothing for the criteria: only a spec."""

    def spec(self):
        return {"plugin": "demo", "task": "bare"}


def test_a_task_without_the_hooks_refuses_the_arms_that_need_them():
    with pytest.raises(TaskError, match=r"^demo/bare offers no scoring data .*\(Task.scoring_batches\), which the "
                                        r"arm\(s\) snip, grasp need; drop them"):
        P.check_task(NoHooks(), {"snip": "snip", "grasp": "grasp", "random_erk": "random_erk"})
    with pytest.raises(TaskError, match=r"^demo/bare offers no input shape for SynFlow's all-ones input "
                                        r"\(Task.scoring_input_shape\), which the arm\(s\) synflow need"):
        P.check_task(NoHooks(), {"synflow": "synflow"})
    P.check_task(NoHooks(), {a: a for a in ("random_erk", "random_uniform")} | {"magnitude_init": "magnitude"})
    with pytest.raises(TaskError, match="prune.scoring_per_class is 300, but class 0 has only"):
        P.check_task(ToyTask("gauss", {"n_train": 256}), {"snip": "snip"}, per_class=300)


def test_balanced_sample_takes_n_of_every_class_from_the_given_split():
    x, y = torch.arange(40.0)[:, None], torch.tensor([0, 1, 2, 3] * 10)
    (batch,) = training.balanced_sample(x, y, 3, seed=5)
    assert sorted(batch[1].tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert all(int(y[int(v)]) == int(t) for v, t in zip(batch[0].flatten(), batch[1]))
    again = training.balanced_sample(x, y, 3, seed=5)[0][0]
    assert torch.equal(again, batch[0]) and not torch.equal(training.balanced_sample(x, y, 3, seed=6)[0][0], batch[0])


TOY = {"task": {"plugin": "toy", "name": "gauss"}}


def test_new_prune_keys_at_their_defaults_leave_the_hash_as_it_was():
    base = C.config_hash(C.from_dict(TOY))
    assert base.startswith("37998d8fa4")  # this config's hash on 2026-12-06, before these keys existed
    same = ["prune.criterion=magnitude", "prune.scoring_per_class=10", "prune.synflow_rounds=100"]
    assert C.config_hash(C.from_dict(C.apply_overrides(TOY, same))) == base
    for over in (["prune.criterion=lamp", "prune.scope=global"], ["prune.early_bird={every=50}"],
                 ["prune.scoring_per_class=5"], ["prune.synflow_rounds=10"], ["arms=['ticket','snip']"]):
        assert C.config_hash(C.from_dict(C.apply_overrides(TOY, over))) != base, over


@pytest.mark.parametrize("over, match", [
    (["prune.criterion=snip"], r"prune.criterion must be one of 'magnitude', 'lamp', got 'snip'"),
    (["prune.criterion=lamp"], r"prune.criterion = 'lamp' ranks all layers together .* set prune.scope = 'global'"),
    (["arms=['ticket','ticket:shuffled']"], r"the ticket's own shuffled and reinit ablations are the random_prune"),
    (["arms=['ticket','snip:flipped']"], r"arms must be a non-empty list of .*CRITERION:shuffled/reinit/inverted"),
    (["prune.early_bird={window=1}"], r"prune.early_bird.window must be >= 2"),
    (["prune.early_bird={distance=1.5}"], r"prune.early_bird.distance must be in \[0, 1\], got 1.5"),
    (["prune.early_bird=true"], r"prune.early_bird must be a table or nothing, got True"),
    (["prune.early_bird={every=5, stp=true}"],
     r"unknown key\(s\): prune.early_bird.stp \(did you mean prune.early_bird.stop\?\)"),
])
def test_bad_criterion_keys_are_one_line_config_errors(over, match):
    with pytest.raises(C.ConfigError, match=match):
        C.from_dict(C.apply_overrides(TOY, over))
