"""The mypyc-compiled modules (setup_native.py): same numbers as pure Python, never stale."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sim

ROOT = Path(__file__).resolve().parent.parent


def _run(tmp: Path, pure: bool, scenario: str = "scenarios/validation/kv-pressure.yaml",
         sets: tuple[str, ...] = ()) -> dict:
    env = dict(os.environ)
    env.pop("PAGESIM_PURE", None)
    if pure:
        env["PAGESIM_PURE"] = "1"
    out = tmp / ("pure" if pure else "native")
    args = ["run", scenario, "--out", str(out)] + [a for kv in sets for a in ("--set", kv)]
    code = ("import sys, sim; from sim.cli import main; "
            "rc = main(sys.argv[1:]); "
            "print('NATIVE', sim.NATIVE); sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"NATIVE {not pure}" in res.stdout
    return json.loads((out / "summary.json").read_text())


def _same_both_ways(tmp: Path, scenario: str = "scenarios/validation/kv-pressure.yaml",
                    sets: tuple[str, ...] = ()) -> dict:
    """The run's summary, compiled; asserted equal, bit for bit, to the pure-Python run's."""
    native = _run(tmp, pure=False, scenario=scenario, sets=sets)
    pure = _run(tmp, pure=True, scenario=scenario, sets=sets)
    native.pop("wall_time_s", None)
    pure.pop("wall_time_s", None)
    assert native == pure
    return native


@pytest.mark.skipif(not sim.NATIVE, reason="no compiled modules in use (run `make fast`)")
def test_compiled_run_matches_pure_python_bit_for_bit(tmp_path: Path) -> None:
    assert _same_both_ways(tmp_path)["num_preemptions"] > 0   # the scenario exercises preemption, not only decodes


@pytest.mark.skipif(not sim.NATIVE, reason="no compiled modules in use (run `make fast`)")
@pytest.mark.parametrize(("scenario", "key"), [
    ("scenarios/llama3-70b-pp.yaml", "pp_bubble_frac"),           # the compiled batch-queue loop (sim.pipe_loop)
    ("scenarios/multi-turn-chat.yaml", "prefix_cache_hit_rate"),   # closed-loop turns, chained block hashes
])
def test_compiled_pipeline_and_sessions_match_pure_python(tmp_path: Path, scenario: str, key: str) -> None:
    assert _same_both_ways(tmp_path, scenario, ("run.num_requests=400",))[key] > 0   # the feature is at work


def _stamp(d: Path, mods: dict[str, str]) -> None:
    for m, text in mods.items():
        (d / f"{m}.py").write_text(text)
    (d / "_native.sha256").write_text("".join(f"{m} {hashlib.sha256(t.encode()).hexdigest()}\n" for m, t in mods.items()))


def test_stale_or_unstamped_extensions_are_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAGESIM_PURE", raising=False)
    _stamp(tmp_path, {"a": "x = 1\n", "b": "y = 2\n"})
    assert sim._native_ok({"a", "b"}, tmp_path)
    assert not sim._native_ok({"a", "b", "c"}, tmp_path)            # an extension built without a stamp
    (tmp_path / "b.py").write_text("y = 3\n")                        # a source edited after the build
    assert not sim._native_ok({"a", "b"}, tmp_path)
    _stamp(tmp_path, {"a": "x = 1\n", "b": "y = 2\n"})
    monkeypatch.setenv("PAGESIM_PURE", "1")
    assert not sim._native_ok({"a", "b"}, tmp_path)
    (tmp_path / "_native.sha256").unlink()
    monkeypatch.delenv("PAGESIM_PURE")
    assert not sim._native_ok({"a"}, tmp_path)


def test_an_edited_pxd_makes_its_extension_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Cython module's C types live in its .pxd: the stamp covers the .py and the .pxd."""
    monkeypatch.delenv("PAGESIM_PURE", raising=False)
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "a.pxd").write_text("cdef int x\n")
    (tmp_path / "_native.sha256").write_text(f"a {sim.source_digest(tmp_path, 'a')}\n")
    assert sim._native_ok({"a"}, tmp_path)
    assert sim.source_digest(tmp_path, "a") != hashlib.sha256(b"x = 1\n").hexdigest()
    (tmp_path / "a.pxd").write_text("cdef long x\n")
    assert not sim._native_ok({"a"}, tmp_path)


def test_stamped_modules_are_the_compiled_ones_in_use() -> None:
    """Whatever setup_native.py stamped (mypyc modules, the Cython block pool) is imported from its
    extension, not from the .py next to it."""
    stamp = ROOT / "sim" / "_native.sha256"
    if not sim.NATIVE or not stamp.exists():
        pytest.skip("no compiled modules in use (run `make fast`)")
    import importlib
    for line in stamp.read_text().splitlines():
        mod = importlib.import_module(f"sim.{line.split()[0]}")
        assert mod.__file__ is not None and mod.__file__.endswith(".so"), mod.__file__
