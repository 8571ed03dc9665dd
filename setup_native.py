"""Compile pagesim's hot simulator modules with mypyc, in place (`make fast`).

Why mypyc: it compiles the type-annotated Python we already have (no second implementation to
keep in step), and its arithmetic is the same IEEE double arithmetic as CPython's, so a compiled
run gives the same numbers bit for bit (tests/test_native.py checks it).  About 1.3-1.4x on
the 100k-request benchmark.  Only the modules that gain are compiled: the numpy-heavy block pool
and the recorder ran slower compiled (numpy calls from compiled code box every scalar).

The compiled extensions sit next to their sources (sim/*.so, gitignored) with a stamp,
sim/_native.sha256, naming the source each was built from.  `sim/__init__.py` loads them only
when every stamped source is unchanged and PAGESIM_PURE is unset; otherwise every compiled
module is imported from its .py file (all or none: compiled modules call each other natively through one shared library,
sim/native__mypyc*.so).

    python setup_native.py        # build, or exit non-zero leaving no extension behind
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
MODULES = ["request", "batch", "kv_cache_manager", "scheduler_v1", "scheduler_spec", "scheduler_quiet", "cost_model", "quiet"]
STAMP = ROOT / "sim" / "_native.sha256"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def clean() -> None:
    STAMP.unlink(missing_ok=True)
    for so in (ROOT / "sim").glob("*.so"):
        so.unlink()


def main() -> int:
    clean()
    sources = [f"sim/{m}.py" for m in MODULES]
    code = ("from setuptools import setup\nfrom mypyc.build import mypycify\n"
            f"setup(name='pagesim-native', packages=[], script_args=['build_ext', '--inplace', '--build-temp', 'build/native'],"
            f" ext_modules=mypycify({sources!r}, group_name='sim.native', opt_level='3'))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        clean()
        last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"setup_native: mypyc build failed ({last}); pagesim runs as pure Python", file=sys.stderr)
        return 1
    STAMP.write_text("".join(f"{m} {digest(ROOT / 'sim' / (m + '.py'))}\n" for m in MODULES))
    print(f"setup_native: compiled {len(MODULES)} modules with mypyc")
    return 0


if __name__ == "__main__":
    sys.exit(main())
