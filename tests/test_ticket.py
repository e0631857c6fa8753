import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ticketx import masks as M
from ticketx import ticket as T
from ticketx.ticket import TicketError


def model(seed=0, hidden=8):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.BatchNorm1d(hidden), nn.Linear(hidden, 2))


def make_ticket(m=None):
    m = m or model()
    w = {"0.weight": m[0].weight.detach(), "2.weight": m[2].weight.detach()}
    masks = M.magnitude(w, M.ones(w), 0.5)
    return T.make(masks, m.state_dict(), task={"plugin": "toy", "task": "t"}, level=1, seed=0)


def test_roundtrip_is_exact_and_keeps_layer_order(tmp_path: Path):
    t = make_ticket()
    T.save(t, tmp_path / "t")
    back = T.load(tmp_path / "t")
    assert list(back.masks) == ["0.weight", "2.weight"]
    assert all(torch.equal(back.masks[n], t.masks[n]) for n in t.masks)
    assert all(torch.equal(back.weights[n], t.weights[n]) for n in t.weights)
    assert back.meta["level"] == 1 and back.density == pytest.approx(0.5)
    assert bool((back.weights["0.weight"][back.masks["0.weight"] == 0] == 0).all())
    assert "running_mean" in "".join(back.weights)  # buffers travel too


def test_save_replaces_atomically_and_leaves_no_temporaries(tmp_path: Path):
    T.save(make_ticket(model(0)), tmp_path / "t")
    T.save(make_ticket(model(1)), tmp_path / "t")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
    assert torch.equal(T.load(tmp_path / "t").weights["2.bias"], model(1)[2].bias.detach())


def test_failed_save_keeps_the_previous_ticket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    T.save(make_ticket(model(0)), tmp_path / "t")

    def broken(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(T, "_fsync_write", broken)
    with pytest.raises(OSError, match="No space left"):
        T.save(make_ticket(model(1)), tmp_path / "t")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
    assert torch.equal(T.load(tmp_path / "t").weights["2.bias"], model(0)[2].bias.detach())


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    return T.save(make_ticket(), tmp_path / "t")


def test_truncated_file_is_rejected(saved: Path):
    data = (saved / T.WEIGHTS).read_bytes()
    (saved / T.WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(TicketError, match=r"weights.safetensors: SHA-256 .* does not match"):
        T.load(saved)


def test_tampered_file_is_rejected(saved: Path):
    data = bytearray((saved / T.MASKS).read_bytes())
    data[-1] ^= 1
    (saved / T.MASKS).write_bytes(bytes(data))
    with pytest.raises(TicketError, match="masks.safetensors: SHA-256 .* corrupted or was edited"):
        T.load(saved)


def test_tampered_file_with_matching_hash_is_checked_for_content(saved: Path):
    # an attacker who also rewrites the hash still cannot revive pruned weights unnoticed
    from safetensors.torch import load_file, save_file
    w = load_file(str(saved / T.WEIGHTS))
    w["0.weight"] = torch.ones_like(w["0.weight"])
    save_file(w, str(saved / T.WEIGHTS))
    meta = json.loads((saved / T.META).read_text())
    import hashlib
    meta["sha256"][T.WEIGHTS] = hashlib.sha256((saved / T.WEIGHTS).read_bytes()).hexdigest()
    (saved / T.META).write_text(json.dumps(meta))
    with pytest.raises(TicketError, match="weight 0.weight is nonzero where its mask prunes it"):
        T.load(saved)


@pytest.mark.parametrize("edit, match", [
    (lambda p: (p / T.META).write_text("{not json"), "ticket.json: not valid JSON"),
    (lambda p: (p / T.META).write_bytes(b'{"a": "\xff"}'), r"ticket.json: not UTF-8 \(byte 7\)"),
    (lambda p: (p / T.META).write_text("[1, 2]"), "expected a JSON object, got list"),
    (lambda p: (p / T.META).write_text('{"format": 99}'), "unsupported ticket format 99"),
    (lambda p: (p / T.MASKS).unlink(), "incomplete ticket, missing masks.safetensors"),
])
def test_bad_metadata(saved: Path, edit, match):
    edit(saved)
    with pytest.raises(TicketError, match=match):
        T.load(saved)


def test_layer_list_must_match_masks(saved: Path):
    meta = json.loads((saved / T.META).read_text())
    meta["layers"] = meta["layers"][:1]
    (saved / T.META).write_text(json.dumps(meta))
    with pytest.raises(TicketError, match=r"lists layers \['0.weight'\] but masks.safetensors holds"):
        T.load(saved)


def test_not_a_directory(tmp_path: Path):
    with pytest.raises(TicketError, match="not a ticket directory"):
        T.load(tmp_path / "nothing")


def test_check_fits_names_every_mismatch(saved: Path):
    t = T.load(saved)
    other = model(hidden=6)
    prunable = {"0.weight": other[0].weight, "2.weight": other[2].weight}
    with pytest.raises(TicketError) as e:
        T.check_fits(t, other, prunable)
    msg = str(e.value)
    assert "0.weight: ticket shape (8, 4), model shape (6, 4)" in msg
    assert "2.weight: ticket shape (2, 8), model shape (2, 6)" in msg
    assert "1.running_mean: ticket shape (8,), model shape (6,)" in msg
    T.check_fits(t, model(), {"0.weight": None, "2.weight": None})  # fits: no error


def test_check_fits_missing_and_extra_and_ignore(saved: Path):
    t = T.load(saved)
    bigger = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2), nn.Linear(2, 2))
    prunable = {"0.weight": 0, "2.weight": 0, "3.weight": 0}
    with pytest.raises(TicketError, match=r"3.weight: in the model \(2, 2\), missing from the ticket"):
        T.check_fits(t, bigger, prunable)
    T.check_fits(t, bigger, prunable, ignore={"3.weight", "3.bias"})
