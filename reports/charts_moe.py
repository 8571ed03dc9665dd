"""Mixture-of-experts section: what a step of T tokens reads, and what latent attention saves.

Shown only when the scenario's model is an MoE (`num_experts > 0`).  The model, GPU and engine
are resolved again from the results folder's scenario.yaml; the curves are the datasheet
roofline's (`sim.roofline`, `sim.moe`), the same numbers the run was priced with unless a
calibrated profile replaced them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from reports.data import ReportData
from reports.html import PALETTE, Chart, Section, esc, fmt, style, table_html
from sim.errors import ScenarioError

TOKENS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096, 8192, 16384)


def _resolve(data: ReportData) -> tuple[Any, Any, dict[str, Any]] | None:
    """(ModelSpec, HardwareSpec, engine mapping) of the scenario, or None when not an MoE run."""
    from sim.hardware import load_hardware
    from sim.model_catalog import load_model
    from sim.schema import Ctx
    sc = data.scenario
    if "model" not in sc:
        return None
    ctx = Ctx(str(data.out / "scenario.yaml"))
    try:
        model = load_model(sc["model"], ctx.at("model"))
        hw_raw = sc.get("hardware") or {}
        hw = load_hardware(hw_raw.get("gpu", "H100-SXM"), dict(hw_raw.get("overrides") or {}), ctx.at("hardware"))
    except (ScenarioError, AttributeError, TypeError):
        return None
    if not getattr(model, "num_experts", 0):
        return None
    raw_engine = sc.get("engine")
    engine: dict[str, Any] = raw_engine if isinstance(raw_engine, dict) else {}
    return model, hw, engine


def moe(data: ReportData) -> Section | None:
    resolved = _resolve(data)
    if resolved is None:
        return None
    model, hw, engine = resolved
    from sim.moe import expected_distinct_experts
    from sim.roofline import roofline_profile
    tp = int(engine.get("tensor_parallel_size", 1))
    kv_dtype = str(engine.get("kv_cache_dtype", "auto"))
    ep_on = bool(engine.get("enable_expert_parallel", False))
    e, k = model.num_experts, model.num_experts_per_tok
    fig = go.Figure()
    distinct = [expected_distinct_experts(t, e, k) for t in TOKENS]
    fig.add_trace(go.Scatter(x=TOKENS, y=distinct, name="distinct experts per MoE layer", mode="lines+markers",
                             line={"color": PALETTE[0]}))
    modes = (False, True) if tp > 1 else (False,)
    for i, ep in enumerate(modes):
        prof = roofline_profile(model, hw, tp, kv_dtype, expert_parallel=ep)
        label = "linear layers, " + ("expert parallel" if ep else "experts sliced by TP") + (" (this run)" if ep == ep_on else "")
        fig.add_trace(go.Scatter(x=TOKENS, y=[prof.linear_s(t) * 1000 for t in TOKENS], name=label, yaxis="y2",
                                 mode="lines", line={"color": PALETTE[1 + i], "dash": "solid" if ep == ep_on else "dot"}))
    style(fig, f"{model.name}: experts read and linear-layer time per step", "Tokens in the step (T)",
          f"Expected distinct experts (of {e})")
    fig.update_xaxes(type="log")
    fig.update_layout(yaxis2={"title": "Linear layers per step (ms)", "overlaying": "y", "side": "right",
                              "rangemode": "tozero"})
    half = next((t for t, d in zip(TOKENS, distinct, strict=True) if d >= 0.5 * e), TOKENS[-1])
    reading = (f"One token reads {k} of {e} experts per layer; from about {half} tokens a step on half of them are "
               "read anyway, so decode steps get dearer with the first few dozen sequences and then stay flat "
               "until the expert GEMMs turn compute-bound.")
    steps = data.steps
    if steps is not None and not steps.empty and "num_decode_tokens" in steps:
        tokens = (steps["num_decode_tokens"] + steps.get("num_prefill_tokens", 0)).to_numpy(dtype=float)
        med = float(np.median(tokens[tokens > 0])) if (tokens > 0).any() else 0.0
        if med:
            fig.add_vline(x=med, line={"color": "#555", "dash": "dash"})
            reading += (f" This run's steps carried a median of {med:.0f} tokens "
                        f"({expected_distinct_experts(med, e, k):.0f} experts per layer; dashed line).")
    rows = _facts(model, tp, kv_dtype, ep_on, (data.summary or {}).get("num_gpu_blocks"))
    intro = (f"<p>{esc(model.name)}: {model.num_params / 1e9:.1f}B parameters, {model.num_active_params / 1e9:.1f}B "
             f"active per token; {e} routed experts, top-{k}, in {model.num_moe_layers} of {model.num_layers} layers. "
             "Every expert's weights are resident; a step reads only the experts its tokens are routed to "
             "(expected E·(1−(1−k/E)<sup>T</sup>) per layer, uniform routing).</p>")
    return Section("Mixture of experts", intro, [Chart(fig, reading)],
                   [table_html(rows, caption="Memory per GPU: weights, experts and KV bytes per token")])


def _facts(model: Any, tp: int, kv_dtype: str, ep: bool, blocks: Any) -> pd.DataFrame:
    """Weights and KV bytes per GPU, with what ordinary multi-head K/V would cost for MLA models."""
    gib = float(1 << 30)
    rows: list[tuple[str, str]] = [
        ("weights per GPU", f"{model.weight_bytes(tp, expert_parallel=ep) / gib:.2f} GiB"),
        ("routed experts per GPU per layer",
         f"{model.experts_per_rank(tp)} whole" if ep and tp > 1 else f"{model.num_experts} × 1/{tp} slice"),
        ("KV bytes per token per GPU", fmt(model.kv_bytes_per_token(kv_dtype, tp))),
    ]
    if model.is_mla:
        heads = model.num_attention_heads // tp
        mha = model.num_layers * heads * (model.head_size + model.v_head_dim) * model.kv_dtype_bytes(kv_dtype)
        ratio = mha / model.kv_bytes_per_token(kv_dtype, tp)
        rows.append(("… as ordinary K/V of the same heads (no latent)", f"{fmt(mha)} ({ratio:.1f}× more)"))
        if isinstance(blocks, (int, float)) and blocks > 0:
            rows.append(("KV blocks per GPU (this run) / with ordinary K/V in the same memory",
                         f"{fmt(int(blocks))} / ~{fmt(int(blocks / ratio))}"))
    return pd.DataFrame(rows, columns=["quantity", "value"])
