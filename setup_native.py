"""Compile pagesim's hot simulator modules in place (`make fast`): mypyc for the scheduler side
(with the recorder and the pipeline clock it calls every step), Cython for the block pool and the
prefix-cache block hashes.

Why mypyc: it compiles the type-annotated Python we already have (no second implementation to
keep in step), and its arithmetic is the same IEEE double arithmetic as CPython's, so a compiled
run gives the same numbers bit for bit (tests/test_native.py checks it).

Why Cython for `sim/block_pool.py` (and its hash map, `sim/block_hash_map.py`, whose methods the
compiled pool calls as C functions): the pool's work is per-block loops over numpy arrays, which
mypyc cannot speed up (every numpy element it touches is a boxed Python object).  Cython compiles
the same plain-Python file with the C types declared beside it in `sim/block_pool.pxd` (an
"augmenting" .pxd), so its loops index the arrays' memory directly.  Integers only: no float
arithmetic changes.  Uncompiled, the same loops index Python memoryviews of the arrays, so the
pure-Python fallback is no slower than the numpy version it replaced.

Why Cython for `sim/block_hash.py`: a multi-turn conversation hashes every new block of its
context (vLLM's chained prefix-cache hashes), and `hash((parent, (segment, start, end)))` costs two
tuple allocations per block.  Compiled, the same value comes from CPython's tuple-hash arithmetic
on 64-bit C integers (`sim/block_hash.pxd`); the module checks at import that it reproduces this
interpreter's `hash`, and uses `hash` itself otherwise and when uncompiled.

The compiled extensions sit next to their sources (sim/*.so, gitignored) with a stamp,
sim/_native.sha256, naming the source (and .pxd) each was built from.  `sim/__init__.py` loads
them only when every stamped source is unchanged and PAGESIM_PURE is unset; otherwise every
compiled module is imported from its .py file.  A build that fails leaves no extension of its
kind behind; the other kind is still used.

    python setup_native.py        # build; exit non-zero when either build failed
    python setup_native.py --sources   # the sources compiled (the Makefile rebuilds when one changes)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
MODULES = ["request", "batch", "kv_cache_manager", "scheduler_v1", "scheduler_lanes", "scheduler_loads", "waiting_queue", "scheduler_spec", "scheduler_quiet", "cost_model", "quiet", "kv_offload", "lru_tier", "metrics", "pipeline", "run_ahead", "spec_runtime", "decode_set", "pipe_loop", "horizon", "replica", "scheduler_running", "follow_ups"]
CYTHON_MODULES = ["block_hash_map", "block_pool", "block_hash"]
STAMP = ROOT / "sim" / "_native.sha256"
CYTHON_DIRECTIVES = {"language_level": 3, "boundscheck": False, "wraparound": False, "initializedcheck": False,
                     "annotation_typing": False, "binding": False}

if __name__ == "__main__" and sys.argv[1:] == ["--sources"]:   # the Makefile's rebuild rule reads these
    print(" ".join([f"sim/{m}.py" for m in MODULES + CYTHON_MODULES] + [f"sim/{m}.pxd" for m in CYTHON_MODULES]))
    sys.exit(0)

sys.path.insert(0, str(ROOT))
from sim import source_digest  # noqa: E402


def clean(mods: list[str] | None = None) -> None:
    if mods is None:
        STAMP.unlink(missing_ok=True)
    for so in (ROOT / "sim").glob("*.so"):
        name = so.name.split(".", 1)[0]
        if mods is None or name in mods or (name.startswith("native__mypyc") and mods is MODULES):
            so.unlink()


def build(code: str, what: str, mods: list[str]) -> bool:
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        clean(mods)
        lines = (res.stdout + "\n" + res.stderr).strip().splitlines()   # mypy reports on stdout
        last = next((ln for ln in lines if ": error:" in ln or "Error:" in ln), lines[-1] if lines else "(no output)")
        print(f"setup_native: {what} build failed ({last}); {', '.join(mods)} run as pure Python", file=sys.stderr)
        return False
    print(f"setup_native: compiled {len(mods)} module(s) with {what}")
    return True


def main() -> int:
    clean()
    sources = [f"sim/{m}.py" for m in MODULES]
    mypyc = ("from setuptools import setup\nfrom mypyc.build import mypycify\n"
             f"setup(name='pagesim-native', packages=[], script_args=['build_ext', '--inplace', '--build-temp', 'build/native'],"
             f" ext_modules=mypycify({sources!r}, group_name='sim.native', opt_level='3'))\n")
    exts = [f"Extension('sim.{m}', ['sim/{m}.py'])" for m in CYTHON_MODULES]
    cython = ("from setuptools import setup, Extension\nfrom Cython.Build import cythonize\n"
              "setup(name='pagesim-cython', packages=[], script_args=['build_ext', '--inplace', '--build-temp', 'build/cython'],"
              f" ext_modules=cythonize([{', '.join(exts)}], build_dir='build/cython', quiet=True,"
              f" compiler_directives={CYTHON_DIRECTIVES!r}))\n")
    built = (MODULES if build(mypyc, "mypyc", MODULES) else []) + \
            (CYTHON_MODULES if build(cython, "Cython", CYTHON_MODULES) else [])
    if built:
        STAMP.write_text("".join(f"{m} {source_digest(ROOT / 'sim', m)}\n" for m in built))
    return 0 if len(built) == len(MODULES) + len(CYTHON_MODULES) else 1


if __name__ == "__main__":
    sys.exit(main())
