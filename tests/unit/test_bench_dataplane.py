"""What the data-plane benchmark parses and concludes, without a lab: the lab hosts' CPU counters, the probe's
percentiles, and the targets read off its figures."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.dataplane import CPU_SCRIPT, cpu_per_gib, parse_cpu, table, verdicts
from bench.dataplane_probe import percentile, summary


def test_cpu_counters_are_read_in_clock_ticks_and_odd_lines_are_skipped() -> None:
    assert parse_cpu("nginx 250 100\ntailscaled 1200 100\nfrps 0 100\nbroken line\ntraefik x 100\n") == {
        "nginx": 2.5, "tailscaled": 12.0, "frps": 0.0}


def test_the_cpu_script_sums_every_process_of_a_name_from_proc(tmp_path) -> None:
    """The script run by a shell here: this test's own Python is the process it finds."""
    name = "python3" if "python3" in sys.executable.rsplit("/", 1)[-1] else "python"
    script = CPU_SCRIPT.replace("for n in nginx", f"for n in {name} nginx", 1)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    found = parse_cpu(out)
    assert set(found) >= {"nginx", "tailscaled", "traefik", "frps", "frpc"}
    assert found["frps"] == 0.0


def test_cpu_per_gib_counts_only_what_each_process_used_while_the_bytes_moved() -> None:
    before = {"h1 nginx": 10.0, "h1 tailscaled": 5.0, "h2 frpc": 1.0}
    after = {"h1 nginx": 10.5, "h1 tailscaled": 7.0, "h2 frpc": 1.0}
    assert cpu_per_gib(before, after, 1 << 29) == {"h1 nginx": 1.0, "h1 tailscaled": 4.0}
    assert cpu_per_gib(before, after, 0) == {}


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0 and percentile(values, 100) == 100.0
    assert percentile([], 99) == 0.0
    assert summary([3.0, 1.0, 2.0]) == {"p50": 2.0, "p99": 3.0, "n": 3}


def _path(handshake: float, first_byte: float, one: float, parallel: float) -> dict:
    latency = {"handshake_ms": {"p50": handshake, "p99": handshake * 2, "n": 10},
               "first_byte_ms": {"p50": first_byte, "p99": first_byte * 2, "n": 10}, "errors": 0}
    return {"latency": latency, "one": {"mbit_s": one, "errors": 0}, "parallel": {"mbit_s": parallel, "errors": 0},
            "cpu_s_per_gib": {"h1 nginx": 0.5}}


@pytest.mark.parametrize(("entrance", "missed"), [
    (_path(2.5, 1.0, 950, 1900), []),
    (_path(3.2, 1.0, 950, 1900), ["adds 1.20 ms"]),
    (_path(2.5, 1.0, 800, 1900), ["(one) is 80%", "(one) 800 Mbit/s vs frp 900"]),
    (_path(2.5, 1.6, 950, 1900), ["first_byte p50 1.60 ms vs frp 1.50", "first_byte p99 3.20 ms vs frp 3.00"]),
])
def test_the_targets_are_read_off_the_figures(entrance: dict, missed: list[str]) -> None:
    paths = {"tailnet to ingress": _path(2.0, 0.9, 1000, 2000), "entrance": entrance,
             "frp": _path(4.0, 1.5, 900, 1500)}
    found = [line for line in verdicts(paths) if line.endswith("MISSED")]
    assert len(found) == len(missed), found
    for line, expected in zip(found, missed, strict=True):
        assert expected in line, (line, expected)


def test_the_table_takes_each_paths_best_round() -> None:
    rounds = [_path(2.0, 0.9, 1000, 2000), _path(1.5, 0.8, 700, 2200)]
    results = {"parallel": 16, "paths": {"tailnet to ingress": rounds, "entrance": [_path(2.4, 1.0, 950, 2000)],
                                         "frp": [_path(4.0, 1.5, 900, 1500)]}}
    text = table(results)
    row = next(line for line in text.splitlines() if line.startswith("| tailnet to ingress"))
    assert "1.50 / 3.00 ms" in row and "1000 Mbit/s" in row and "2200 Mbit/s" in row
    assert "- entrance handshake p50 adds 0.90 ms" in text
