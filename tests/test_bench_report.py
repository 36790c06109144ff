"""The bench's result arithmetic, table and output parsers (no load is run here)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from bench import report
from bench.cases import CASES, KIB, Case, Kind
from bench.envoy_configs import CallRecord, parse_call_log
from bench.loadgen import Load, LoadError, LoadResult, parse_h2load_log, parse_wrk, percentile
from bench.report import CaseResult, MemoryResult, RateRun, Status, Target, Verdict
from bench.run import _rates


def load(rps: float, p99_us: float = 1000.0) -> LoadResult:
    return LoadResult(requests=int(rps * 10), duration_s=10.0, p50_us=p99_us / 2, p99_us=p99_us, errors=0)


def ok(name: str, rps: float, server_cpu_us: float | None = None, half_p99_us: float = 500.0) -> CaseResult:
    return CaseResult(
        name=name,
        title=name,
        status=Status.OK,
        peak=load(rps),
        envoy_cpu_us=80.0,
        server_cpu_us=server_cpu_us,
        half=load(rps / 2, half_p99_us),
    )


def by_name(*results: CaseResult) -> dict[str, CaseResult]:
    return {r.name: r for r in results}


def find(found: list[Target], prefix: str) -> Target:
    return next(t for t in found if t.name.startswith(prefix))


def test_cpu_ratios_against_the_noop_floor() -> None:
    results = by_name(ok("noop", 2600, 350.0), ok("header", 2000, 420.0), ok("header3", 1800, 430.0))
    found = report.targets(results, None)
    one = find(found, "1 header plugin")
    assert one.value == pytest.approx(1.2)
    assert one.verdict is Verdict.MISS
    three = find(found, "3 chained")
    assert three.value == pytest.approx(430 / 350)
    assert three.verdict is Verdict.PASS


def test_bypass_throughput_is_higher_is_better() -> None:
    found = report.targets(by_name(ok("envoy", 10000), ok("nomatch_bypass", 9500, 0.0)), None)
    target = find(found, "no match, per-route bypass")
    assert target.value == pytest.approx(0.95)
    assert target.verdict is Verdict.PASS
    found = report.targets(by_name(ok("envoy", 10000), ok("nomatch_bypass", 8000, 0.0)), None)
    assert find(found, "no match, per-route bypass").verdict is Verdict.MISS


def test_missing_or_failed_baseline_gives_na_not_a_number() -> None:
    failed = CaseResult("noop", "noop", Status.ERROR, "boom")
    found = report.targets(by_name(failed, ok("header", 2000, 420.0)), None)
    assert find(found, "1 header plugin").value is None
    assert find(found, "1 header plugin").verdict is Verdict.NA
    assert find(found, "5 plugins: RSS per worker").verdict is Verdict.NA


def test_p99_added_is_relative_to_envoy_alone_at_half_peak() -> None:
    envoy = ok("envoy", 10000, half_p99_us=400.0)
    header = ok("header", 2000, 420.0, half_p99_us=2900.0)
    assert report.p99_added_ms(header, envoy) == pytest.approx(2.5)
    found = report.targets(by_name(envoy, header), None)
    assert find(found, "header: p99 added").verdict is Verdict.MISS


def test_body_throughput_is_informational() -> None:
    body = CaseResult("req_body_64k", "64k", Status.OK, peak=load(100), body_bytes=64 * KIB)
    assert body.body_mb_per_s == pytest.approx(100 * 64 * KIB / 1e6)
    target = find(report.targets(by_name(body), None), "64k: throughput")
    assert target.verdict is Verdict.INFO


def test_memory_targets_use_worst_process_and_growth() -> None:
    memory = MemoryResult(
        requests=100_000,
        rss_before_mb={1: 20.0, 2: 100.0},
        rss_after_mb={1: 21.0, 2: 115.0},
        rss_peak_mb=116.0,
        result=load(1000),
    )
    assert memory.growth == pytest.approx(0.15)
    found = report.targets({}, memory)
    assert find(found, "5 plugins: RSS per worker").verdict is Verdict.PASS
    growth = find(found, "5 plugins: RSS growth")
    assert growth.value == pytest.approx(15.0)
    assert growth.verdict is Verdict.MISS


def test_tables_render_unavailable_cases_and_targets() -> None:
    results = [ok("envoy", 10000), CaseResult("workers2", "--workers 2", Status.UNAVAILABLE, "no --workers\nmore")]
    table = report.case_table(results)
    assert "| envoy | 10,000 |" in table
    assert "| --workers 2 | not available: no --workers |" in table
    assert table.count("\n") == 4
    targets = report.target_table([Target("t", 0.5, 1.0), Target("u", None, 1.0), Target("v", 3.0, None)])
    assert "| t | 0.50x | <= 1x | PASS |" in targets
    assert "| u | - | <= 1x | N/A |" in targets
    assert "| v | 3.00x | - | info |" in targets


def at_rates(name: str, *server_cpu_us: tuple[float, float]) -> CaseResult:
    runs = tuple(RateRun(rate, load(rate), 300.0, cpu, 20.0) for rate, cpu in server_cpu_us)
    return dataclasses.replace(ok(name, 2000), at_rates=runs)


def test_set_rate_rows_compare_server_cpu_with_the_noop_at_the_same_rate() -> None:
    results = [at_rates("noop", (1000, 500.0), (500, 800.0)), at_rates("header", (1000, 650.0), (500, 1000.0))]
    table = report.rate_table(results)
    assert "| header | 1000 | 1,000 | 1.00 | 300 | 650 | 1.30 | 20.0 |" in table
    assert "| header | 500 | 500 | 1.00 | 300 | 1,000 | 1.25 | 20.0 |" in table
    assert "| noop | 500 | 500 | 1.00 | 300 | 800 | 1.00 | 20.0 |" in table
    assert "## At set rates" in report.markdown(results, [], None, "# h\n")
    # Without --rates the section is left out.
    assert "## At set rates" not in report.markdown([ok("noop", 2000)], [], None, "# h\n")


def test_a_rate_without_a_noop_run_has_no_ratio() -> None:
    table = report.rate_table([at_rates("header", (700, 650.0))])
    assert "| header | 700 | 700 | 1.00 | 300 | 650 | - | 20.0 |" in table


def test_case_body_bytes_from_request_or_response_path() -> None:
    assert Case("a", "a", Kind.SERVER, Load("/", 64 * KIB)).body_bytes == 64 * KIB
    assert Case("b", "b", Kind.SERVER, Load("/body/1024")).body_bytes == 1024
    assert Case("c", "c", Kind.SERVER).body_bytes == 0
    assert len({case.name for case in CASES}) == len(CASES)


def test_parse_wrk_done_line() -> None:
    stdout = (
        "Running 1s test @ http://127.0.0.1:1/\n"
        'BENCH_JSON {"requests": 500, "duration_us": 2000000, "p50_us": 900, "p99_us": 4000, '
        '"connect": 0, "read": 1, "write": 0, "status": 2, "timeout": 0}\n'
    )
    result = parse_wrk(stdout)
    assert result.rps == pytest.approx(250.0)
    assert (result.p50_us, result.p99_us, result.errors) == (900.0, 4000.0, 3)
    with pytest.raises(LoadError, match="no result line"):
        parse_wrk("Running 1s test\n")


def test_parse_h2load_log_counts_failures_and_percentiles() -> None:
    rows = [f"1700000000{i:06d}\t200\t{100 * (i + 1)}" for i in range(99)] + ["1700000000999999\t-1\t50000"]
    result = parse_h2load_log("\n".join(rows) + "\n", duration_s=2.0)
    assert result.requests == 100
    assert result.errors == 1
    assert result.p50_us == 5000.0
    assert result.p99_us == 9900.0
    assert percentile([1.0, 2.0, 3.0], 0.99) == 3.0


def test_call_log_keeps_the_window_and_marks_requests_without_a_call() -> None:
    text = "99.500000 700 a\n100.000000 1200 b\n100.250000 - c\n100.999999 900 d\n101.000000 5000 e\n"
    assert parse_call_log(text, 100.0, 101.0) == [
        CallRecord(100.0, 1200, "b"),
        CallRecord(100.25, None, "c"),
        CallRecord(100.999999, 900, "d"),
    ]
    assert parse_call_log("", 100.0, 101.0) == []
    assert parse_call_log("100.5 1200 b\n100.6 90", 100.0, 101.0) == [CallRecord(100.5, 1200, "b")]


def test_rates_option_parses_a_list_of_positive_rates() -> None:
    assert _rates("1000,500") == (1000.0, 500.0)


@pytest.mark.parametrize("text", ["", "1000,", "fast", "500,-1", "0"])
def test_rates_option_rejects_bad_lists(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
        _rates(text)
