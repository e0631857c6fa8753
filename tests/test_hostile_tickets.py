"""Regressions found by the fault suite (tests/faults): hostile ticket files, a full disk, killed runs.

Each test is one kind of file or failure `make faults` produced before ticketx handled it: a traceback,
a silent load, a message that did not name the ticket, or a run left RUNNING.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from ticketx import masks as M
from ticketx import ticket as T
from ticketx.ticket import TicketError


def model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def make_ticket(seed: int = 0) -> T.Ticket:
    m = model(seed)
    w = {"0.weight": m[0].weight.detach(), "2.weight": m[2].weight.detach()}
    return T.make(M.magnitude(w, M.ones(w), 0.5), m.state_dict(), task={"plugin": "toy", "task": "t"}, level=1, seed=0)


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    return T.save(make_ticket(), tmp_path / "t")


def edit_meta(path: Path, fn) -> None:
    meta = json.loads((path / T.META).read_text())
    fn(meta)
    (path / T.META).write_text(json.dumps(meta))


def rewrite(path: Path, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Replace a tensor file and fix its hash, as someone crafting a hostile ticket would."""
    from safetensors.torch import save
    data = save(tensors)
    (path / name).write_bytes(data)
    edit_meta(path, lambda m: m["sha256"].update({name: hashlib.sha256(data).hexdigest()}))


def test_deeply_nested_json_is_rejected_not_a_recursion_error(saved: Path):
    (saved / T.META).write_text('{"format": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(TicketError, match=r"ticket.json: not valid JSON \(nested too deeply\)"):
        T.load(saved)


@pytest.mark.parametrize("key, value, match", [
    ("task", "toy/t", "task must be an object, got str"),
    ("seed", float("inf"), r"seed must be an integer in \[.*\), got 'inf'"),
    ("level", -1, r"level must be an integer in \[0, 2147483648\), got '-1'"),
    ("layers", {"0.weight": [8, 4]}, r"layers must be a list of \{name, shape, density\}, got dict"),
])
def test_metadata_of_the_wrong_type_is_rejected(saved: Path, key, value, match):
    edit_meta(saved, lambda m: m.update({key: value}))
    with pytest.raises(TicketError, match=match):
        T.load(saved)


def test_metadata_must_agree_with_the_masks(saved: Path):
    edit_meta(saved, lambda m: m["layers"][0].update(shape=[300, 784]))
    with pytest.raises(TicketError, match=r"gives layer 0.weight shape \[300, 784\] but its mask has \[8, 4\]"):
        T.load(saved)
    edit_meta(saved, lambda m: m["layers"][0].update(shape=[8, 4], density=0.75))
    with pytest.raises(TicketError, match=r"gives layer 0.weight density 0.75 but its mask keeps 16 of 32"):
        T.load(saved)


def test_mask_bytes_other_than_0_and_1_are_rejected(saved: Path):
    from safetensors.torch import load
    masks = load((saved / T.MASKS).read_bytes())
    raw = masks["0.weight"].view(torch.uint8).clone()
    raw[raw == 1] = 2  # still "true" to torch, but no mask ticketx writes
    rewrite(saved, T.MASKS, {**masks, "0.weight": raw.view(torch.bool)})
    with pytest.raises(TicketError, match="mask 0.weight holds byte values other than 0 and 1"):
        T.load(saved)


def test_a_masked_weight_must_be_floating_point(saved: Path):
    from safetensors.torch import load
    weights = load((saved / T.WEIGHTS).read_bytes())
    rewrite(saved, T.WEIGHTS, {**weights, "2.weight": weights["2.weight"].view(torch.int32)})
    with pytest.raises(TicketError, match="weight 2.weight has dtype torch.int32; a masked weight must be floating"):
        T.load(saved)


def test_a_misfit_names_the_ticket_folder(saved: Path):
    other = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with pytest.raises(TicketError, match=f"ticket {saved} \\(task .*\\) does not fit this model"):
        T.check_fits(T.load(saved), other, {"0.weight": 0, "2.weight": 0})


def test_a_failed_write_is_a_ticket_error_naming_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(T, "_fsync_write", full)
    with pytest.raises(TicketError, match=f"{tmp_path / 't'}: cannot write the ticket \\(No space left on device\\)"):
        T.save(make_ticket(), tmp_path / "t")
    assert list(tmp_path.iterdir()) == []


def test_failing_between_the_two_renames_puts_the_old_ticket_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    T.save(make_ticket(0), tmp_path / "t")
    real, calls = os.replace, []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new ticket into place
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(T.os, "replace", second_fails)
    with pytest.raises(T.TicketWriteError, match="Input/output error"):
        T.save(make_ticket(1), tmp_path / "t")
    monkeypatch.setattr(T.os, "replace", real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
    assert torch.equal(T.load(tmp_path / "t").weights["2.bias"], model(0)[2].bias.detach())


def test_deleting_a_stale_run_ends_it_killed_first(tracker, experiment):
    from mlflow.entities import ViewType
    exp = tracker.experiment(experiment)
    run_id = tracker.start_run(exp, "stale")
    tracker.delete(run_id)
    run = tracker.client.get_run(run_id)
    assert (run.info.status, run.info.lifecycle_stage) == ("KILLED", "deleted")
    assert tracker.client.search_runs([exp], run_view_type=ViewType.ACTIVE_ONLY) == []
