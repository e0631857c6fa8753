"""Bad recipes: the table of tests/test_config_errors.py, counted, and a few cases as real processes."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

import harness as H
from test_config_errors import CASES, TEMPLATE, run_case

pytestmark = pytest.mark.faults


def test_bad_recipes(cli_env, tmp_path, figures):
    failed = []
    for i, (what, sections, overrides, expected) in enumerate(CASES):
        (tmp_path / str(i)).mkdir()
        problem = run_case(tmp_path / str(i), sections, overrides, expected)
        if problem:
            failed.append(f"{what}: {problem}")
            print(f"  FAIL {what}: {problem}")

    # two of them through `python -m ticketx find` as its own process: exit status 1, one stderr line
    picked = [c for c in CASES if c[0] in ("unknown train key", "comma decimal")]

    def real(case: tuple) -> str | None:
        what, sections, overrides, expected = case
        recipe = tmp_path / f"real-{what.replace(' ', '-')}.toml"
        recipe.write_text(TEMPLATE.format(**{k: sections.get(k, "") for k in ("top", "train", "prune", "tail")}))
        r = subprocess.run([sys.executable, "-m", "ticketx", "find", str(recipe),
                            *(a for s in overrides for a in ("--set", s))],
                           env=H.env(cli_env["MLFLOW_TRACKING_URI"]), cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
        err = [line for line in r.stderr.splitlines() if line.strip()]
        ok = (r.returncode == 1 and len(err) == 1 and err[0].startswith("Error: ") and expected in err[0]
              and "Traceback" not in r.stdout + r.stderr)
        return None if ok else f"{what} as a process: exit {r.returncode}, stderr {r.stderr[-300:]!r}"

    with ThreadPoolExecutor(2) as ex:
        real_failed = [p for p in ex.map(real, picked) if p]
    for p in real_failed:
        print(f"  FAIL {p}")
    figures.report(f"bad recipes: {len(CASES) - len(failed)}/{len(CASES)} one-line errors naming the key, no "
                   f"traceback (wrong types, unknown keys, out-of-range values, --set values that are not TOML; "
                   f"{len(picked) - len(real_failed)}/{len(picked)} also as real processes)",
                   not failed and not real_failed and len(CASES) >= 30 and len(picked) == 2)
    assert not failed and not real_failed
