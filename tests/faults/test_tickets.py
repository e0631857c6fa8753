"""1,000 mutated tickets, each rejected in one line naming the file; and no pickle in any load path.

The mutants are made, loaded and measured in a child process (load_mutants.py: an address-space limit,
ru_maxrss and tracemalloc are per process); a sample, one per kind of damage, also goes through
`ticketx show` as a real process.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import harness as H

pytestmark = pytest.mark.faults

COUNT = int(os.environ.get("TICKETX_FAULTS_TICKETS", "1000"))
SEED = 20261203


def test_mutated_tickets_are_rejected_cleanly(workdir, figures):
    out = workdir / "mutants"
    env = H.env("sqlite:///unused.db", TICKETX_PLUGINS="toy=toy:ToyPlugin")
    child = subprocess.run([sys.executable, str(H.HERE / "load_mutants.py"), str(out), str(COUNT), str(SEED)],
                           env=env, cwd=workdir, capture_output=True, text=True, timeout=900)
    assert child.returncode == 0, child.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    for family, counts in s["families"].items():
        print(f"  {family:34s} {dict(sorted(counts.items()))}")
    for p in s["problems"][:20]:
        print(f"  PROBLEM {p}")
    worst = s["worst_ratio"]
    print(f"  largest load: {worst['peak']:,} B of Python objects for {worst['size']:,} B of ticket files "
          f"({worst['ratio']:.1f}x; {worst['what']}); ru_maxrss grew {s['maxrss_growth_kb'] / 1024:.1f} MiB over "
          f"all loads; {len(s['equivalents'])} draws left the ticket unchanged and were replaced")

    # the same rejections from `ticketx show` as a real process (exit status 1, one line on stderr)
    def show(example: dict) -> tuple[bool, str]:
        r = subprocess.run([sys.executable, "-m", "ticketx", "show", example["path"]], env=env, cwd=workdir,
                           capture_output=True, text=True, timeout=300)
        err = [line for line in r.stderr.splitlines() if line.strip()]
        ok = (r.returncode == 1 and len(err) == 1 and err[0].startswith("Error: ") and example["path"] in err[0]
              and "Traceback" not in r.stdout + r.stderr)
        return ok, (err[0] if len(err) == 1 else r.stderr[-500:])

    sample = list(s["examples"].values())[:: max(1, len(s["examples"]) // 4)][:4]
    with ThreadPoolExecutor(2) as ex:
        shown = list(ex.map(show, sample))
    for example, (ok, line) in zip(sample, shown):
        print(f"  ticketx show ({example['what']}): {'ok' if ok else 'FAIL'}: {line[:160]}")

    clean = s["count"] - len(s["problems"])  # rejected by load and by the CLI in one line, within budget
    lib = s["library"]
    figures.report(f"mutated tickets rejected cleanly: {clean}/{s['count']} (tracebacks {lib.get('traceback', 0)}"
                   f", silent loads {lib.get('silent', 0)}, unclear messages {lib.get('unclear', 0)}, over the "
                   f"allocation budget {lib.get('over budget', 0)}; CLI: {s['cli'].get('rejected', 0)} one-line "
                   f"errors, {sum(ok for ok, _ in shown)}/{len(shown)} as real processes)",
                   clean == s["count"] >= 1000 and all(ok for ok, _ in shown))
    assert not s["problems"] and all(ok for ok, _ in shown), s["problems"][:5]


# ------------------------------------------------------------------------------------ no pickle anywhere

UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
# torch.jit.load: `ticketx export` reads back the TorchScript file it has just written, to check it
ALLOWED = {("ticketx/export.py", "torch.jit.load")}


def unsafe_loads(source: str, where: str) -> list[str]:
    """Calls and imports in `source` that can unpickle (and so run code from) a file."""
    tree = ast.parse(source)
    alias: dict[str, str] = {}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                alias[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                if a.name.split(".")[0] in UNSAFE_MODULES:
                    found.append(f"{where}:{node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                alias[a.asname or a.name] = f"{node.module}.{a.name}"
            if node.module.split(".")[0] in UNSAFE_MODULES:
                found.append(f"{where}:{node.lineno}: from {node.module} import ...")

    def dotted(f: ast.expr) -> str:
        if isinstance(f, ast.Name):
            return alias.get(f.id, f.id)
        if isinstance(f, ast.Attribute):
            return f"{dotted(f.value)}.{f.attr}"
        return "?"

    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        kw = {k.arg: k.value for k in node.keywords}
        true = lambda k: isinstance(kw.get(k), ast.Constant) and kw[k].value is True  # noqa: E731
        bad = ((name in ("torch.load", "torch.serialization.load") and not true("weights_only"))
               or (name in ("numpy.load", "np.load") and true("allow_pickle"))
               or name in ("torch.jit.load", "pandas.read_pickle", "yaml.unsafe_load", "eval", "exec")
               or (name == "yaml.load" and "SafeLoader" not in ast.dump(kw.get("Loader", ast.Constant(None)))))
        if bad and (where, name) not in ALLOWED:
            found.append(f"{where}:{node.lineno}: {name}(...)")
    return found


def test_the_pickle_check_finds_what_it_looks_for():
    snippet = ("import torch, pickle\nimport numpy as np\nfrom torch import load\ntorch.load(f)\nload(f)\n"
               "torch.load(f, weights_only=True)\nnp.load(f, allow_pickle=True)\nnp.load(f)\n"
               "from joblib import load as jl\nimport pandas as pd\npd.read_pickle(f)\ntorch.jit.load(f)\n"
               "eval(s)\nimport yaml\nyaml.load(s, Loader=yaml.SafeLoader)\nyaml.load(s)\n")
    found = unsafe_loads(snippet, "x.py")
    assert found == ["x.py:1: import pickle", "x.py:9: from joblib import ...", "x.py:4: torch.load(...)",
                     "x.py:5: torch.load(...)", "x.py:7: numpy.load(...)", "x.py:11: pandas.read_pickle(...)",
                     "x.py:12: torch.jit.load(...)", "x.py:13: eval(...)", "x.py:16: yaml.load(...)"], found


def test_no_code_path_unpickles_a_file(figures):
    files = sorted([*(H.REPO / "ticketx").rglob("*.py"), *(H.REPO / "plugins").glob("*/ticketx_*/**/*.py")])
    found = [f for p in files for f in unsafe_loads(p.read_text(), p.relative_to(H.REPO).as_posix())]
    assert len(files) > 30  # the scan saw the core and the three plugins
    figures.report(f"pickle loads in ticketx and plugin sources: {len(found)} ({len(files)} files scanned; "
                   "torch.load, pickle, dill, joblib, np.load(allow_pickle=True), torch.jit.load, eval, exec)",
                   not found)
    assert not found, found
