"""A search whose last levels would prune a layer to no weight is refused before any training."""

from __future__ import annotations

import pytest
import torch

from ticketx import config as C
from ticketx import masks as M
from ticketx.config import ConfigError
from ticketx.findjob import run_find
from toy import ToyTask

BASE = {"name": "deep", "task": {"plugin": "toy", "name": "gauss"},
        "train": {"steps": 20, "batch_size": 32, "lr": 0.01, "eval_every": 10}}


@pytest.mark.parametrize("total, rate, oneshot", [(512, 0.5, False), (100, 0.2, False), (7, 0.2, False),
                                                  (4, 0.5, False), (512, 0.5, True), (128, 0.2, True)])
def test_kept_after_counts_as_prune_does(total, rate, oneshot):
    g = torch.Generator().manual_seed(0)
    dense = {"w": torch.ones(total)}
    masks = dense
    for level in range(1, 12):
        scores = {"w": torch.rand(total, generator=g)}
        if oneshot:
            masks = M.prune(scores, dense, 1 - (1 - rate) ** level)
        else:
            masks = M.prune(scores, masks, rate)
        assert int(masks["w"].sum()) == M.kept_after(total, rate, level, oneshot=oneshot), level


def test_too_many_levels_are_refused_naming_the_level_and_layer(tmp_path, tracker, experiment, monkeypatch):
    monkeypatch.setattr(ToyTask, "train", lambda *a: pytest.fail("trained before checking the levels"))
    # the output layer, 4 x 32 = 128 weights at rate 0.5: 64, 32, ..., 1, then none at level 8
    c = C.from_dict({**BASE, "prune": {"levels": 100, "rate": 0.5}})
    with pytest.raises(ConfigError, match=r"prune.levels = 100: at level 8 4.weight, 128 weights at rate 0.5, "
                                          r"would keep no weight; at most 7 levels"):
        run_find(c, ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment)
    assert not list(tmp_path.iterdir()) and tracker.client.get_experiment_by_name(experiment) is None


def test_a_lower_layer_rate_or_fewer_levels_pass_the_check(tmp_path, tracker, experiment):
    c = C.from_dict({**BASE, "prune": {"levels": 7, "rate": 0.5}})
    run_find(c, ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment, workers=1)  # no error
    c = C.from_dict({**BASE, "prune": {"levels": 8, "rate": 0.5, "layer_rates": {"4.weight": 0.1}},
                     "arms": ["ticket"]})
    result = run_find(c, ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment)
    last = [r for r in result.records if r["level"] == 8][0]
    assert last["layer_density"]["4.weight"] > 0 and last["layer_density"]["0.weight"] > 0


def test_global_scope_counts_the_pool_together(tmp_path, tracker, experiment):
    # the toy's 3 layers pooled: 512 + 1024 + 128 = 1664 weights at rate 0.5 (rounding half up):
    # 832, 416, 208, 104, 52, 26, 13, 6, 3, 1, then none at level 11
    c = C.from_dict({**BASE, "prune": {"levels": 12, "rate": 0.5, "scope": "global"}})
    with pytest.raises(ConfigError, match=r"at level 11 the layers ranked together \(global scope\), 1,664 weights "
                                          r"at rate 0.5, would keep no weight; at most 10 levels"):
        run_find(c, ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment)


def test_a_global_cut_that_empties_a_layer_stops_the_job_before_that_level_trains(tmp_path, tracker, experiment,
                                                                                  monkeypatch):
    from ticketx import pruning
    real = pruning.imp_masks

    def emptying(criterion, weights, before, rate, **how):  # as a global ranking may do to a small layer
        masks = real(criterion, weights, before, rate, **how)
        second = any(bool((m == 0).any()) for m in before.values())  # cutting level 2 from level 1's masks
        return {**masks, "4.weight": torch.zeros_like(masks["4.weight"])} if second else masks

    monkeypatch.setattr(pruning, "imp_masks", emptying)
    c = C.from_dict({**BASE, "prune": {"levels": 3, "rate": 0.5, "scope": "global"}, "arms": ["ticket"]})
    with pytest.raises(ConfigError, match=r"prune.levels = 3: level 2 would prune 4.weight to no weight at all "
                                          r"\(prune.scope = 'global'\); run with prune.levels = 1"):
        run_find(c, ToyTask("gauss", {}), tracker, root=tmp_path, experiment=experiment)
    (job,) = tmp_path.iterdir()
    assert not (job / "r0" / "L02" / "ticket").exists() and not (job / "r0" / "L02" / "ticket.run").exists()
