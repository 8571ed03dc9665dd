"""Request traces read from disk: Azure LLM 2023 CSV, Mooncake JSONL, and a generic CSV/JSONL.

Every reader returns a `RequestTable` whose ``arrival_s`` is measured from the trace's first
request and multiplied by ``time_scale`` (``arrival_s * time_scale``: 0.5 replays the trace twice as
fast, 2.0 half as fast).  Rows are sorted by arrival (stable, so ties keep file order).

Formats and what is modelled:
- ``azure``: ``TIMESTAMP,ContextTokens,GeneratedTokens`` (Azure Public Dataset, Splitwise, ISCA
  2024).  Wall-clock timestamps become seconds since the first row.  Prompts carry no content
  information, so every prompt is unique (no segments).
- ``mooncake``: JSON lines ``{"timestamp": ms, "input_length", "output_length", "hash_ids"}``
  (Mooncake, FAST 2025).  ``hash_ids[j]`` names the j-th 512-token block of the prompt; equal ids at
  the same position are reusable prefix.  They become segments ``(MOONCAKE_ID_BASE + id, 512)``,
  the last one clamped so that the segments cover at most ``input_length`` tokens.
- ``generic``: ``.csv`` or ``.jsonl`` with columns ``arrival_s`` (or ``timestamp_s``),
  ``input_tokens``, ``output_tokens`` and optionally ``n``.

Token counts of 0 (a prompt of nothing, or a request cut before its first token) are clamped to 1:
the engine must prefill at least one token and produce at least one.  Negative or non-integer
counts are errors.  Any bad input raises a one-line `ScenarioError` naming the trace file, the
config key (``ctx``) and, for bad cells, the file line.

A *session* trace (multi-turn conversations, `read_session_trace`) is a ``.csv`` or ``.jsonl`` with
one row per turn: ``session_id`` (any label), ``turn`` (0, 1, ... within the session),
``input_tokens`` (the turn's *new* user tokens: the simulator rebuilds the resent context),
``output_tokens`` (the answer), and optionally ``timestamp_s`` (the session's start, read on turn 0)
and ``think_time_s`` (seconds from the previous turn's last token to this turn's send).

Replaying a trace as a workload (windowing, resampling, rate override) lives in `sim.trace_replay`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.requests_table import RequestTable, Segments
from sim.schema import Ctx

MOONCAKE_BLOCK_TOKENS = 512        # Mooncake hashes prompts in 512-token blocks
MOONCAKE_ID_BASE = 1 << 40         # Mooncake hash id h becomes segment id MOONCAKE_ID_BASE + h
TRACE_FORMATS = ("azure", "mooncake", "generic")


def resolve_path(path: str, ctx: Ctx) -> Path:
    """A relative trace path is taken relative to the scenario file's folder (else the cwd)."""
    p = Path(path).expanduser()
    if not p.is_absolute() and ctx.file and Path(ctx.file).is_file():
        p = Path(ctx.file).resolve().parent / p
    return p


def read_trace(path: str | Path, fmt: str, *, ctx: Ctx, time_scale: float = 1.0) -> RequestTable:
    """Read a whole trace file of format ``azure | mooncake | generic``; ``ctx`` names its path key."""
    p = Path(path)
    if fmt not in TRACE_FORMATS:
        raise ctx.error(f"unknown trace format; expected one of {', '.join(TRACE_FORMATS)}", fmt)
    if not p.is_file():
        raise ctx.error(f"trace file not found: {p}")
    st = p.stat()
    table = _read_cached(str(p.resolve()), fmt, st.st_mtime_ns, st.st_size, ctx)
    if time_scale == 1.0:
        return table
    return RequestTable(table.arrival_s * time_scale, table.prompt_tokens, table.output_tokens,
                        n=table.n, segments=table.segments, source=f"{table.source} x{time_scale:g}")


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, fmt: str, _mtime_ns: int, _size: int, ctx: Ctx) -> RequestTable:
    """Parse once per (file, version); arrays come back read-only so the cache cannot be corrupted."""
    reader = {"azure": read_azure, "mooncake": read_mooncake, "generic": read_generic}[fmt]
    table = reader(Path(path), ctx)
    for arr in (table.arrival_s, table.prompt_tokens, table.output_tokens, table.n):
        if arr is not None:
            arr.setflags(write=False)
    return table


def read_azure(path: Path, ctx: Ctx) -> RequestTable:
    """Azure LLM inference trace 2023: wall-clock ``TIMESTAMP`` (7 decimals) and token counts."""
    df = _read_csv(path, ctx)
    _require_columns(df, ("TIMESTAMP", "ContextTokens", "GeneratedTokens"), path, ctx)
    stamps = pd.to_datetime(df["TIMESTAMP"], format="ISO8601", errors="coerce")
    bad = np.flatnonzero(stamps.isna().to_numpy())
    if bad.size:
        raise _cell_error(path, ctx, int(bad[0]) + 2, "TIMESTAMP",
                          "expected a time like 2023-11-16 18:15:46.6805900", df["TIMESTAMP"].iloc[bad[0]])
    ns = stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    arrival_s = (ns - ns.min()) / 1e9 if ns.size else np.zeros(0)
    prompt = _int_column(df["ContextTokens"], path, ctx, "ContextTokens", first_line=2)
    output = _int_column(df["GeneratedTokens"], path, ctx, "GeneratedTokens", first_line=2)
    return _finish(arrival_s, prompt, output, None, None, f"azure trace {path.name}")


def read_mooncake(path: Path, ctx: Ctx) -> RequestTable:
    """Mooncake trace: ms timestamps, token counts and 512-token prefix-block hash ids."""
    rows = _read_jsonl(path, ctx)
    keys = ("timestamp", "input_length", "output_length", "hash_ids")
    m = len(rows)
    stamp_ms = np.empty(m)
    prompt = np.empty(m, dtype=np.int64)
    output = np.empty(m, dtype=np.int64)
    segments: list[Segments] = []
    for i, row in enumerate(rows):
        line = i + 1
        for key in keys:
            if key not in row:
                raise _cell_error(path, ctx, line, key, "missing key; expected " + ", ".join(keys))
        stamp_ms[i] = _number(row["timestamp"], path, ctx, line, "timestamp")
        prompt[i] = _count(row["input_length"], path, ctx, line, "input_length")
        output[i] = _count(row["output_length"], path, ctx, line, "output_length")
        ids = row["hash_ids"]
        if not isinstance(ids, list) or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 0
                                                for h in ids):
            raise _cell_error(path, ctx, line, "hash_ids", "expected a list of non-negative integers", ids)
        segments.append(_block_segments(ids, max(int(prompt[i]), 1)))
    arrival_s = (stamp_ms - stamp_ms.min()) / 1e3 if m else np.zeros(0)
    return _finish(arrival_s, prompt, output, None, segments, f"mooncake trace {path.name}")


def _block_segments(hash_ids: list[int], prompt_tokens: int) -> Segments:
    """One (id, 512) run per block, cut so that the runs cover at most ``prompt_tokens`` tokens."""
    segs: list[tuple[int, int]] = []
    left = prompt_tokens
    for h in hash_ids:
        if left <= 0:
            break
        take = min(MOONCAKE_BLOCK_TOKENS, left)
        segs.append((MOONCAKE_ID_BASE + h, take))
        left -= take
    return tuple(segs)


def read_generic(path: Path, ctx: Ctx) -> RequestTable:
    """CSV (``.csv``) or JSON lines (anything else) with arrival_s|timestamp_s, input/output_tokens, n."""
    if path.suffix.lower() == ".csv":
        df = _read_csv(path, ctx)
        first_line = 2
    else:
        df = pd.DataFrame(_read_jsonl(path, ctx))
        first_line = 1
    time_col = "arrival_s" if "arrival_s" in df.columns else "timestamp_s"
    _require_columns(df, (time_col, "input_tokens", "output_tokens"), path, ctx)
    times = pd.to_numeric(df[time_col], errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(times))
    if bad.size:
        raise _cell_error(path, ctx, int(bad[0]) + first_line, time_col, "expected a number of seconds",
                          df[time_col].iloc[bad[0]])
    prompt = _int_column(df["input_tokens"], path, ctx, "input_tokens", first_line)
    output = _int_column(df["output_tokens"], path, ctx, "output_tokens", first_line)
    n = None
    if "n" in df.columns:
        n = _int_column(df["n"], path, ctx, "n", first_line)
        if n.size and n.min() < 1:
            line = int(np.argmin(n)) + first_line
            raise _cell_error(path, ctx, line, "n", "expected an integer >= 1", int(n.min()))
    arrival_s = times - times.min() if times.size else times
    return _finish(arrival_s, prompt, output, n, None, f"trace {path.name}")


def read_session_trace(path: Path, ctx: Ctx) -> Any:
    """A session trace (module docstring) as `sim.sessions.Conversations`: sessions ordered by
    start time (file order without timestamps), each its own user; NaN where a column is absent."""
    from sim.sessions import Conversations
    if not path.is_file():
        raise ctx.error(f"session trace file not found: {path}")
    if path.suffix.lower() == ".csv":
        df, first_line = _read_csv(path, ctx), 2
    else:
        df, first_line = pd.DataFrame(_read_jsonl(path, ctx)), 1
    _require_columns(df, ("session_id", "turn", "input_tokens", "output_tokens"), path, ctx)
    if len(df) == 0:
        raise ctx.error(f"session trace {path} has no rows")
    turn = _int_column(df["turn"], path, ctx, "turn", first_line)
    user_tok = np.maximum(_int_column(df["input_tokens"], path, ctx, "input_tokens", first_line), 1)
    answer = np.maximum(_int_column(df["output_tokens"], path, ctx, "output_tokens", first_line), 1)
    think = np.full(len(df), np.nan)
    if "think_time_s" in df.columns:
        think = pd.to_numeric(df["think_time_s"], errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~(think >= 0) & ~(np.isnan(think) & (turn == 0)))
        if bad.size:
            raise _cell_error(path, ctx, int(bad[0]) + first_line, "think_time_s", "expected seconds >= 0",
                              df["think_time_s"].iloc[bad[0]])
    label = df["session_id"].astype(str).to_numpy()
    codes = pd.factorize(label)[0]
    first_row: dict[int, int] = {}
    for i, c in enumerate(codes.tolist()):
        first_row.setdefault(c, i)
    starts = np.full(len(first_row), np.nan)
    if "timestamp_s" in df.columns:
        ts = pd.to_numeric(df["timestamp_s"], errors="coerce").to_numpy(dtype=float)
        for c, i in first_row.items():
            opener = np.flatnonzero((codes == c) & (turn == 0))
            if opener.size == 0 or not np.isfinite(ts[opener[0]]):
                raise _cell_error(path, ctx, int(opener[0] if opener.size else i) + first_line, "timestamp_s",
                                  "expected the session's start in seconds on its turn 0", label[i])
            starts[c] = ts[opener[0]]
        starts -= np.nanmin(starts)
    order = np.argsort(starts, kind="stable") if "timestamp_s" in df.columns else np.arange(starts.size)
    rows: list[np.ndarray] = []
    for c in order.tolist():
        mine = np.flatnonzero(codes == c)
        mine = mine[np.argsort(turn[mine], kind="stable")]
        if not np.array_equal(turn[mine], np.arange(mine.size)):
            raise _cell_error(path, ctx, int(mine[0]) + first_line, "turn",
                              f"session '{label[mine[0]]}' must have turns 0, 1, ..., {mine.size - 1}", turn[mine].tolist())
        rows.append(mine)
    idx = np.concatenate(rows)
    think = think[idx]
    turns = np.asarray([r.size for r in rows], dtype=np.int64)
    return Conversations(turns, user_tok[idx], answer[idx], think, np.arange(turns.size, dtype=np.int64), starts[order])


def _finish(arrival_s: np.ndarray, prompt: np.ndarray, output: np.ndarray, n: np.ndarray | None,
            segments: list[Segments] | None, source: str) -> RequestTable:
    """Sort by arrival (stable) and clamp zero token counts to 1."""
    order = np.argsort(arrival_s, kind="stable")
    if np.any(order != np.arange(order.size)):
        arrival_s, prompt, output = arrival_s[order], prompt[order], output[order]
        n = None if n is None else n[order]
        segments = None if segments is None else [segments[i] for i in order]
    return RequestTable(np.ascontiguousarray(arrival_s, dtype=np.float64), np.maximum(prompt, 1),
                        np.maximum(output, 1), n=n, segments=segments, source=source)


# --- parsing helpers: every failure is one line naming the file, the key and the line --------------

def _read_csv(path: Path, ctx: Ctx) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, skipinitialspace=True)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ctx.error(f"cannot read trace {path} as CSV: {_first_line(e)}") from None


def _read_jsonl(path: Path, ctx: Ctx) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ctx.error(f"cannot read trace {path}: {_first_line(e)}") from None
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ctx.error(f"{path} line {lineno}: expected a JSON object per line ({e.msg})") from None
        if not isinstance(row, dict):
            raise ctx.error(f"{path} line {lineno}: expected a JSON object per line", row)
        rows.append(row)
    return rows


def _require_columns(df: pd.DataFrame, cols: tuple[str, ...], path: Path, ctx: Ctx) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        got = ", ".join(map(str, df.columns)) or "none"
        raise ctx.error(f"{path}: missing column '{missing[0]}'; expected columns {', '.join(cols)} (got: {got})")


def _int_column(col: pd.Series, path: Path, ctx: Ctx, name: str, first_line: int) -> np.ndarray:
    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0) | (values != np.round(values)))
    if bad.size:
        raise _cell_error(path, ctx, int(bad[0]) + first_line, name, "expected an integer >= 0", col.iloc[bad[0]])
    return values.astype(np.int64)


def _number(value: Any, path: Path, ctx: Ctx, line: int, key: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
        return float(value)
    raise _cell_error(path, ctx, line, key, "expected a number", value)


def _count(value: Any, path: Path, ctx: Ctx, line: int, key: str) -> int:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 and float(value).is_integer():
        return int(value)
    raise _cell_error(path, ctx, line, key, "expected an integer >= 0", value)


def _cell_error(path: Path, ctx: Ctx, line: int, key: str, expected: str, *value: Any) -> Exception:
    return ctx.error(f"{path} line {line}: '{key}': {expected}", *value)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]

