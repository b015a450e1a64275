"""Scenarios small enough to work out by hand; both engines must reproduce them to the nanosecond.

Common set-up (tests/conftest.py): 2 MoE layers x 4 experts, top-2, experts of 6 bytes.
One expert copy takes 1.0 s (latency 0, 6 B/s), one copy engine; an expert FFN takes 0.5 s for
1 token and 0.75 s for 2 tokens; the dense part of a layer takes 0.25 s; no other overhead.
"""

from __future__ import annotations

import pytest

from emu.engines.setup import StackChoice, make_inputs
from emu.metrics import build_result

from .conftest import hand_profile, hand_runtime, make_trace, tiny_model
from .policy_support import stack

EXPERT = 6  # bytes


def run(engine, trace, slots: int, runtime=None, **profile_kw):
    """`runtime`: host costs (a dict of emu.runtime_profile.HOST_KEYS) of the runtime profile; none: no host."""
    inputs = make_inputs(tiny_model(), hand_profile(**profile_kw), trace, slots * EXPERT, StackChoice(),
                         runtime=hand_runtime(**(runtime or {})))
    cs, end, timings = engine(inputs)
    return build_result(cs, end, trace, "x", timings).to_dict(), cs


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_cold_decode_pass(engines, engine_name):
    # One decode token; layer 0 needs {0, 1}, layer 1 needs {2, 3}; 4 slots: all compulsory misses.
    # L0: dense [0, .25]; copies 0 [.25, 1.25], 1 [1.25, 2.25] (one engine, FIFO);
    #     compute 0 [1.25, 1.75], 1 [2.25, 2.75]; the GPU stalls .25->1.25 and 1.75->2.25 = 1.5 s.
    # L1: dense [2.75, 3]; copies 2 [3, 4], 3 [4, 5]; compute 2 [4, 4.5], 3 [5, 5.5]; stall 1.5 s.
    trace = make_trace([[[[0, 1], [2, 3]]]])
    r, _ = run(engines[engine_name], trace, slots=4)
    assert r["e2e_s"] == pytest.approx(5.5, abs=1e-9)
    assert r["ttft_s"] == pytest.approx(5.5, abs=1e-9)
    assert r["misses_compulsory"] == 4 and r["hits"] == 0 and r["accesses"] == 4
    assert r["stall_s"] == pytest.approx(3.0, abs=1e-9)
    assert r["bytes_h2d"] == 4 * EXPERT
    assert r["compute_busy_frac"] == pytest.approx(2.5 / 5.5, abs=1e-12)
    assert r["copy_busy_frac"] == pytest.approx(4.0 / 5.5, abs=1e-12)


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_the_links_sustained_ratio_stretches_every_copy(engines, engine_name):
    # test_cold_decode_pass with copies at 1.5 s (profile copy.sustained_ratio = 1.5):
    # L0: dense [0, .25]; copies 0 [.25, 1.75], 1 [1.75, 3.25]; compute 0 [1.75, 2.25], 1 [3.25, 3.75].
    # L1: dense [3.75, 4]; copies 2 [4, 5.5], 3 [5.5, 7]; compute 2 [5.5, 6], 3 [7, 7.5].
    trace = make_trace([[[[0, 1], [2, 3]]]])
    r, _ = run(engines[engine_name], trace, slots=4, sustained_ratio=1.5)
    assert r["e2e_s"] == pytest.approx(7.5, abs=1e-9)
    assert r["copy_busy_frac"] == pytest.approx(6.0 / 7.5, abs=1e-12)


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_warm_second_pass_hits(engines, engine_name):
    # The same token routing twice: pass 0 as above ends at 5.5. Pass 1 hits everything:
    # dense [5.5, 5.75], experts [5.75, 6.75], dense [6.75, 7], experts [7, 8]. TPOT = 2.5 s.
    tok = [[0, 1], [2, 3]]
    trace = make_trace([[tok], [tok]])
    r, _ = run(engines[engine_name], trace, slots=4)
    assert r["e2e_s"] == pytest.approx(8.0, abs=1e-9)
    assert r["ttft_s"] == pytest.approx(5.5, abs=1e-9)
    assert r["tpot_s"] == pytest.approx(2.5, abs=1e-9)
    assert r["decode_tok_per_s"] == pytest.approx(0.4, abs=1e-12)
    assert (r["hits"], r["misses_compulsory"], r["misses_capacity"]) == (4, 4, 0)
    assert r["hit_rate"] == pytest.approx(0.5)


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_capacity_and_collision_misses(engines, engine_name):
    # 2 slots, the same routing twice, LRU.
    # Pass 0: L0 copies 0, 1 fill both slots. L1 gate at 3.0: 2 evicts 0 (LRU), 3 evicts 1;
    #   copies 2 [3, 4], 3 [4, 5]; compute [4, 4.5], [5, 5.5].
    # Pass 1 (from 5.5): L0 gate at 5.75: 0 and 1 were evicted in pass 0 -> capacity misses; they
    #   evict 2 and 3 (evicted in pass 1). Copies [5.75, 6.75], [6.75, 7.75]; compute [6.75, 7.25],
    #   [7.75, 8.25]. L1 gate at 8.5: 2 and 3 were evicted in this same pass -> collision misses;
    #   copies [8.5, 9.5], [9.5, 10.5]; compute [9.5, 10], [10.5, 11].
    tok = [[0, 1], [2, 3]]
    trace = make_trace([[tok], [tok]])
    r, _ = run(engines[engine_name], trace, slots=2)
    assert r["e2e_s"] == pytest.approx(11.0, abs=1e-9)
    assert (r["misses_compulsory"], r["misses_capacity"], r["misses_collision"]) == (4, 2, 2)
    assert r["evictions"] == 6
    assert r["per_layer"][1]["misses_collision"] == 2 and r["per_layer"][0]["misses_collision"] == 0


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_prefill_queueing_and_token_counts(engines, engine_name):
    # A 2-token prefill pass. Layer 0: token A uses {0, 1}, token B {1, 2}: expert 1 serves 2 tokens.
    # Copies queue on the single engine: 0 [.25, 1.25], 1 [1.25, 2.25], 2 [2.25, 3.25].
    # Compute: 0 (1 token) [1.25, 1.75], 1 (2 tokens) [2.25, 3.0], 2 [3.25, 3.75].
    # Layer 1: both tokens use {0, 1} of layer 1 (other keys than layer 0's): dense [3.75, 4];
    # copies [4, 5], [5, 6]; compute (2 tokens each) [5, 5.75], [6, 6.75].
    # Stall: .25->1.25, 1.75->2.25, 3->3.25 in L0 (1.75 s); 4->5, 5.75->6 in L1 (1.25 s).
    trace = make_trace([[[[0, 1], [0, 1]], [[1, 2], [0, 1]]]], phases=[0])
    r, _ = run(engines[engine_name], trace, slots=4)
    assert r["ttft_s"] == pytest.approx(6.75, abs=1e-9)
    assert r["e2e_s"] == pytest.approx(6.75, abs=1e-9)
    assert (r["accesses"], r["hits"], r["misses_compulsory"]) == (5, 0, 5)
    assert r["per_layer"][0]["stall_s"] == pytest.approx(1.75, abs=1e-9)
    assert r["per_layer"][1]["stall_s"] == pytest.approx(1.25, abs=1e-9)


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_demand_copy_waits_for_a_victim(engines, engine_name):
    # 1 slot for top-2: the thrash zone. L0 needs {0, 1}: 0 takes the slot [.25, 1.25]; 1 finds no
    # victim (0 is needed by the layer) and waits. 0 computes [1.25, 1.75]; then 0 is evictable:
    # copy 1 [1.75, 2.75], compute [2.75, 3.25]. L1: dense [3.25, 3.5]; 2 evicts 1: [3.5, 4.5];
    # 3 waits; compute 2 [4.5, 5]; copy 3 [5, 6]; compute 3 [6, 6.5].
    trace = make_trace([[[[0, 1], [2, 3]]]])
    r, _ = run(engines[engine_name], trace, slots=1)
    assert r["e2e_s"] == pytest.approx(6.5, abs=1e-9)
    assert r["demand_waits"] == 2
    assert r["misses_compulsory"] == 4


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_two_engines_overlap_copies(engines, engine_name):
    # With 2 copy engines the two copies of a layer run together: L0 copies [.25, 1.25] both;
    # compute 0 [1.25, 1.75], 1 [1.75, 2.25]; L1 dense [2.25, 2.5], copies [2.5, 3.5],
    # compute [3.5, 4], [4, 4.5].
    trace = make_trace([[[[0, 1], [2, 3]]]])
    r, _ = run(engines[engine_name], trace, slots=4, engines=2)
    assert r["e2e_s"] == pytest.approx(4.5, abs=1e-9)
    assert r["copy_busy_frac"] == pytest.approx(4.0 / (2 * 4.5), abs=1e-12)


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_copy_landing_mid_run_goes_before_higher_ids(engines, engine_name):
    # Copies take 0.25 s. Pass 0 (1 token): L0 {0, 2}, L1 {0, 1}, all cold: dense [0, .25], copies
    # [.25, .5], [.5, .75]; experts [.5, 1], [1, 1.5]; L1 dense [1.5, 1.75], copies [1.75, 2], [2, 2.25];
    # experts [2, 2.5], [2.5, 3]. Pass 1 (2 tokens: {0, 2} and {1, 2} at L0, {0, 1} twice at L1):
    # dense [3, 3.25]; at the gate 0 and 2 are resident, 1 misses: copy [3.25, 3.5]. Expert 0 runs
    # [3.25, 3.75]; 1 landed meanwhile and has the lower id, so it runs before 2: [3.75, 4.25], then 2
    # (2 tokens) [4.25, 5], L1 dense [5, 5.25], all hits with 2 tokens: [5.25, 6], [6, 6.75].
    # (Starting 2 right after 0, as if it were decided at the gate, would give the same end time but
    # the GPU order 0, 2, 1: the timeline below tells them apart.)
    from emu.engines.des.engine import run_des
    from emu.engines.des.timeline import TimelineRecorder

    trace = make_trace([[[[0, 2], [0, 1]]], [[[0, 2], [0, 1]], [[1, 2], [0, 1]]]], phases=[1, 0])
    inputs = make_inputs(tiny_model(), hand_profile(copy_s=0.25), trace, 8 * EXPERT, StackChoice())
    cs, end, _ = engines[engine_name](inputs)
    assert end == pytest.approx(6.75, abs=1e-9)
    assert cs.pass_end[0] == pytest.approx(3.0, abs=1e-9)
    if engine_name == "des":
        recorder = TimelineRecorder((1, None))
        run_des(inputs, recorder)
        gpu = sorted((e["ts"] / 1e6, e["name"], e["dur"] / 1e6) for e in recorder.chrome_trace()["traceEvents"]
                     if e.get("ph") == "X" and e["tid"] == 1)
        want = [(3.0, "dense L0", 0.25), (3.25, "expert L0 E0", 0.5), (3.75, "expert L0 E1", 0.5),
                (4.25, "expert L0 E2", 0.75), (5.0, "dense L1", 0.25), (5.25, "expert L1 E0", 0.75),
                (6.0, "expert L1 E1", 0.75)]
        assert [g[1] for g in gpu] == [w[1] for w in want]
        for g, w in zip(gpu, want):
            assert (g[0], g[2]) == pytest.approx((w[0], w[2]), abs=1e-12)


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_copy_issue_host_cost(engines, engine_name):
    # runtime copy_s = 0.6: each copy issued at t keeps the host busy until max(busy, t) + 0.6, and a GPU
    # job starts no earlier (a Python runtime issues copies on the thread that launches the compute).
    # Pass 0 (4 slots, cold): L0 gate at .25 issues 0 and 1 -> host busy to 1.45; copy 0 lands 1.25, so
    #   expert 0 runs [1.45, 1.95] (not [1.25, 1.75]); copy 1 [1.25, 2.25] -> expert 1 [2.25, 2.75].
    #   L1: dense [2.75, 3], gate issues 2, 3 -> host to 4.2; expert 2 [4.2, 4.7]; copy 3 lands 5 ->
    #   [5, 5.5]: the pass still ends at 5.5 (the host cost hid behind the copies but for expert 0).
    # Pass 1, L0 needs {0, 2}: 0 hits, 2 misses (evicts expert 1, the LRU one) -> host busy 5.75 -> 6.35:
    #   the hit runs [6.35, 6.85] instead of [5.75, 6.25]; copy 2 [5.75, 6.75]; expert 2 [6.85, 7.35];
    #   L1 dense [7.35, 7.6], hits [7.6, 8.1], [8.1, 8.6]. Without the cost the run ends at 8.5.
    trace = make_trace([[[[0, 1], [2, 3]]], [[[0, 2], [2, 3]]]])
    r, _ = run(engines[engine_name], trace, slots=4, runtime={"copy_s": 0.6})
    assert r["ttft_s"] == pytest.approx(5.5, abs=1e-9)
    assert r["e2e_s"] == pytest.approx(8.6, abs=1e-9)
    base, _ = run(engines[engine_name], trace, slots=4)
    assert base["e2e_s"] == pytest.approx(8.5, abs=1e-9)
    assert (r["hits"], r["misses_compulsory"], r["evictions"]) == (base["hits"], 5, base["evictions"])


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_a_prefill_pass_charges_its_own_copy_issue_time(engines, engine_name):
    # the trace above with pass 0 a prefill. prefill_copy_s = 3.0: L0's gate at .25 issues 0 and 1 ->
    #   host busy to 6.25: experts 0 [6.25, 6.75], 1 [6.75, 7.25]; L1 dense [7.25, 7.5], gate issues 2, 3 ->
    #   host to 13.5: experts [13.5, 14], [14, 14.5]: TTFT 14.5.
    # The decode pass with copy_s = 0: L0 dense [14.5, 14.75], hit 0 [14.75, 15.25], copy 2 [14.75, 15.75],
    #   expert 2 [15.75, 16.25], L1 dense [16.25, 16.5], hits to 17.5: TPOT 3.0; with copy_s = 0.6 the
    #   hit waits for the host (15.35) and the pass ends at 17.6: TPOT 3.1.
    trace = make_trace([[[[0, 1], [2, 3]]], [[[0, 2], [2, 3]]]], phases=[0, 1])
    engine = engines[engine_name]
    r, _ = run(engine, trace, slots=4, runtime={"copy_s": 0.0, "prefill_copy_s": 3.0})
    assert (r["ttft_s"], r["tpot_s"]) == pytest.approx((14.5, 3.0), abs=1e-9)
    r, _ = run(engine, trace, slots=4, runtime={"copy_s": 0.6, "prefill_copy_s": 3.0})
    assert (r["ttft_s"], r["tpot_s"]) == pytest.approx((14.5, 3.1), abs=1e-9)
    # without the prefill key a prefill pays the decode pass's time (test_copy_issue_host_cost's 5.5, 3.1)
    r, _ = run(engine, trace, slots=4, runtime={"copy_s": 0.6})
    assert (r["ttft_s"], r["tpot_s"]) == pytest.approx((5.5, 3.1), abs=1e-9)


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_counts_by_phase(engines, engine_name):
    # The prefill (L0 {0, 1}, L1 {2, 3}; 4 slots) misses all 4, compulsory; the decode pass (L0 {0, 2}, L1 {2, 3})
    # hits 0 at L0 and both at L1, and misses L0's expert 2, first referenced: 4 accesses, 3 hits, 1 miss.
    trace = make_trace([[[[0, 1], [2, 3]]], [[[0, 2], [2, 3]]]], phases=[0, 1])
    r, _ = run(engines[engine_name], trace, slots=4)
    pre, dec = r["by_phase"]["prefill"], r["by_phase"]["decode"]
    assert (pre["accesses"], pre["hits"], pre["misses"], pre["hit_rate"]) == (4, 0, 4, 0.0)
    assert (dec["accesses"], dec["hits"], dec["misses"], dec["hit_rate"]) == (4, 3, 1, 0.75)
    assert pre["misses_collision"] == dec["misses_collision"] == 0 and r["hits"] == 3
    assert r["per_request_decode_tok_per_s"] == [pytest.approx(1.0 / r["tpot_s"])]  # one request, one token


HOST = {"pass_s": 0.5, "layer_s": 1.0, "readback_s": 0.1, "gate_s": 0.15, "expert_s": 0.3, "copy_s": 0.2}


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_the_host_rule_device_paced_experts(engines, engine_name):
    # The host rule: a job the host launches from L for h seconds starts once the host began (L) and the GPU
    # is free, and ends no sooner than L + h; the routing readback and the decisions (readback_s + gate_s =
    # 0.25) follow a layer's dense part, the GPU idle. Two decode passes of L0 {0, 1}, L1 {2, 3}; 8 slots.
    # Pass 0: pass_s: the host launches from 0.5, the GPU waits [0, .5]. L0 dense launched from .5 for 1.0:
    #   ends max(.5 + .25, .5 + 1.0) = 1.5, readback to 1.75. Gate 1.75 issues copies 0, 1 (host to 1.95, 2.15);
    #   copies [1.75, 2.75], [2.75, 3.75]; the host launches expert 0 at 2.15, expert 1 at 2.45 (cursor 2.75):
    #   experts run when their copies land, [2.75, 3.25], [3.75, 4.25]. L1 dense launched at 2.75 (long done):
    #   [4.25, 4.5], readback to 4.75; copies 2, 3 [4.75, 5.75], [5.75, 6.75]; experts [5.75, 6.25],
    #   [6.75, 7.25]: TTFT 7.25.
    # Pass 1 (all hits) at 7.25: pre [7.25, 7.75]; L0 dense ends 7.75 + 1.0, readback 9.0; experts launched at
    #   9.0 and 9.3 run [9.0, 9.5], [9.5, 10.0] (device-paced); L1 dense launched from 9.6 ends no sooner than
    #   10.6, readback 10.85; experts [10.85, 11.35], [11.35, 11.85]: TPOT 4.6.
    # The GPU waits for the host: .5 + 1.0 + .25 (pass 0), .5 + 1.0 + .6 (pass 1) = 3.85 s.
    trace = make_trace([[[[0, 1], [2, 3]]], [[[0, 1], [2, 3]]]])
    r, _ = run(engines[engine_name], trace, slots=8, runtime=HOST)
    assert (r["ttft_s"], r["tpot_s"]) == pytest.approx((7.25, 4.6), abs=1e-9)
    assert r["host_wait_s"] == pytest.approx(3.85, abs=1e-9)
    assert [layer["host_wait_s"] for layer in r["per_layer"]] == pytest.approx([3.0, 0.85], abs=1e-9)
    assert r["compute_busy_frac"] == pytest.approx(5.0 / 11.85, abs=1e-12)  # the device's own work only
    assert r["stall_s"] == pytest.approx(3.0, abs=1e-9)  # waits for copies: 1.0 + 0.5 in each layer of pass 0


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_the_host_rule_host_paced_experts(engines, engine_name):
    # The case above with expert_s = 0.8 > the expert's 0.5 on the device: the experts follow the host.
    # Pass 0: as above to L0's experts ([2.75, 3.25], [3.75, 4.25]: the copies are later than the launches at
    #   2.15 and 2.95); L1 dense launched from 3.75 ends no sooner than 4.75, readback 5.0; copies 2, 3
    #   [5, 6], [6, 7]; experts launched at 5.4 and 6.2 run [6, 6.5], [7, 7.5]: TTFT 7.5.
    # Pass 1 at 7.5, hits only: the host sets the pace: .5 + (1.0 + .25) + 2 x .8 + (1.0 + .25) + 2 x .8 = 6.2.
    trace = make_trace([[[[0, 1], [2, 3]]], [[[0, 1], [2, 3]]]])
    r, _ = run(engines[engine_name], trace, slots=8, runtime=dict(HOST, expert_s=0.8))
    assert (r["ttft_s"], r["tpot_s"]) == pytest.approx((7.5, 6.2), abs=1e-9)
    # and a runtime that adds nothing is the device alone: pass 0 5.5 (test_cold_decode_pass), pass 1 2.5
    r, _ = run(engines[engine_name], trace, slots=8, runtime={k: 0.0 for k in HOST})
    assert (r["ttft_s"], r["tpot_s"], r["host_wait_s"]) == pytest.approx((5.5, 2.5, 0.0), abs=1e-9)


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_the_host_launches_a_dense_layer_before_the_gpu_needs_it(engines, engine_name):
    # A layer that waits for copies hides the next dense part's launch: L0's experts wait for their copies
    # until 4.25 while the host launched L1's dense part from 2.75 to 3.75 (layer_s = 1.0): L1's dense part
    # then takes only the device's 0.25 (test_the_host_rule_device_paced_experts, pass 0): TTFT 7.25.
    # With layer_s = 2.0: L0's dense part ends at .5 + 2.0 = 2.5 (one second later), everything after moves by
    # 1.0, and L1's launch (from 3.75 to 5.75) now ends after L0's experts (5.25): L1's dense part takes 0.5
    # instead of 0.25: TTFT 7.25 + 1.0 + 0.25.
    trace = make_trace([[[[0, 1], [2, 3]]]])
    r, _ = run(engines[engine_name], trace, slots=8, runtime=HOST)
    assert r["ttft_s"] == pytest.approx(7.25, abs=1e-9)
    r, _ = run(engines[engine_name], trace, slots=8, runtime=dict(HOST, layer_s=2.0))
    assert r["ttft_s"] == pytest.approx(7.25 + 1.0 + 0.25, abs=1e-9)


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_a_prefill_pass_launches_and_decides_at_its_own_host_prices(engines, engine_name):
    # The device-paced case above (TTFT 7.25, TPOT 4.6) with pass 0 a prefill.
    # prefill_layer_s = 2.0: pass 0 is test_the_host_launches_a_dense_layer_before_the_gpu_needs_it's with
    #   layer_s = 2.0: TTFT 7.25 + 1.0 + 0.25 = 8.5; the decode pass keeps layer_s = 1.0: TPOT 4.6.
    # prefill_gate_s = 0.65 (readback + gate 0.75 in the prefill): L0 dense ends 1.5, gate at 2.25 issues copies
    #   0, 1 (host to 2.45, 2.65), copies [2.25, 3.25], [3.25, 4.25]; experts launched 2.65 and 2.95 (cursor 3.25)
    #   run [3.25, 3.75], [4.25, 4.75]; L1 dense launched from 3.25 to 4.25 runs [4.75, 5.0], gate at 5.75:
    #   copies [5.75, 6.75], [6.75, 7.75]; experts [6.75, 7.25], [7.75, 8.25]: TTFT 8.25; TPOT 4.6.
    trace = make_trace([[[[0, 1], [2, 3]]], [[[0, 1], [2, 3]]]], phases=[0, 1])
    engine = engines[engine_name]
    r, _ = run(engine, trace, slots=8, runtime=HOST)  # unset: the decode pass's prices
    assert (r["ttft_s"], r["tpot_s"]) == pytest.approx((7.25, 4.6), abs=1e-9)
    r, _ = run(engine, trace, slots=8, runtime=dict(HOST, prefill_layer_s=2.0))
    assert (r["ttft_s"], r["tpot_s"]) == pytest.approx((8.5, 4.6), abs=1e-9)
    r, _ = run(engine, trace, slots=8, runtime=dict(HOST, prefill_gate_s=0.65))
    assert (r["ttft_s"], r["tpot_s"]) == pytest.approx((8.25, 4.6), abs=1e-9)
    r, _ = run(engine, trace, slots=8, runtime=dict(HOST, prefill_readback_s=0.6, prefill_gate_s=0.15))
    assert r["ttft_s"] == pytest.approx(8.25, abs=1e-9)  # the readback and the decisions add alike


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_a_decode_pass_of_several_tokens_launches_its_experts_at_the_batch_price(engines, engine_name):
    # The device-paced case's pass 0 (one token, TTFT 7.25), then a decode pass of two tokens, both at L0 {0, 1}
    # and L1 {2, 3}, every access a hit; an expert of two tokens takes 0.75 s on the device.
    # batch_expert_s unset (expert_s = 0.3): from 7.25, pre to 7.75; L0 dense ends 8.75, readback 9.0; experts
    #   launched at 9.0 and 9.3 run [9.0, 9.75], [9.75, 10.5]; L1 dense launched from 9.6 ends max(10.75, 10.6),
    #   readback 11.0; experts [11.0, 11.75], [11.75, 12.5]: the run ends at 12.5.
    # batch_expert_s = 0.9 (> 0.75: host-paced): L0's experts launched at 9.0 and 9.9 end no sooner than 9.9
    #   and 10.8; L1 dense launched from 10.8 ends 11.8, readback 12.05; experts end 12.95 and 13.85.
    #   The one-token pass keeps expert_s: TTFT 7.25 either way.
    trace = make_trace([[[[0, 1], [2, 3]]], [[[0, 1], [2, 3]], [[0, 1], [2, 3]]]])
    engine = engines[engine_name]
    r, _ = run(engine, trace, slots=8, runtime=HOST)
    assert (r["ttft_s"], r["e2e_s"]) == pytest.approx((7.25, 12.5), abs=1e-9)
    r, _ = run(engine, trace, slots=8, runtime=dict(HOST, batch_expert_s=0.9))
    assert (r["ttft_s"], r["e2e_s"]) == pytest.approx((7.25, 13.85), abs=1e-9)
    # and a price for one-token passes alone leaves the batched pass at batch_expert_s
    r, _ = run(engine, trace, slots=8, runtime=dict(HOST, expert_s=0.0, batch_expert_s=0.9))
    assert r["e2e_s"] - r["ttft_s"] == pytest.approx(13.85 - 7.25, abs=1e-9)


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_a_prefetch_policys_gate_work_is_charged_to_every_gate_of_a_prefetching_stack(engines, engine_name):
    # The device-paced case (TPOT 4.6, every access of pass 1 a hit) with the oracle prefetching: in pass 1 it
    # names layer 1's experts at layer 0's gate, all resident, so it issues nothing; prefetch_gate_s = 0.4 then
    # delays each of the two gates, the GPU idle meanwhile: TPOT 4.6 + 2 x 0.4. Without a prefetch policy the
    # key costs nothing.
    trace = make_trace([[[[0, 1], [2, 3]]], [[[0, 1], [2, 3]]]])
    engine = engines[engine_name]

    def go(prefetch: str, **kw):
        inputs = make_inputs(tiny_model(), hand_profile(), trace, 8 * EXPERT, stack(prefetch=prefetch),
                             runtime=hand_runtime(**HOST, **kw))
        cs, end, timings = engine(inputs)
        return build_result(cs, end, trace, "x", timings).to_dict()

    assert go("none", prefetch_gate_s=0.4)["tpot_s"] == pytest.approx(4.6, abs=1e-9)
    base, slow = go("oracle"), go("oracle", prefetch_gate_s=0.4)
    assert base["tpot_s"] == pytest.approx(4.6, abs=1e-9)
    assert slow["tpot_s"] == pytest.approx(4.6 + 0.8, abs=1e-9)
    assert slow["prefetch_issued"] == base["prefetch_issued"] and slow["hits"] == base["hits"]


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_prefetch_issue_host_cost_is_charged_to_prefetch_copies_only(engines, engine_name):
    # the oracle prefetches layer 1's experts at layer 0's gate; demand copies keep copy_s
    trace = make_trace([[[[0, 1], [2, 3]]], [[[0, 2], [1, 3]]], [[[3, 1], [0, 2]]]])
    engine = engines[engine_name]

    def go(prefetch: str, **kw):
        inputs = make_inputs(tiny_model(), hand_profile(), trace, 5 * EXPERT, stack(prefetch=prefetch),
                             runtime=hand_runtime(**kw))
        cs, end, timings = engine(inputs)
        out = build_result(cs, end, trace, "x", timings).to_dict()
        out.pop("timings")  # the emulator's own wall time
        return out

    # no prefetch: the prefetch cost changes nothing
    assert go("none", copy_s=0.2, prefetch_s=0.9) == go("none", copy_s=0.2)
    base = go("oracle", copy_s=0.2)
    assert base["prefetch_issued"] > 0
    assert go("oracle", copy_s=0.2, prefetch_s=0.2) == base  # unset: the copy issue time
    slow = go("oracle", copy_s=0.2, prefetch_s=0.9)
    assert slow["e2e_s"] > base["e2e_s"] + 0.5  # the host issues each prefetch for 0.9 s before any launch
    for key in ("misses_compulsory", "evictions", "prefetch_issued", "bytes_h2d"):
        assert slow[key] == base[key]
    # the same decisions at the gates; the host's 0.9 s per prefetch delays the gates, so more of the prefetched
    # copies have landed by the gate that needs them: the same hits, more of them on time
    assert slow["hits"] + slow["late_prefetch_hits"] == base["hits"] + base["late_prefetch_hits"]
    assert slow["hits"] > base["hits"]


# ---- a runtime that runs a layer's experts as one grouped GEMM (runtime experts = "fused") -------------------
# The profile's fused table: 0.6 s for one distinct expert, 0.8 s for two, 1.2 s for four. Each GPU entry of a
# layer takes an equal share, fused(k) / k, and none starts before every expert of the layer is in. The
# reference engine runs these too (tests/test_engine_reference.py).

FUSED = (0.6, 0.8, 1.2)


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_a_fused_layer_waits_for_its_last_copy_and_takes_the_grouped_gemms_time(engines, engine_name):
    # test_cold_decode_pass with the experts fused. L0: dense [0, .25]; copies 0 [.25, 1.25], 1 [1.25, 2.25];
    #   the kernel [2.25, 3.05] (two experts: 0.8 s). L1: dense [3.05, 3.3]; copies [3.3, 4.3], [4.3, 5.3];
    #   the kernel [5.3, 6.1]. The GPU waits .25 -> 2.25 and 3.3 -> 5.3: 4 s.
    trace = make_trace([[[[0, 1], [2, 3]]]])
    r, _ = run(engines[engine_name], trace, slots=4, runtime={"experts": "fused"}, fused_s=FUSED)
    assert r["e2e_s"] == pytest.approx(6.1, abs=1e-9)
    assert r["stall_s"] == pytest.approx(4.0, abs=1e-9)
    assert r["compute_busy_frac"] == pytest.approx((0.5 + 1.6) / 6.1, abs=1e-12)
    assert r["misses_compulsory"] == 4 and r["bytes_h2d"] == 4 * EXPERT


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_a_fused_layers_hit_does_not_run_before_its_miss_lands(engines, engine_name):
    # Pass 0 as above ends at 6.1 with (0,0), (0,1), (1,2), (1,3) resident in the 4 slots. Pass 1 routes
    # L0 to {0, 3}: 0 hits, 3 misses and evicts (0,1) (LRU). L0: dense [6.1, 6.35]; copy 3 [6.35, 7.35]; the
    # kernel [7.35, 8.15] (per expert, the hit would have run [6.35, 6.85] under the copy). L1 {2, 3} hits:
    # dense [8.15, 8.4], kernel [8.4, 9.2]. TPOT 3.1 s.
    trace = make_trace([[[[0, 1], [2, 3]]], [[[0, 3], [2, 3]]]])
    r, _ = run(engines[engine_name], trace, slots=4, runtime={"experts": "fused"}, fused_s=FUSED)
    assert r["e2e_s"] == pytest.approx(9.2, abs=1e-9)
    assert r["tpot_s"] == pytest.approx(3.1, abs=1e-9)
    assert (r["hits"], r["misses_compulsory"], r["misses_capacity"]) == (3, 5, 0)
    per_expert, _ = run(engines[engine_name], trace, slots=4)
    # per expert: pass 1's L0 runs the hit [6.35, 6.85] under the copy, the miss [7.35, 7.85]; L1 dense
    # [7.85, 8.1], hits [8.1, 8.6], [8.6, 9.1]: 0.1 s sooner
    assert per_expert["e2e_s"] == pytest.approx(5.5 + 0.25 + 1.0 + 0.5 + 0.25 + 1.0, abs=1e-9)


@pytest.mark.parametrize("engine_name", ["des", "fast"])
def test_a_fused_prefill_layer_prices_its_distinct_experts(engines, engine_name):
    # A prefill of two tokens routing L0 to {0, 1} and {2, 3} (four distinct experts: 1.2 s, 0.3 s each),
    # L1 to {0, 1} twice (two: 0.8 s). 8 slots. L0: dense [0, .25]; copies [.25, 4.25]; the kernel
    # [4.25, 5.45]. L1: dense [5.45, 5.7]; copies [5.7, 7.7]; the kernel [7.7, 8.5].
    trace = make_trace([[[[0, 1], [0, 1]], [[2, 3], [0, 1]]]], phases=[0])
    r, _ = run(engines[engine_name], trace, slots=8, runtime={"experts": "fused"}, fused_s=FUSED)
    assert r["ttft_s"] == pytest.approx(8.5, abs=1e-9)
