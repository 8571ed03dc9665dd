"""Speculative decoding's scheduling step and output step for `sim.scheduler_v1.SchedulerV1`.

With `speculative_config` set, the scheduler runs synchronously without PP, so no request is in the
decode set and every running request is explicit; these two functions are the scheduler's
`schedule` and `update_from_output` for that case (vLLM 0.32 `Scheduler.schedule` with
`spec_token_ids`, `update_from_output` with `scheduled_spec_decode_tokens`).  They work on the
scheduler's own state and helpers; the scheduler calls them when `spec` is set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sim.batch import StepBatch, StepOutcome
from sim.request import Request, Status, admit_seq_of_pair
from sim.scheduler_loads import finish_loads
from sim.scheduler_running import preempt_last, schedule_running_literal

if TYPE_CHECKING:
    from sim.scheduler_v1 import SchedulerV1


def schedule_spec(s: SchedulerV1) -> StepBatch:
    """`schedule` with speculative decoding (synchronous, no PP, so nobody is in the decode set
    and every running request is explicit): the same decisions as the general path, in one
    pass per phase.  Demands (`sim.scheduler_running.demand` with the drafts), the KV blocks each needs for its
    tokens plus the drafter's lookahead (`schedule_running_regular`) and whether it fills a
    block to cache are worked out in one loop over the running list; the batch shape and
    `_update_after_schedule` (who samples, with how many drafts) in another.  Demands are kept
    as two parallel lists (no tuple per request per step)."""
    lim = s.limits
    batch = StepBatch()
    kv = s.kv
    budget = lim.max_num_batched_tokens
    if s.loading:
        finish_loads(s)
    thr = lim.long_prefill_token_threshold if len(s.running_map) + len(s.waiting) > 1 else 0
    mml = lim.max_model_len
    la = s.lookahead
    bs = kv.block_size
    caching = kv.enable_caching
    reqs: list[Request] = []                    # the running requests scheduled, in running-list order
    ds: list[int] = []                          # their new tokens
    needs: list[tuple[int, int, Request]] = []  # (admission order, blocks, request) of those needing blocks
    to_cache: list[tuple[Request, int]] = []    # requests whose tokens fill a block to cache
    total = 0
    nblocks_needed = 0
    computed = 0                                # the explicit requests' computed tokens (for kv_state)
    counted = True                              # ... unless a rare path below changes them otherwise
    s.explicit_computed_clock = -1
    for r in s.explicit.values():
        comp = r.num_computed
        computed += comp
        ntok = r.num_prompt_tokens + r.num_output      # (ph is 0: synchronous scheduling)
        d = ntok - comp + r.num_spec_tokens
        if 0 < thr < d:
            d = thr
        if d > mml - 1 - comp:
            d = mml - 1 - comp
        if d <= 0:
            continue
        reqs.append(r)
        ds.append(d)
        total += d
        end = comp + d
        slots = end + la
        if slots > mml:
            slots = mml
        k = (slots + bs - 1) // bs - r.nblocks
        if k > 0:
            needs.append((r.admit_seq, k, r))
            nblocks_needed += k
        if caching:
            n = end if end < ntok else ntok
            if n // bs > r.num_cached_blocks:
                to_cache.append((r, n))
    if total > budget:
        lit = schedule_running_literal(s, batch, budget, thr)
        reqs = [r for r, _ in lit]
        ds = [d for _, d in lit]
        counted = False                         # (a rare path: kv_state walks the requests)
    else:
        pool = kv.pool
        if needs and nblocks_needed <= pool.nfree:
            if len(needs) > 1:
                needs.sort()                    # by admission order (unique: no tie reaches the request)
            if nblocks_needed == len(needs):
                kv.append_blocks([r for _, _, r in needs])   # one block each, in order (pop_few)
            else:
                for _, k, r in needs:
                    kv.append_blocks_n(r, k)
            for r, n in to_cache:
                kv.cache_blocks(r, n)
        elif needs:
            if len(needs) > 1:
                needs.sort()
            for _, k, r in needs:
                if r.status is not Status.RUNNING:
                    continue               # preempted as a tail victim earlier in this loop
                stop = False
                while pool.nfree < k:
                    if preempt_last(s, batch) is r:
                        stop = True
                        break
                if stop:
                    break
                kv.append_blocks_n(r, k)
            counted = False                     # preemptions (rare): kv_state walks the requests
            alive = [i for i in range(len(reqs)) if reqs[i].status is Status.RUNNING]
            reqs = [reqs[i] for i in alive]
            ds = [ds[i] for i in alive]
            for r, n in to_cache:
                if r.status is Status.RUNNING:
                    kv.cache_blocks(r, n)
        else:
            for r, n in to_cache:
                kv.cache_blocks(r, n)
    if s.record_schedule:
        batch.scheduled.extend(sorted(zip(reqs, ds, strict=True), key=admit_seq_of_pair))
    # shape (before the update: a decode verifying drafts attends to its context + 1 + drafts)
    # and _update_after_schedule for the running requests
    samplers = batch.samplers
    spec_drafts = batch.spec_drafts
    used = 0
    n_dec = batch.num_decode_tokens
    n_spec = batch.num_spec_tokens
    dec_ctx = batch.decode_ctx_tokens
    n_pre = batch.num_prefill_tokens
    n_pre_seqs = batch.num_prefill_seqs
    pairs = batch.prefill_pairs
    ctx = 0
    for i in range(len(reqs)):
        r = reqs[i]
        d = ds[i]
        comp = r.num_computed
        ntok = r.num_prompt_tokens + r.num_output
        used += d
        if d == 1 or comp + 1 == ntok:          # a decode (see StepBatch.add_spec_decode / add_shape)
            n_dec += 1
            n_spec += d - 1
            dec_ctx += comp + d
        else:
            n_pre += d
            n_pre_seqs += 1
            pairs += d * (comp + (d + 1) / 2)
        comp += d
        r.num_computed = comp
        if comp >= ntok:
            samplers.append(r)
            spec_drafts.append(comp - ntok)
            ctx += comp
        r.num_spec_tokens = 0                   # used up: new ones come with the step's output
    batch.num_decode_tokens = n_dec
    batch.num_spec_tokens = n_spec
    batch.decode_ctx_tokens = dec_ctx
    batch.num_prefill_tokens = n_pre
    batch.num_prefill_seqs = n_pre_seqs
    batch.prefill_pairs = pairs
    computed += used
    if not batch.preempted:
        for r, d in s._admit_waiting(batch, budget - used, thr):   # shape added there
            comp = r.num_computed + d
            r.num_computed = comp
            computed += comp
            ntok = r.num_prompt_tokens + r.num_output
            if comp >= ntok:
                samplers.append(r)
                spec_drafts.append(comp - ntok)
                ctx += comp
            r.num_spec_tokens = 0
    batch.num_draft_seqs = len(samplers)     # the proposer drafts for every sampler this step
    batch.draft_ctx_tokens = ctx
    s.clock += 1
    batch.clock_after = s.clock
    if counted and not batch.preempted and not s.loading:
        s.explicit_computed = computed
        s.explicit_computed_clock = s.clock
    s.inflight.append(batch)
    return batch


def update_from_output_spec(s: SchedulerV1, batch: StepBatch, now_s: float) -> StepOutcome:
    """Spec decode (synchronous): each sampler's drafts are accepted or rejected
    (the `SpecDecoder`'s draws), `num_computed` rolls back by the rejected ones, the request gets
    accepted + 1 tokens (capped at max_tokens) as one chunk (one ITL gap, as
    `vllm bench serve` sees a streamed chunk), and k new drafts unless it finished."""
    spec = s.spec
    assert spec is not None
    s.inflight.remove(batch)
    s.upd = batch.clock_after
    prev_s = s.last_update_s        # a token then: its gap is the step's duration (counted, not kept)
    s.last_update_s = now_s
    num_uniform = 0
    first: list[Request] = []
    finished: list[Request] = []
    gaps: list[float] = []
    k = spec.k
    buf = spec.buf                         # accepted lengths of full k-drafts, drawn in chunks
    pos = spec.pos
    step_hist = [0] * (k + 1)              # this step's drafts by accepted length, added to the run's
    ntok = 0                               # histogram at the end (small counts: no big-int churn per draft)
    nver = 0
    nemit = 0
    ndraft_tokens = 0
    nbuf = len(buf)
    running = Status.RUNNING
    samplers = batch.samplers
    spec_drafts = batch.spec_drafts
    assert len(samplers) == len(spec_drafts)
    for i in range(len(samplers)):      # (indexing: mypyc's fast zip takes no strict=)
        r = samplers[i]
        drafted = spec_drafts[i]
        if r.status is not running:
            continue
        out = r.num_output
        room = r.max_tokens - out
        if drafted:
            if pos >= nbuf:
                spec.refill()
                buf = spec.buf
                nbuf = len(buf)
                pos = 0
            acc = buf[pos]
            pos += 1
            if acc > drafted:          # a draft cut short accepts a prefix of a full one
                acc = drafted
            step_hist[acc] += 1
            ndraft_tokens += drafted
            if r.num_computed > 0:
                r.num_computed -= drafted - acc
            emit = acc + 1 if acc < room else room
            nver += 1
            nemit += emit
        else:
            emit = 1 if room > 1 else room
        if out == 0:
            first.append(r)
        out += emit
        r.num_output = out
        ntok += emit
        last = r.last_token_s
        if last == prev_s and last >= 0.0:
            num_uniform += 1
        elif last >= 0.0:
            gaps.append(now_s - last)
        r.last_token_s = now_s
        if out >= r.max_tokens:
            s._finish(r, finished)
        else:
            r.num_spec_tokens = k          # update_draft_token_ids: k drafts for the next step
    spec.pos = pos
    if nver:
        hist = spec.accepted_hist
        for j in range(k + 1):
            hist[j] += step_hist[j]
    spec.num_draft_tokens += ndraft_tokens
    spec.end_step(nver, nemit)
    return StepOutcome(first, finished, itl_gaps_s=np.asarray(gaps) if gaps else None,
                       num_uniform_gaps=num_uniform, num_tokens=ntok)
