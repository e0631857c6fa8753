"""bf16 autocast for the LSTM language model on the CPU: masks held exactly, fp32 weights, perplexity falls."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import Recorder

from ticketx.jobs import check_masked
from ticketx.task import Plan
from ticketx_nlp.plugin import NLPPlugin


def test_bf16_word_lm_learns_with_masks_exact(tmp_path: Path, make_corpus) -> None:
    # a corpus with structure to learn: each word says which comes next (random words have none)
    cycle = "the cat sat on a mat while one dog ran after it\n"
    corpus = make_corpus(tmp_path / "c", train=cycle * 40, valid=cycle * 8, test=cycle * 8)
    task = NLPPlugin().make_task("word_lm", {"corpus": str(corpus), "emb_size": 32,
                                             "hidden_size": 32, "bptt": 10, "dropout": 0.0}, data_root=tmp_path)
    model = task.build_model(0)
    g = torch.Generator().manual_seed(0)
    masks = {n: (torch.rand(p.shape, generator=g) < 0.5).float() for n, p in task.prunable(model).items()}
    seen: set[torch.dtype] = set()

    def hook(module, args, out):  # the logits of each training forward pass
        if module.training:
            seen.add(out[0].dtype)

    handle = model.register_forward_hook(hook)
    try:
        before = task.evaluate(model)["val_perplexity"]
        rec = Recorder()
        task.train(model, masks, Plan(steps=300, batch_size=8, optimizer="adam", lr=1e-2, eval_every=100,
                                      precision="bf16"), rec)
    finally:
        handle.remove()
    check_masked(model, masks, "word_lm bf16")
    assert seen == {torch.bfloat16}  # the decoder's multiply ran under autocast
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert rec.evals[-1][1]["val_perplexity"] < 0.5 * before
