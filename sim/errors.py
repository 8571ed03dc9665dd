"""The one exception a user ever sees from pagesim: a one-line, actionable message.

`ScenarioError` carries the file, the key path, the offending value and what was expected, and
renders as ``file: key.path: message``.  The CLI prints ``str(error)`` and exits 2; nothing else
prints a traceback for bad input.
"""

from __future__ import annotations

from typing import Any


class ScenarioError(Exception):
    """Bad user input, reported on one line: ``FILE: KEY.PATH: what is wrong (got VALUE)``."""

    def __init__(self, file: str, key_path: str, message: str, value: Any = None, has_value: bool = False):
        self.file = file
        self.key_path = key_path
        self.message = message
        self.value = value
        self.has_value = has_value
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.file}: " if self.file else ""
        key = f"{self.key_path}: " if self.key_path else ""
        got = f" (got {self.value!r})" if self.has_value else ""
        return " ".join(f"{where}{key}{self.message}{got}".split())


def fail(file: str, key_path: str, message: str, *value: Any) -> ScenarioError:
    """Build a ScenarioError; pass the offending value as the optional fourth argument."""
    return ScenarioError(file, key_path, message, value[0] if value else None, bool(value))


class SimulationError(ScenarioError):
    """The scenario ran into a state where vLLM itself aborts or refuses (e.g. V0 out of CPU swap
    space).  A `ScenarioError`, so the CLI prints it on one line and a sweep records the point as
    failed; the key path names the option to change.  Rebuildable from its `args` (SimPy re-raises
    a process's exception as `type(e)(*e.args)`; pickling does the same)."""

    def __init__(self, file: str, key_path: str, message: str):
        super().__init__(file, key_path, message)
        self.args = (file, key_path, message)

    def __str__(self) -> str:
        return self._render()
