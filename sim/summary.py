"""Turn a finished run's recorder into `summary.json` and the per-request / per-step tables.

Key names follow `vllm bench serve --save-result` wherever the metric is the same; pagesim's own
metrics (blocks, preemptions, KV usage and fragmentation) use vLLM's metric vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sim.config import SLOConfig
from sim.metrics import Recorder

PERCENTILES = (50, 90, 95, 99)


def weighted_percentiles(values: np.ndarray, weights: np.ndarray, qs: list[float]) -> list[float]:
    """np.percentile(np.repeat(values, weights), q) (linear method) for each q, without expanding
    and with one sort."""
    order = np.argsort(values, kind="stable")
    v = values[order]
    cw = np.cumsum(weights[order])
    total = int(cw[-1])
    out = []
    for q in qs:
        pos = q / 100.0 * (total - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, total - 1)
        v_lo = v[np.searchsorted(cw, lo, side="right")]
        v_hi = v[np.searchsorted(cw, hi, side="right")]
        out.append(float(v_lo + (v_hi - v_lo) * (pos - lo)))
    return out


def weighted_percentile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """np.percentile(np.repeat(values, weights), q) (linear method) without expanding."""
    return weighted_percentiles(values, weights, [q])[0]


def _stats(name: str, values_s: np.ndarray, out: dict[str, Any], weights: np.ndarray | None = None) -> None:
    ms = values_s * 1000.0
    if ms.size == 0:
        ms = np.zeros(1)
        weights = None
    if weights is None:
        weights = np.ones(ms.size, dtype=np.int64)
    total = weights.sum()
    mean = float(np.dot(ms, weights) / total)
    out[f"mean_{name}_ms"] = mean
    qs = weighted_percentiles(ms, weights, [50.0, *PERCENTILES])
    out[f"median_{name}_ms"] = qs[0]
    out[f"std_{name}_ms"] = float(np.sqrt(np.dot(weights, (ms - mean) ** 2) / total))
    for p, v in zip(PERCENTILES, qs[1:], strict=True):
        out[f"p{p}_{name}_ms"] = v


def meets(ttft_s: np.ndarray, e2el_s: np.ndarray, out_tok: np.ndarray, ttft_ms: float | None,
           tpot_ms: float | None, e2el_ms: float | None) -> np.ndarray:
    """Which completed requests meet the targets (vllm bench serve's goodput definition)."""
    good = np.ones(ttft_s.size, dtype=bool)
    if ttft_ms is not None:
        good &= ttft_s * 1000 <= ttft_ms
    if tpot_ms is not None:
        tp = np.where(out_tok > 1, (e2el_s - ttft_s) / np.maximum(out_tok - 1, 1), 0.0)
        good &= tp * 1000 <= tpot_ms
    if e2el_ms is not None:
        good &= e2el_s * 1000 <= e2el_ms
    return good


def class_summary(rec: Recorder, measured: np.ndarray, slo: SLOConfig, classes: Sequence[Any],
                  cls: np.ndarray, duration_s: float) -> dict[str, dict[str, Any]]:
    """Per SLO class: completed, rejected, SLO attainment and goodput against the class's own
    targets (falling back to the scenario's), and its latency percentiles."""
    out: dict[str, dict[str, Any]] = {}
    for k, c in enumerate(classes):
        mine = measured & (cls == k)
        done = mine & ~np.isnan(rec.finish_s)
        ttft = (rec.first_token_s - rec.send_s)[done]
        e2el = (rec.finish_s - rec.send_s)[done]
        out_tok = rec.output_tokens[done]
        targets = [c.ttft_ms if c.ttft_ms is not None else slo.ttft_ms,
                   c.tpot_ms if c.tpot_ms is not None else slo.tpot_ms,
                   c.e2el_ms if c.e2el_ms is not None else slo.e2el_ms]
        good = meets(ttft, e2el, out_tok, *targets)
        rejected = int((mine & rec.rejected).sum())
        judged = good.size + rejected
        row: dict[str, Any] = {"priority": c.priority, "num_requests": int(mine.sum()), "completed": int(done.sum()),
                               "num_rejected": rejected, "ttft_ms_target": targets[0], "tpot_ms_target": targets[1],
                               "e2el_ms_target": targets[2]}
        has_slo = any(t is not None for t in targets)
        row["slo_attainment"] = float(good.sum() / judged) if has_slo and judged else None
        row["request_goodput"] = float(good.sum() / duration_s) if has_slo else None
        multi = out_tok > 1
        tpot = (e2el[multi] - ttft[multi]) / (out_tok[multi] - 1)
        for name, vals in (("ttft", ttft), ("tpot", tpot), ("e2el", e2el)):
            ms = vals * 1000.0
            row[f"median_{name}_ms"] = float(np.percentile(ms, 50)) if ms.size else None
            row[f"p99_{name}_ms"] = float(np.percentile(ms, 99)) if ms.size else None
        out[c.name] = row
    return out


def _num_distinct(ids: np.ndarray) -> int:
    """How many distinct ints: counted in a bincount when they are small non-negative ones (session
    numbers: no sort of 100k ids), else by `np.unique`."""
    if ids.size == 0:
        return 0
    if ids.min() >= 0 and ids.max() < 4 * ids.size + 1024:
        return int(np.count_nonzero(np.bincount(ids)))
    return int(np.unique(ids).size)


def session_summary(rec: Recorder, measured: np.ndarray, session: np.ndarray, turn: np.ndarray) -> dict[str, Any]:
    """Multi-turn sessions: counts, and per turn index (0-based) the TTFT median / p99 and the
    prefix-cache hit rate (hit tokens / prompt tokens) over the measured turns that completed."""
    done = measured & ~np.isnan(rec.finish_s)
    ttft_ms = (rec.first_token_s - rec.send_s) * 1000.0
    med: list[float | None] = []
    p99: list[float | None] = []
    hit: list[float | None] = []
    count: list[int] = []
    for j in range(int(turn.max()) + 1 if turn.size else 0):
        mine = done & (turn == j)
        v = ttft_ms[mine]
        count.append(int(mine.sum()))
        med.append(float(np.percentile(v, 50)) if v.size else None)
        p99.append(float(np.percentile(v, 99)) if v.size else None)
        prompt = int(rec.prompt_tokens[mine].sum())
        hit.append(float(rec.prefix_hit_tokens[mine].sum() / prompt) if prompt else None)
    sent = ~np.isnan(rec.send_s)
    return {"num_sessions": _num_distinct(session), "num_turns": int(turn.size),
            "num_sessions_started": _num_distinct(session[sent]), "num_turns_sent": int(sent.sum()),
            "ttft_ms_by_turn": {"median": med, "p99": p99, "count": count},
            "prefix_cache_hit_rate_by_turn": hit}


def request_table(rec: Recorder, measured: np.ndarray) -> pd.DataFrame:
    ttft = rec.first_token_s - rec.send_s
    e2el = rec.finish_s - rec.send_s
    out = rec.output_tokens
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out > 1, (e2el - ttft) / np.maximum(out - 1, 1), np.nan)
    return pd.DataFrame({
        "send_s": rec.send_s, "first_token_s": rec.first_token_s, "finish_s": rec.finish_s,
        "prompt_tokens": rec.prompt_tokens, "output_tokens": out, "ttft_s": ttft, "tpot_s": tpot,
        "e2el_s": e2el, "queue_delay_s": rec.first_scheduled_s - rec.send_s, "num_preemptions": rec.preemptions, "prefix_hit_tokens": rec.prefix_hit_tokens,
        "replica": rec.replica, "measured": measured, "rejected": rec.rejected,
    })


def step_table(rec: Recorder) -> pd.DataFrame:
    s = rec.steps
    return pd.DataFrame({k: np.asarray(getattr(s, k)) for k in s.__dataclass_fields__})


def summarize(rec: Recorder, measured: np.ndarray, slo: SLOConfig, end_s: float) -> dict[str, Any]:
    """Aggregate metrics over the measured requests (warm-up excluded) that completed."""
    done = measured & ~np.isnan(rec.finish_s)
    ttft = (rec.first_token_s - rec.send_s)[done]
    e2el = (rec.finish_s - rec.send_s)[done]
    out_tok = rec.output_tokens[done]
    in_tok = rec.prompt_tokens[done]
    multi = out_tok > 1
    tpot = (e2el[multi] - ttft[multi]) / (out_tok[multi] - 1)
    start = float(np.nanmin(rec.send_s[measured])) if measured.any() else 0.0
    end = float(np.nanmax(rec.finish_s[done])) if done.any() else end_s
    duration = max(end - start, 1e-12)
    s: dict[str, Any] = {
        "completed": int(done.sum()),
        "num_measured": int(measured.sum()),
        "duration": duration,
        "total_input_tokens": int(in_tok.sum()),
        "total_output_tokens": int(out_tok.sum()),
        "request_throughput": float(done.sum() / duration),
        "output_throughput": float(out_tok.sum() / duration),
        "total_token_throughput": float((in_tok.sum() + out_tok.sum()) / duration),
    }
    good = meets(ttft, e2el, out_tok, slo.ttft_ms, slo.tpot_ms, slo.e2el_ms)
    has_slo = any(v is not None for v in (slo.ttft_ms, slo.tpot_ms, slo.e2el_ms))
    rejected = measured & rec.rejected
    s["num_rejected"] = int(rejected.sum())
    s["request_goodput"] = float(good.sum() / duration) if has_slo else None
    judged = good.size + int(rejected.sum())          # a rejected request missed its SLO
    s["slo_attainment"] = float(good.sum() / judged) if has_slo and judged else None
    _stats("ttft", ttft, s)
    _stats("tpot", tpot, s)
    itl_v, itl_w = rec.itl_samples()
    _stats("itl", itl_v, s, itl_w)
    _stats("e2el", e2el, s)
    queue_s = (rec.first_scheduled_s - rec.send_s)[done]
    s["mean_queue_delay_ms"] = float(np.mean(queue_s) * 1000) if queue_s.size else 0.0
    s["p99_queue_delay_ms"] = float(np.percentile(queue_s, 99) * 1000) if queue_s.size else 0.0
    s["num_preemptions"] = int(rec.preemptions[done].sum())
    s["num_steps"] = rec.num_steps
    s["num_swapped_out_blocks"] = rec.num_swapped_out_blocks
    s["num_swapped_in_blocks"] = rec.num_swapped_in_blocks
    s["num_copied_blocks"] = rec.num_copied_blocks
    hits = rec.prefix_hit_tokens[done].sum()
    s["prefix_cache_hit_rate"] = float(hits / in_tok.sum()) if in_tok.sum() else 0.0
    tot = rec.busy_s or 1.0
    for key, acc in zip(("kv_cache_usage_mean", "kv_token_state_frac", "kv_internal_frag_frac", "kv_reserved_frac",
                         "kv_cached_free_frac", "kv_external_frag_frac"), rec.kv_weighted, strict=True):
        s[key] = acc / tot          # averaged over the engine's busy time
    s["kv_cache_usage_max"] = rec.kv_usage_max
    s["mean_num_running"] = rec.running_weighted / tot
    return s


def offload_summary(replicas: list[Any], duration_s: float) -> dict[str, Any]:
    """KV offloading tiers (sim.kv_offload), summed over replicas; {} when offloading is off.
    Hit rates are over the full prompt blocks looked up past the GPU prefix hit (all requests,
    warm-up included); tokens are blocks x block size."""
    offs = [(r.kv.offload, r.kv.block_size) for r in replicas if getattr(r.kv, "offload", None) is not None]
    if not offs:
        return {}
    bs = offs[0][1]
    cpu_hit = sum(o.num_cpu_hit_blocks for o, _ in offs) * bs
    disk_hit = sum(o.num_disk_hit_blocks for o, _ in offs) * bs
    queried = sum(o.query_blocks for o, _ in offs) * bs
    loads = sum(o.num_loads for o, _ in offs)
    store_bytes = sum(o.store_bytes for o, _ in offs)
    link_bps = [1.0 / o.setup.s_per_byte * o.setup.tensor_parallel_size for o, _ in offs if o.setup.s_per_byte > 0]
    return {
        "kv_offload_cpu_blocks": offs[0][0].setup.cpu_blocks,
        "kv_offload_disk_blocks": offs[0][0].setup.disk_blocks,
        "kv_offload_cpu_hit_tokens": cpu_hit,
        "kv_offload_disk_hit_tokens": disk_hit,
        "kv_offload_query_tokens": queried,
        "kv_offload_cpu_hit_rate": cpu_hit / queried if queried else 0.0,
        "kv_offload_disk_hit_rate": disk_hit / queried if queried else 0.0,
        "kv_offload_prefill_tokens_saved": cpu_hit + disk_hit,
        "kv_offload_load_bytes": sum(o.load_bytes for o, _ in offs),
        "kv_offload_store_bytes": store_bytes,
        "kv_offload_num_loads": loads,
        "kv_offload_mean_load_ms": sum(o.load_wait_s for o, _ in offs) / loads * 1000.0 if loads else 0.0,
        "kv_offload_store_link_utilization": (store_bytes / (sum(link_bps) * duration_s)
                                              if link_bps and duration_s > 0 else 0.0),
    }
