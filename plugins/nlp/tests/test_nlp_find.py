"""One ticket search through the core (run_find) on a tiny corpus with a toy-sized LSTM, and a transfer of
its ticket onto a corpus with another vocabulary."""

from pathlib import Path

import torch

from ticketx import config as C
from ticketx import ticket as T
from ticketx.findjob import run_find
from ticketx.tracking import Tracker
from ticketx.transferjob import Source, run_transfer
from ticketx_nlp.plugin import NLPPlugin

OTHER_WORDS = ("a", "bird", "flew", "over", "the", "river", "and", "sang", "song", "tree")


def test_run_find_on_a_tiny_corpus(tmp_path: Path, make_corpus, tiny):
    corpus = make_corpus(tmp_path / "c")
    task_table = {"plugin": "nlp", "name": "word_lm", "corpus": str(corpus), **tiny}
    cfg = C.from_dict({"name": "nlp-tiny", "task": task_table,
                       "train": {"steps": 24, "batch_size": 4, "lr": 0.01, "eval_every": 8},
                       "prune": {"levels": 1, "rate": 0.5, "rewind_step": 6}})
    task = NLPPlugin().make_task("word_lm", cfg.task.options, data_root=tmp_path)
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db")
    result = run_find(cfg, task, tracker, root=tmp_path / "runs")

    by = {(r["level"], r["arm"]): r for r in result.records}
    assert set(by) == {(0, "dense"), (1, "ticket"), (1, "random_reinit"), (1, "random_prune")}
    assert result.metrics.primary == "perplexity" and not result.metrics.higher_is_better
    for rec in result.records:
        es = rec["at_early_stop"]
        assert es["val_perplexity"] == es["val_perplexity"] and 1 < es["test_perplexity"] < 100, rec
        assert abs(torch.tensor(es["val_loss"]).exp().item() - es["val_perplexity"]) < 1e-3 * es["val_perplexity"]
    assert by[(1, "ticket")]["layer_density"]["rnn.weight_hh_l1"] == 0.5
    ticket = T.load(result.job_dir / "r0" / "L01" / "ticket")
    assert ticket.meta["task"]["vocab"] == list(task.data().vocab.tokens) and ticket.meta["rewind_step"] == 6
    model = task.build_model(0)
    model.load_state_dict(ticket.weights)
    for name in ("rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.weight_ih_l1", "rnn.weight_hh_l1"):
        assert bool((dict(model.named_parameters())[name][ticket.masks[name] == 0] == 0).all())

    # the level-1 ticket onto another corpus: new vocabulary, embedding and decoder re-initialised there
    other = make_corpus(tmp_path / "o", seed=5, words=OTHER_WORDS)
    tcfg = C.from_dict({"name": "nlp-tiny-transfer", "task": {**task_table, "corpus": str(other)},
                        "train": {"steps": 8, "batch_size": 4, "lr": 0.01, "eval_every": 8}}, C.TransferConfig)
    target = NLPPlugin().make_task("word_lm", tcfg.task.options, data_root=tmp_path)
    assert target.data().vocab != task.data().vocab
    moved = run_transfer(tcfg, target, [Source(1, ticket, "level 1")], tracker, root=tmp_path / "runs")
    arms = {r["arm"] for r in moved.rows}
    assert arms == {"transferred", "random_ticket", "masks_reinit", "dense"}
    row = next(r for r in moved.rows if r["arm"] == "transferred")
    assert row["es_test_perplexity_mean"] > 1
