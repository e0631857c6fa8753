"""Real data (skipped where the data root is absent): short runs on Brown and Tiny Shakespeare slices, and
every nlp recipe built against the data it names, its rewind step checked against its epoch arithmetic."""

import math
import re
from pathlib import Path

import pytest

from ticketx import config as C
from ticketx import masks as M
from ticketx.task import Plan
from ticketx_nlp.batching import steps_per_epoch
from ticketx_nlp.plugin import NLPPlugin

RECIPES = Path(__file__).parents[3] / "recipes"
NLP_RECIPES = sorted(p for p in RECIPES.rglob("*.toml") if C.read_recipe(p).get("task", {}).get("plugin") == "nlp"
                     and "transfer" not in C.read_recipe(p))
TRANSFER_RECIPES = sorted(p for p in RECIPES.rglob("*.toml")
                          if C.read_recipe(p).get("task", {}).get("plugin") == "nlp" and "transfer" in C.read_recipe(p))
SOURCE = re.compile(r"ticketx find (recipes/\S+\.toml)")


@pytest.mark.parametrize("name, corpus", [("word_lm", "text/brown"), ("char_lm", "text/tinyshakespeare/input.txt")])
def test_short_run_on_a_real_slice(real_data_root: Path, recorder, name, corpus):
    task = NLPPlugin().make_task(name, {"corpus": corpus, "emb_size": 32, "hidden_size": 32, "bptt": 20,
                                        "train_tokens": 4000, "eval_tokens": 1000}, data_root=real_data_root)
    model = task.build_model(0)
    before = task.evaluate(model)
    vocab = len(task.data().vocab)
    assert before["val_perplexity"] == pytest.approx(vocab, rel=0.1)  # small init: nearly uniform
    masks = M.ones({n: p.detach() for n, p in task.prunable(model).items()})
    task.train(model, masks, Plan(steps=25, batch_size=8, optimizer="adam", lr=0.01, eval_every=25), recorder)
    after = recorder.evals[-1][1]
    assert math.isfinite(after["test_perplexity"]) and after["val_perplexity"] < 0.6 * before["val_perplexity"]
    assert after["val_perplexity"] == pytest.approx(math.exp(after["val_loss"]))


def test_nlp_recipes_exist():
    names = {str(p.relative_to(RECIPES)) for p in NLP_RECIPES}
    assert {"quickstart_nlp.toml", "yu2019/lstm_lm.toml", "yu2019/lstm_lm_cpu.toml", "yu2019/lstm_sst2.toml",
            "yu2019/lstm_sst2_cpu.toml"} <= names
    assert {"yu2019/transfer_sst2_to_mr.toml", "yu2019/transfer_brown_to_shakespeare.toml"} <= {
        str(p.relative_to(RECIPES)) for p in TRANSFER_RECIPES}


@pytest.mark.parametrize("path", NLP_RECIPES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_builds_on_its_data_and_rewinds_to_the_end_of_epoch_1(real_data_root: Path, path: Path):
    cfg = C.load(path)
    assert "Yu" in cfg.description and "3.2" in cfg.description
    task = NLPPlugin().make_task(cfg.task.name, cfg.task.options, data_root=real_data_root)
    prunable = task.prunable(task.build_model(cfg.seed))
    assert set(cfg.prune.layer_rates) | set(cfg.prune.exclude) <= set(prunable)
    if cfg.task.name == "classify":
        per_epoch = task.data().train_x.shape[0] // cfg.train.batch_size
    else:
        per_epoch = steps_per_epoch(task.data().train.shape[0], cfg.train.batch_size, task.options.bptt)
    assert cfg.prune.rewind_step == per_epoch, "the recipe rewinds to the end of epoch 1"
    assert f"{per_epoch}" in path.read_text(), "the header states the epoch arithmetic"
    assert cfg.train.steps > cfg.prune.rewind_step


@pytest.mark.parametrize("path", TRANSFER_RECIPES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_transfer_recipe_fits_the_tickets_of_the_find_it_names(real_data_root: Path, path: Path):
    """The source find named in the header builds a model whose tensors outside the target's head have
    the target's shapes (what `ticketx transfer` checks), and steps are whole epochs, as the header says."""
    cfg = C.load(path, cls=C.TransferConfig)
    target = NLPPlugin().make_task(cfg.task.name, cfg.task.options, data_root=real_data_root)
    found = SOURCE.search(path.read_text())
    assert found, "the header names the find whose tickets it transfers"
    src_cfg = C.load(RECIPES.parent / found.group(1))
    source = NLPPlugin().make_task(src_cfg.task.name, src_cfg.task.options, data_root=real_data_root)
    model, src_model = target.build_model(0), source.build_model(0)
    head, state, src_state = target.head(model), model.state_dict(), src_model.state_dict()
    assert head and set(state) == set(src_state)
    for name in sorted(set(state) - head):
        assert state[name].shape == src_state[name].shape, name
    assert set(target.prunable(model)) - head == set(source.prunable(src_model)) - head
    if cfg.task.name == "classify":
        per_epoch = target.data().train_x.shape[0] // cfg.train.batch_size
    else:
        per_epoch = steps_per_epoch(target.data().train.shape[0], cfg.train.batch_size, target.options.bptt)
    assert cfg.train.steps % per_epoch == 0 and f"{per_epoch}" in path.read_text()
    assert cfg.train.clip_grad_norm == src_cfg.train.clip_grad_norm
