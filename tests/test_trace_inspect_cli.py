"""Trace summary metrics by hand, and the `trace` CLI group end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emu.trace import RoutingTrace
from emu.trace.cli import main
from emu.trace.inspect import render, summarize


def hand_trace() -> RoutingTrace:
    # requests 0 and 1 interleaved in decode passes after one prefill each; 2 layers, top-2, 4 experts
    experts = np.array([
        [[0, 1], [0, 1]],  # r0 pos 0 (prefill)
        [[2, 3], [2, 3]],  # r1 pos 0 (prefill)
        [[1, 2], [0, 1]],  # r0 pos 1
        [[2, 3], [3, 0]],  # r1 pos 1
    ], dtype=np.int16)
    return RoutingTrace(
        experts=experts, pass_offsets=np.array([0, 1, 2, 4]), pass_phase=np.array([0, 0, 1], dtype=np.int8),
        token_request=np.array([0, 1, 0, 1], dtype=np.int32),
        token_position=np.array([0, 0, 1, 1], dtype=np.int32),
        scores=np.array([[[0.75, 0.25]] * 2] * 4, dtype=np.float16), n_experts=4, model="hand")


def test_summary_by_hand():
    s = summarize(hand_trace())
    assert (s.tokens, s.passes, s.prefill_passes, s.decode_passes, s.requests) == (4, 3, 2, 1, 2)
    assert (s.prefill_tokens, s.decode_tokens, s.mean_decode_batch) == (2, 2, 2.0)
    # layer 0 counts: e0 1, e1 2, e2 3, e3 2 -> top share 3/8; layer 1: e0 3, e1 2, e2 1, e3 2 -> 3/8
    assert s.top_expert_share == (3 / 8, 3 / 8)
    # reuse pairs are (r0 pos1, r0 pos0) and (r1 pos1, r1 pos0), not neighbours in the trace order:
    # layer 0: {1,2}&{0,1} = 1, {2,3}&{2,3} = 2 -> 3/4; layer 1: {0,1}&{0,1} = 2, {3,0}&{2,3} = 1 -> 3/4
    assert s.reuse_pairs == 2 and s.reuse_rate == (0.75, 0.75)
    assert s.mean_top1_score == pytest.approx(0.75)
    assert s.predictor_precision is None
    text = render(s)
    assert "tokens" in text and "0.375" in text and "0.750" in text


def test_reuse_rate_layer_sensitivity():
    t = hand_trace()
    experts = t.experts.copy()
    experts[3, 1] = [1, 0]  # r1 pos 1, layer 1: {1,0} & {2,3} = 0 -> layer 1 reuse (2 + 0) / 4
    s = summarize(RoutingTrace(experts=experts, pass_offsets=t.pass_offsets, pass_phase=t.pass_phase,
                               token_request=t.token_request, token_position=t.token_position, n_experts=4))
    assert s.reuse_rate == (0.75, 0.5)


def test_cli_gen_inspect_json_and_text(tmp_path, capsys):
    out = tmp_path / "g.npz"
    rc = main(["trace", "gen", "--model", "olmoe-1b-7b", "--tokens", "1000", "--seed", "7", "--out", str(out),
               "--batch-size", "4", "--reuse-prob", "1.0", "--zipf-s", "1.5", "--scores",
               "--predictor-accuracy", "0.5"])
    assert rc == 0 and out.is_file()
    assert "1,000 tokens" in capsys.readouterr().out
    rc = main(["trace", "inspect", str(out), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["tokens"] == 1000 and data["layers"] == 16 and data["top_k"] == 8
    assert data["reuse_rate"] == [1.0] * 16 and data["mean_decode_batch"] > 3.5
    assert abs(data["predictor_precision"] - 0.5) < 0.03
    assert RoutingTrace.load(out).meta["generator"]["zipf_s"] == 1.5
    assert main(["trace", "inspect", str(out)]) == 0
    assert "top-expert share" in capsys.readouterr().out


def test_cli_import(tmp_path, capsys):
    src = tmp_path / "t.jsonl"
    rows = [{"problem_id": 0, "token_idx": t, "layer": layer, "experts": [t % 8, 7 - t % 8],
             "gating_probs": [0.9, 0.1]} for t in range(3) for layer in range(32)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "t.npz"
    assert main(["trace", "import", str(src), "--model", "mixtral-8x7b", "--out", str(out)]) == 0
    trace = RoutingTrace.load(out)
    assert trace.n_tokens == 3 and trace.model == "mixtral-8x7b" and trace.experts[2, 5].tolist() == [2, 5]


GEN = ["trace", "gen", "--model", "olmoe-1b-7b"]


@pytest.mark.parametrize(("argv", "needle"), [
    (["trace", "gen", "--model", "gpt-9", "--out", "X.npz"], "unknown model preset 'gpt-9'"),
    ([*GEN, "--tokens", "10", "--out", "X.txt"], "--out: expected an output"),
    ([*GEN, "--reuse-prob", "2", "--out", "X.npz"], "reuse_prob: expected"),
    ([*GEN, "--zipf-s", "a,b", "--out", "X.npz"], "zipf_s: expected"),
    (["trace", "import", "MISSING.jsonl", "--out", "X.npz"], "trace file not found"),
    (["trace", "inspect", "MISSING.npz"], "trace file not found"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_import_bad_row_names_line(tmp_path, capsys):
    src = tmp_path / "b.jsonl"
    src.write_text(json.dumps({"request": 0, "token": 0, "layer": 0, "experts": [0, 1]}) + "\n"
                   + json.dumps({"request": 0, "token": 0, "layer": 1, "experts": [0, 9]}) + "\n")
    out = str(tmp_path / "b.npz")
    assert main(["trace", "import", str(src), "--model", "mixtral-8x7b", "--out", out]) == 2
    assert "b.jsonl:2: experts: expert id 9 out of range" in capsys.readouterr().err
