"""Tests of ``lmk bench`` (lmkernels.bench) at smoke-test sizes."""

import json

import pytest
import torch

from lmkernels.bench import harness
from lmkernels.cli import main

_KEYS = {"kernel", "case", "device", "peer", "ours_ms", "peer_ms", "speedup", "ours_kernel_ms", "peer_kernel_ms",
         "ours_kernels", "peer_kernels", "ours_peak_mb", "peer_peak_mb", "gbps", "stream_gbps", "threads"}


def test_bench_writes_records(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--tiny", "--device", "cpu", "--filter", "embedding_bag", "--json", str(path)]) == 0
    records = json.loads(path.read_text())
    assert {r["case"].split()[0] for r in records} == {"fwd", "fwd+bwd"}
    for record in records:
        assert set(record) == _KEYS
        assert record["kernel"] == "embedding_bag" and record["device"] == "cpu"
        assert record["ours_ms"] > 0 and record["peer_ms"] > 0
        assert record["speedup"] == pytest.approx(record["peer_ms"] / record["ours_ms"])
        assert record["gbps"] > 0 and record["stream_gbps"] > 0
        assert record["ours_peak_mb"] is None and record["peer_peak_mb"] is None
        assert record["ours_kernel_ms"] is None and record["peer_kernel_ms"] is None  # CUDA only
        assert record["ours_kernels"] is None and record["peer_kernels"] is None
    table = capsys.readouterr().out
    assert "machine:" in table and "speedup" in table and records[0]["case"] in table


def test_kernel_times_sum_each_name_per_call_longest_first():
    events = [("gemm", 300.0), ("cast", 20.0), ("gemm", 100.0), ("memcpy", 60.0)]
    assert list(harness.per_kernel_ms(events, calls=2).items()) == [("gemm", 0.2), ("memcpy", 0.03), ("cast", 0.01)]


def test_filter_terms_are_comma_separated_and_repeatable(tmp_path):
    path = tmp_path / "bench.json"
    argv = ["bench", "--tiny", "--device", "cpu", "--filter", "fwd+bwd,nomatch", "--filter", "fp32", "--json", str(path)]
    assert main(argv) == 0
    cases = [r["case"] for r in json.loads(path.read_text())]
    assert cases and all("fwd+bwd" in case or "fp32" in case for case in cases)
    assert any(case.startswith("fwd ") for case in cases)  # "fp32" matched a forward case too


def test_threads_sets_both_libraries_for_the_run_only(tmp_path):
    import lmkernels

    path = tmp_path / "bench.json"
    before = torch.get_num_threads(), lmkernels.num_threads()
    seen = []
    real_measure = harness.measure

    def measure(case, timing, stream_gbps=None):
        seen.append((torch.get_num_threads(), lmkernels.num_threads()))
        return real_measure(case, timing, stream_gbps)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(harness, "measure", measure)
        argv = ["bench", "--tiny", "--device", "cpu", "--filter", "embedding_bag", "--threads", "1", "--json", str(path)]
        assert main(argv) == 0
    assert seen and set(seen) == {(1, 1)}
    assert {r["threads"] for r in json.loads(path.read_text())} == {1}
    assert (torch.get_num_threads(), lmkernels.num_threads()) == before


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_threads_must_be_a_positive_whole_number(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--tiny", "--device", "cpu", "--threads", value])
    assert exit_info.value.code == 2
    assert "--threads" in capsys.readouterr().err


def test_no_match_fails(capsys):
    assert main(["bench", "--tiny", "--device", "cpu", "--filter", "nomatch"]) == 1
    assert "no case matches" in capsys.readouterr().err


def test_a_failing_case_is_reported_and_the_others_still_run(tmp_path, capsys, monkeypatch):
    measure = harness.measure

    def fail_forward_cases(case, *args):
        if case.case.startswith("fwd "):
            raise RuntimeError("broken on purpose")
        return measure(case, *args)

    monkeypatch.setattr(harness, "measure", fail_forward_cases)
    path = tmp_path / "bench.json"
    assert main(["bench", "--tiny", "--device", "cpu", "--filter", "embedding_bag", "--json", str(path)]) == 1
    records = json.loads(path.read_text())
    assert records and all(r["case"].startswith("fwd+bwd") for r in records)
    captured = capsys.readouterr()
    assert "FAILED: RuntimeError: broken on purpose" in captured.out
    assert "case(s) failed" in captured.err and "embedding_bag | fwd " in captured.err


def test_measure_interleaves_blocks_of_ours_and_peer():
    calls = []
    case = harness.Case("k", "c", "p", lambda: calls.append("ours"), lambda: calls.append("peer"), 1000, "cpu")
    record = harness.measure(case, harness.Timing(warmup=1, min_repeats=3, min_time=0.0, block=3))
    assert calls == ["ours", "peer"] + (["ours"] * 3 + ["peer"] * 3) * 2
    assert record["gbps"] > 0 and record["stream_gbps"] is None


def test_measure_gives_the_slower_side_fewer_calls(monkeypatch):
    calls = []
    cost_ms = {"ours": 1.0, "peer": 20.0}

    def fake_timer(device):
        def time_once(fn):
            fn()
            return cost_ms[calls[-1]]
        return time_once

    monkeypatch.setattr(harness, "_timer", fake_timer)
    case = harness.Case("k", "c", "p", lambda: calls.append("ours"), lambda: calls.append("peer"), None, "cpu")
    record = harness.measure(case, harness.Timing(warmup=1, min_repeats=4, min_time=0.04, block=3))
    # ours needs 40 samples for 40 ms, the peer its 4 minimum: 2 blocks, of 1 + 20 and 1 + 2 calls
    assert calls == ["ours", "peer"] + (["ours"] * 21 + ["peer"] * 3) * 2
    assert record["speedup"] == pytest.approx(20.0)


def test_gemm_cases_with_a_known_peak_report_its_fraction(monkeypatch):
    monkeypatch.setattr(harness, "_timer", lambda device: lambda fn: fn())
    case = harness.Case("k", "c", "p", lambda: 2.0, lambda: 4.0, None, "cpu", flops=10**9, peak_tflops=1.0)
    record = harness.measure(case, harness.Timing(warmup=1, min_repeats=2, min_time=0.0))
    assert record["ours_gflops"] == pytest.approx(500.0) and record["ours_of_peak"] == pytest.approx(0.5)
    assert record["peer_of_peak"] == pytest.approx(0.25)


def test_text_cases_report_megabytes_per_second(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--tiny", "--device", "cpu", "--filter", "tfree_words", "--json", str(path)]) == 0
    records = json.loads(path.read_text())
    assert [r["case"].split()[0] for r in records] == ["split", "join"]
    for record in records:
        assert set(record) == _KEYS | {"ours_mbps", "peer_mbps"}
        assert record["gbps"] is None
        assert record["ours_mbps"] == pytest.approx(record["peer_mbps"] * record["speedup"])
    assert "MB/s" in capsys.readouterr().out


def test_text_cases_are_cpu_only():
    from lmkernels.bench import tfree_words

    assert tfree_words.cases(quick=True, device="cuda", tiny=True) == []
