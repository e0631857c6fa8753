"""Mutated tickets: one valid toy ticket, and seeded ways to break a copy of it.

Each mutation copies the base ticket folder and changes one thing, the way a disk, a transfer or a
stranger would: truncations, byte flips in safetensors headers and data, edited headers (dtypes, shapes,
offsets, length prefix, missing, extra and absurd tensors), revived pruned weights, mask bytes, edited
ticket.json entries, and ticket.json bytes that are not UTF-8 or not JSON. "rehashed" means the SHA-256
entries of ticket.json were recomputed afterwards, as someone crafting a hostile file would: the load must
then find the problem itself instead of relying on the hash.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ticketx import ticket as T

FILES = (T.MASKS, T.WEIGHTS)
DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL",
          "F8_E4M3", "F8_E5M2", "C64", "F4", "XYZ", ""]


def make_base(path: Path) -> Path:
    """A valid ticket of the toy task (3-layer MLP, 50% of each layer kept), saved at `path`."""
    from toy import ToyTask
    from ticketx import masks as M

    task = ToyTask("gauss", {})
    model = task.build_model(0)
    w = {n: p.detach() for n, p in task.prunable(model).items()}
    masks = M.magnitude(w, M.ones(w), 0.5)
    ticket = T.make(masks, model.state_dict(), task=task.spec(), seed=0, replicate=0, level=1, rewind_step=0,
                    source_run_id="0" * 32, config_hash="f" * 64, train={"steps": 40})
    return T.save(ticket, path)


# ------------------------------------------------------------------------------------------- file helpers

def rehash(d: Path) -> None:
    meta = json.loads((d / T.META).read_text())
    meta["sha256"] = {f: hashlib.sha256((d / f).read_bytes()).hexdigest() for f in FILES}
    (d / T.META).write_text(json.dumps(meta, indent=2, sort_keys=True))


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """A safetensors file -> (its header, its data bytes)."""
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict[str, Any], body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def tensors(header: dict[str, Any]) -> list[str]:
    return [k for k in header if k != "__metadata__"]


def edit_meta(d: Path, fn: Callable[[dict[str, Any]], Any]) -> None:
    meta = json.loads((d / T.META).read_text())
    fn(meta)
    (d / T.META).write_text(json.dumps(meta, indent=2, sort_keys=True))


# ------------------------------------------------------------------------------------------- mutations
# each takes (rng, ticket folder to edit in place) and returns what it did, in a few words

def truncate(rng: random.Random, d: Path, rehashed: bool) -> str:
    f = rng.choice(FILES)
    data = (d / f).read_bytes()
    at = rng.randrange(0, len(data))
    (d / f).write_bytes(data[:at])
    if rehashed:
        rehash(d)
    return f"{f} truncated to {at} of {len(data)} bytes"


def flip(rng: random.Random, d: Path, region: str, rehashed: bool) -> str:
    f = rng.choice(FILES)
    data = bytearray((d / f).read_bytes())
    n = struct.unpack("<Q", bytes(data[:8]))[0]
    lo, hi = (0, 8 + n) if region == "header" else (8 + n, len(data))
    where = sorted(rng.sample(range(lo, hi), rng.randint(1, 3)))
    for i in where:
        data[i] ^= rng.randrange(1, 256)
    (d / f).write_bytes(bytes(data))
    if rehashed:
        rehash(d)
    return f"{f} {region} bytes {where} flipped"


def mask_bytes(rng: random.Random, d: Path) -> str:
    header, body = split((d / T.MASKS).read_bytes())
    body = bytearray(body)
    where = rng.sample(range(len(body)), rng.randint(1, 3))
    for i in where:
        body[i] = rng.choice([v for v in (0, 1, 2, 255, rng.randrange(256)) if v != body[i]])
    (d / T.MASKS).write_bytes(join(header, bytes(body)))
    rehash(d)
    return f"mask bytes {sorted(where)} changed"


def revive(rng: random.Random, d: Path) -> str:
    """Set a pruned weight nonzero: the hostile edit that turns a ticket back into a denser network."""
    import torch
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    masks = st_load((d / T.MASKS).read_bytes())
    weights = st_load((d / T.WEIGHTS).read_bytes())
    name = rng.choice(sorted(masks))
    pruned = (~masks[name]).nonzero()
    idx = tuple(pruned[rng.randrange(len(pruned))].tolist())
    w = {k: v.clone() for k, v in weights.items()}
    w[name][idx] = rng.choice([1e-3, -0.5, 3.0, float("nan")])
    (d / T.WEIGHTS).write_bytes(st_save(w))
    rehash(d)
    return f"pruned weight {name}{list(idx)} set to {w[name][idx].item()}"


def header_edit(rng: random.Random, d: Path) -> str:
    f = rng.choice(FILES)
    header, body = split((d / f).read_bytes())
    name = rng.choice(tensors(header))
    entry = header[name]
    what = rng.choice(["dtype", "shape", "offsets", "drop", "extra", "absurd", "beyond", "junk"])
    if what == "dtype":
        entry["dtype"] = rng.choice([t for t in DTYPES if t != entry["dtype"]])
        said = f"{name} dtype {entry['dtype']!r}"
    elif what == "shape":
        shape = list(entry["shape"])
        choice = rng.randrange(6)
        if choice == 0 and len(shape) > 1:
            shape = shape[::-1]
        elif choice == 1:
            shape[rng.randrange(len(shape))] += rng.choice([-1, 1, 7])
        elif choice == 2:
            shape.append(rng.choice([1, 2]))
        elif choice == 3:
            shape = shape[:-1]
        elif choice == 4:
            shape = [rng.choice([-1, 2**40, 2**63, 2**64 + 1])] + shape[1:]
        else:
            shape = rng.choice([[], [0], "12", [1.5], None])
        entry["shape"] = shape
        said = f"{name} shape {shape}"
    elif what == "offsets":
        a, b = entry["data_offsets"]
        entry["data_offsets"] = rng.choice([[b, a], [a, b + 4], [a - 4, b - 4], [a, a], [-1, b], [a, 2**64 + 5],
                                            [a], "0-8", None])
        said = f"{name} data_offsets {entry['data_offsets']}"
    elif what == "drop":  # the entry goes, its bytes stay: offsets no longer cover the data
        del header[name]
        said = f"{name} removed from the header"
    elif what == "extra":
        header[f"extra.{rng.randrange(100)}"] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
        said = "an extra entry overlapping the first tensor"
    elif what == "absurd":  # a tensor claiming ~40 GB that the file does not hold
        header["huge"] = {"dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [len(body), len(body) + 4 * 10**10]}
        said = "a 100000x100000 F32 tensor claimed beyond the end"
    elif what == "beyond":  # the last tensor's end claims more data than the file has
        last = max(tensors(header), key=lambda k: header[k]["data_offsets"][1])
        a, b = header[last]["data_offsets"]
        extra = rng.choice([4, 4096, 2**30, 2**40])
        header[last]["data_offsets"] = [a, b + extra]
        header[last]["shape"] = [(b + extra - a) // {"F32": 4, "BOOL": 1}[header[last]["dtype"]]]
        said = f"{last} claims {extra} bytes past the end of the file"
    else:
        header[name] = rng.choice([[], "tensor", 42, {"dtype": "F32"}, {"shape": [1]}])
        said = f"{name} entry replaced by {header[name]!r}"
    (d / f).write_bytes(join(header, body))
    rehash(d)
    return f"{f}: {said}"


def length_prefix(rng: random.Random, d: Path) -> str:
    f = rng.choice(FILES)
    data = (d / f).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    value = rng.choice([0, 1, n - 1, n + 1, n + 8, len(data), len(data) + 1, 2**31, 2**32, 100_000_001,
                        2**63, 2**64 - 1])
    (d / f).write_bytes(struct.pack("<Q", value) + data[8:])
    rehash(d)
    return f"{f} header length {value} (was {n})"


def rebuild(rng: random.Random, d: Path) -> str:
    """A valid safetensors file with one tensor missing, or one extra, or one of another shape or dtype."""
    import torch
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    f = rng.choice(FILES)
    ts = dict(st_load((d / f).read_bytes()))
    name = rng.choice(sorted(ts))
    what = rng.choice(["missing", "extra", "shape", "dtype"])
    if what == "missing":
        del ts[name]
    elif what == "extra":
        ts[rng.choice(["6.weight", "extra", name + ".copy", "0.weight_orig"])] = torch.zeros(
            rng.choice([(3,), (4, 32), (0,)]), dtype=ts[name].dtype)
    elif what == "shape":
        t = ts[name]
        ts[name] = t.reshape(-1) if t.dim() > 1 else torch.cat([t, t[:1]])
    else:
        ts[name] = ts[name].to(rng.choice([torch.float64, torch.float16, torch.int32, torch.uint8, torch.bool]))
    (d / f).write_bytes(st_save({k: v.contiguous() for k, v in ts.items()}))
    rehash(d)
    return f"{f} rebuilt: {name} {what}"


def meta_edit(rng: random.Random, d: Path) -> str:
    said = []

    def edit(m: dict[str, Any]) -> None:
        layers = m["layers"]
        i = rng.randrange(len(layers))
        choice = rng.randrange(24)
        if choice == 0:
            layers[i]["shape"] = [s + rng.choice([1, -1, 5]) for s in layers[i]["shape"]]
        elif choice == 1:
            layers[i]["shape"] = layers[i]["shape"][::-1]
        elif choice == 2:
            layers[i]["shape"] = [10**12, 10**12]
        elif choice == 3:
            layers[i]["density"] = rng.choice([0.0, 1.0, layers[i]["density"] + 0.01, -0.5, 2.0])
        elif choice == 4:
            del layers[i]
        elif choice == 5:
            layers.append({"name": "6.weight", "shape": [4, 4], "density": 0.5})
        elif choice == 6:
            layers[i]["name"] = layers[i]["name"] + "x"
        elif choice == 7:
            m["layers"] = rng.choice([{}, "0.weight", None, [1, 2], [[]]])
        elif choice == 8:
            del m["sha256"]
        elif choice == 9:
            m["sha256"] = rng.choice([[], "abc", None, {T.MASKS: 5}])
        elif choice == 10:
            m["format"] = rng.choice([2, 0, "1", None, 1.5])
        elif choice == 11:
            m["task"] = rng.choice(["toy/gauss", ["toy"], 7, None])
        elif choice == 12:
            m["task"]["options"] = rng.choice(["hidden=32", [32], 1])
        elif choice == 13:
            m["task"]["plugin"] = rng.choice([1, None, ["toy"]])
        elif choice in (14, 15, 16, 17):
            key = ["seed", "level", "replicate", "rewind_step"][choice - 14]
            m[key] = rng.choice(["0", 1.5, -1 if key != "seed" else 2**64, 2**70, True, None, [], {}])
        elif choice == 18:
            m["density"] = rng.choice([-0.1, 1.5, "half", None])
        elif choice == 19:
            m["train"] = rng.choice(["steps=40", [40], 3])
        elif choice == 20:
            layers[i]["shape"] = rng.choice(["32x16", [32.0, 16.0], [-32, 16], None, [True, 16]])
        elif choice == 21:
            layers[i]["density"] = rng.choice(["0.5", None, [0.5]])
        elif choice == 22:
            layers[i] = rng.choice(["0.weight", None, [], {"name": layers[i]["name"]}])
        else:
            layers.append(dict(layers[i]))  # the same layer listed twice
        said.append(f"edit {choice}")

    edit_meta(d, edit)
    return f"{T.META}: {said[0]}"


def meta_bytes(rng: random.Random, d: Path) -> str:
    text = (d / T.META).read_bytes()
    choice = rng.randrange(8)
    if choice == 0:
        i = rng.randrange(len(text))
        data, said = text[:i] + rng.choice([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80"]) + text[i:], "not UTF-8"
    elif choice == 1:
        data, said = text.replace(b'"gauss"', '"gau\u00df"'.encode("latin-1")), "latin-1 text"
    elif choice == 2:
        i = rng.randrange(len(text))
        data, said = text[:i], f"truncated at {i}"
    elif choice == 3:
        depth = rng.choice([1000, 100_000])
        data, said = text[:-2] + b', "deep": ' + b"[" * depth + b"]" * depth + b"}", f"nested {depth} deep"
    elif choice == 4:
        data, said = rng.choice([b"", b"null", b"0", b'"ticket"', b"[]", b"{}"]), "not a ticket object"
    elif choice == 5:
        data, said = b"\xef\xbb\xbf" + text, "with a byte-order mark"
    elif choice == 6:
        i = rng.randrange(len(text))
        data, said = text[:i] + b"\x00" + text[i:], "a NUL byte"
    else:
        data, said = text.replace(b'"seed": 0', b'"seed": 1e400').replace(b'"level": 1', b'"level": NaN'), "1e400, NaN"
    (d / T.META).write_bytes(data)
    return f"{T.META}: {said}"


FAMILIES: dict[str, Callable[[random.Random, Path], str]] = {
    "truncated": lambda r, d: truncate(r, d, rehashed=False),
    "truncated, rehashed": lambda r, d: truncate(r, d, rehashed=True),
    "header bytes flipped": lambda r, d: flip(r, d, "header", rehashed=False),
    "header bytes flipped, rehashed": lambda r, d: flip(r, d, "header", rehashed=True),
    "data bytes flipped": lambda r, d: flip(r, d, "data", rehashed=False),
    "mask bytes changed, rehashed": mask_bytes,
    "pruned weight revived, rehashed": revive,
    "header edited, rehashed": header_edit,
    "header length prefix, rehashed": length_prefix,
    "tensor file rebuilt, rehashed": rebuild,
    "ticket.json edited": meta_edit,
    "ticket.json bytes": meta_bytes,
}


def mutate(base: Path, dst: Path, family: str, rng: random.Random) -> str:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(base, dst)
    return FAMILIES[family](rng, dst)
