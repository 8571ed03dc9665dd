"""Executors: run independent tasks and yield each result as soon as it finishes.

Three interchangeable ways, all yielding `(key, result)` in completion order:

* ``serial``: in this process (one job; debugging, tests, tiny sweeps);
* ``local``: a `ProcessPoolExecutor` over local cores, started with *forkserver* so workers never
  inherit the parent's threads or locks (and import numpy/pandas once each);
* ``ray``: Ray tasks, on the cluster named by the usual Ray environment (``RAY_ADDRESS``), or on a
  local Ray instance when none is named.

The function must be a module-level, picklable callable and deterministic in its arguments: then
every executor gives the same results, bit for bit, and only their order and timing differ.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

from sim.errors import ScenarioError

K = TypeVar("K")
EXECUTORS = ("local", "serial", "ray")


def default_jobs() -> int:
    """Cores this process may use (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def imap_unordered(fn: Callable[[Any], Any], tasks: Iterable[tuple[K, Any]], executor: str = "local",
                   jobs: int | None = None) -> Generator[tuple[K, Any], None, None]:
    """Apply ``fn`` to each task's argument; yield ``(key, fn(arg))`` as each finishes.

    Closing the generator early (an interrupt, an error in the caller) cancels what has not started.
    """
    if executor not in EXECUTORS:
        raise ScenarioError("", "--executor", f"expected one of {', '.join(EXECUTORS)}", executor, True)
    jobs = jobs or default_jobs()
    if executor == "serial" or (executor == "local" and jobs == 1):
        for key, arg in tasks:
            yield key, fn(arg)
    elif executor == "local":
        yield from _local(fn, tasks, jobs)
    else:
        yield from _ray(fn, tasks)


def _local(fn: Callable[[Any], Any], tasks: Iterable[tuple[K, Any]], jobs: int) -> Iterator[tuple[K, Any]]:
    ctx = multiprocessing.get_context("forkserver")
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx)
    pending: dict[Future[Any], K] = {}
    todo = iter(tasks)
    window = 4 * jobs          # a bounded queue: memory stays flat for million-point sweeps
    try:
        while True:
            for key, arg in todo:
                pending[pool.submit(fn, arg)] = key
                if len(pending) >= window:
                    break
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield pending.pop(fut), fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _ray(fn: Callable[[Any], Any], tasks: Iterable[tuple[K, Any]]) -> Iterator[tuple[K, Any]]:
    try:
        import ray
    except ImportError:
        raise ScenarioError("", "--executor", "ray is not installed: pip install 'pagesim[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        # RAY_ADDRESS (the usual Ray environment) names a cluster; without it Ray starts a local one.
        import logging

        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        if os.environ.get("RAY_ADDRESS"):
            import sim
            kwargs["runtime_env"] = {"py_modules": [os.path.dirname(sim.__file__)]}
        ray.init(**kwargs)
    remote = ray.remote(_apply)
    pending: dict[Any, K] = {}
    todo = iter(tasks)
    window = 4 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    try:
        while True:
            for key, arg in todo:
                pending[remote.remote(fn, arg)] = key
                if len(pending) >= window:
                    break
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                yield pending.pop(ref), ray.get(ref)
    finally:
        for ref in pending:
            ray.cancel(ref)
        if started_here:
            ray.shutdown()


def _apply(fn: Callable[[Any], Any], arg: Any) -> Any:
    """Ray's remote body: `ray.remote` wants a plain function, and `fn` may be a partial."""
    return fn(arg)
