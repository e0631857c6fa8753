import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from ticketx import export as E
from ticketx import masks as M
from ticketx.cli import main


def masked_mlp(density: float):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    w = {n: p.detach() for n, p in model.named_parameters() if p.dim() == 2}
    masks = M.magnitude(w, M.ones(w), 1 - density)
    return model, masks


def test_compact_matches_the_masked_dense_model_and_uses_csr_below_the_threshold(tmp_path):
    model, masks = masked_mlp(0.05)
    compact, report = E.compact(model, masks, max_density=0.18)
    assert [r.storage for r in report] == ["csr", "csr"]
    assert isinstance(compact[1], E.SparseLinear) and compact[1].weight.layout == torch.sparse_csr
    dense = model.eval()
    with torch.no_grad():
        for name, m in masks.items():
            dict(dense.named_parameters())[name].mul_(m)
    x = torch.randn(7, 8, 8)
    assert E.max_difference(dense, compact, x) < 1e-5
    path = E.save(compact, tmp_path / "m.pt")
    # plain PyTorch, a fresh interpreter with no ticketx import
    code = f"import torch; m = torch.jit.load({str(path)!r}); print(tuple(m(torch.zeros(3, 8, 8)).shape))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(3, 10)"
    assert E.max_difference(dense, E.load(path), x) < 1e-5


def test_dense_above_threshold_and_inputs_untouched():
    model, masks = masked_mlp(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compact, report = E.compact(model, masks)
    assert [r.storage for r in report] == ["dense", "dense"] and isinstance(compact[1], nn.Linear)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert bool((compact[1].weight[masks["1.weight"] == 0] == 0).all())


def test_unscriptable_model_is_a_clear_error(tmp_path):
    class Odd(nn.Module):
        def forward(self, x, *args):
            return x

    with pytest.raises(ValueError, match="cannot be compiled with torch.jit.script"):
        E.save(Odd(), tmp_path / "x.pt")


def test_cli_export_of_a_found_ticket(cli_env, recipe, experiment, tmp_path):
    from pathlib import Path
    r = CliRunner().invoke(main, ["find", str(recipe), "--experiment", experiment, "--set", "train.steps=50",
                                  "--set", "prune.rate=0.9"])
    assert r.exit_code == 0, r.output
    ticket = next(Path("ticketx-runs").glob("toycli-*/r0/L01/ticket"))
    r = CliRunner().invoke(main, ["export", str(ticket), "--out", str(tmp_path / "t.pt")])
    assert r.exit_code == 0, r.output
    assert "from the ticket's trained weights" in r.output and "csr" in r.output
    assert "batch 256: max |exported - masked dense| = " in r.output
    diff = float(r.output.split("batch 256: max |exported - masked dense| = ")[1].split(";")[0])
    assert diff < 1e-4
    r = CliRunner().invoke(main, ["export", str(tmp_path), "--out", str(tmp_path / "u.pt")])
    assert r.exit_code == 1 and "incomplete ticket, missing masks.safetensors" in r.output


def test_export_says_when_the_task_gives_no_inputs_to_check_on(cli_env, recipe, experiment, tmp_path, monkeypatch):
    from pathlib import Path

    from toy import ToyTask
    r = CliRunner().invoke(main, ["find", str(recipe), "--experiment", experiment, "--set", "train.steps=50"])
    assert r.exit_code == 0, r.output
    ticket = next(Path("ticketx-runs").glob("toycli-*/r0/L01/ticket"))
    monkeypatch.delattr(ToyTask, "example_inputs")
    r = CliRunner().invoke(main, ["export", str(ticket), "--out", str(tmp_path / "t.pt")])
    assert r.exit_code == 0, r.output
    assert "not checked or timed: task toy/gauss has no example_inputs(n) hook" in r.output
    assert "max |exported - masked dense|" not in r.output
