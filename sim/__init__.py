"""pagesim: a discrete-event simulator of PagedAttention serving engines (vLLM).

Compiled modules: `make fast` (setup_native.py) may leave mypyc and Cython extensions of some
modules next to their sources, with sim/_native.sha256 naming the source (and, for Cython, its
.pxd) each was built from.  They are
used only while every one of those sources is unchanged and PAGESIM_PURE is unset; otherwise a
finder placed first on sys.meta_path imports all of them from their .py files, so an edited
source is never shadowed by a stale extension.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def source_digest(here: Path, mod: str) -> str:
    """sha256 of sim/<mod>.py, followed by sim/<mod>.pxd when there is one (Cython's C types)."""
    h = hashlib.sha256((here / f"{mod}.py").read_bytes())
    pxd = here / f"{mod}.pxd"
    if pxd.exists():
        h.update(pxd.read_bytes())
    return h.hexdigest()


def _compiled_modules() -> set[str]:
    return {p.name.split(".", 1)[0] for p in _HERE.glob("*.so") if "__mypyc" not in p.name}


def _native_ok(compiled: set[str], here: Path = _HERE) -> bool:
    """True when every compiled module is stamped and every stamped source is unchanged."""
    if os.environ.get("PAGESIM_PURE"):
        return False
    try:
        stamp = dict(line.split() for line in (here / "_native.sha256").read_text().splitlines() if line.strip())
    except (OSError, ValueError):
        return False
    if not compiled <= stamp.keys():
        return False
    for mod, sha in stamp.items():
        try:
            if source_digest(here, mod) != sha:
                return False
        except OSError:
            return False
    return True


class _SourceFirst:
    """Import the named sim modules from their .py files, never from an extension."""

    def __init__(self, names: set[str]):
        self.names = {f"{__name__}.{n}" for n in names}

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if fullname not in self.names:
            return None
        return importlib.util.spec_from_file_location(fullname, _HERE / (fullname.rsplit(".", 1)[1] + ".py"))


_compiled = _compiled_modules()
NATIVE = bool(_compiled) and _native_ok(_compiled)   # True: the compiled modules are in use
if _compiled and not NATIVE:
    sys.meta_path.insert(0, _SourceFirst(_compiled))
