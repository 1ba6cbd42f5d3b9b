"""The benchmark's output parsers (bench/tools.py, bench/logscan.py) on real outputs of the real tools.

The samples were captured on this project's box (iperf3 3.12, wrk debian/4.1.0-3+b2, ab 2.3,
nginx 1.22.1, curl 7.88.1) against a local nginx and iperf3 -s; long parts are cut where marked.
A parser that reads the wrong line, or a tool whose output format changes, fails here rather
than turning a benchmark figure silently into nonsense.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ lives at the repository root

from bench.logscan import log_problems, problems_in  # noqa: E402
from bench.tools import (  # noqa: E402
    TOOL_VERSIONS,
    UnparsableOutput,
    parse_ab,
    parse_iperf3_json,
    parse_program_version,
    parse_tool_version,
    parse_wrk,
)

# iperf3 -c 127.0.0.1 -p PORT -t 1 -J (the per-interval and per-stream parts cut)
IPERF3_JSON = """{
\t"start":\t{
\t\t"version":\t"iperf 3.12",
\t\t"system_info":\t"Linux vm 6.18.44-fc-v669 #1 SMP PREEMPT_DYNAMIC @0 x86_64"
\t},
\t"intervals":\t[],
\t"end":\t{
\t\t"sum_sent":\t{
\t\t\t"start":\t0,
\t\t\t"end":\t1.000685,
\t\t\t"seconds":\t1.000685,
\t\t\t"bytes":\t1711669248,
\t\t\t"bits_per_second":\t13683980457.38669,
\t\t\t"retransmits":\t20,
\t\t\t"sender":\ttrue
\t\t},
\t\t"sum_received":\t{
\t\t\t"start":\t0,
\t\t\t"end":\t1.001561,
\t\t\t"seconds":\t1.001561,
\t\t\t"bytes":\t1711669248,
\t\t\t"bits_per_second":\t13672011973.309664,
\t\t\t"sender":\ttrue
\t\t}
\t}
}
"""

# the same with nothing listening (iperf3 exits 1 and says why in the JSON)
IPERF3_REFUSED = """{
\t"start":\t{
\t\t"connected":\t[],
\t\t"version":\t"iperf 3.12",
\t\t"system_info":\t"Linux vm 6.18.44-fc-v669 #1 SMP PREEMPT_DYNAMIC @0 x86_64"
\t},
\t"intervals":\t[],
\t"end":\t{
\t},
\t"error":\t"unable to connect to server: Connection refused"
}
"""

# wrk -t2 -c16 -d1s --latency --timeout 5s http://127.0.0.1:PORT/small.bin
WRK = """Running 1s test @ http://127.0.0.1:37263/small.bin
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   422.82us  577.35us   5.86ms   93.43%
    Req/Sec    25.33k     8.93k   57.00k    85.71%
  Latency Distribution
     50%  290.00us
     75%  357.00us
     90%  519.00us
     99%    3.52ms
  52926 requests in 1.10s, 63.80MB read
Requests/sec:  48134.02
Transfer/sec:     58.02MB
"""

# wrk -t1 -c2 -d1s --latency --timeout 5s http://127.0.0.1:PORT/nope (nginx answers 404)
WRK_404 = """Running 1s test @ http://127.0.0.1:37263/nope
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   404.49us  584.01us   6.68ms   88.30%
    Req/Sec     9.26k     9.01k   31.25k    90.00%
  Latency Distribution
     50%   96.00us
     75%  603.00us
     90%    1.06ms
     99%    2.73ms
  9192 requests in 1.00s, 2.70MB read
  Non-2xx or 3xx responses: 9192
Requests/sec:   9187.56
Transfer/sec:      2.70MB
"""

# wrk against a port where nothing listens
WRK_REFUSED = "unable to connect to 127.0.0.1:1 Connection refused\n"

# ab -q -r -s 10 -c 8 -n 500 http://127.0.0.1:PORT/small.bin (the percentile table cut)
AB = """This is ApacheBench, Version 2.3 <$Revision$>
Copyright 1996 Adam Twiss, Zeus Technology Ltd, http://www.zeustech.net/
Licensed to The Apache Software Foundation, http://www.apache.org/

Benchmarking 127.0.0.1 (be patient).....done


Server Software:        nginx/1.22.1
Server Hostname:        127.0.0.1
Server Port:            37263

Document Path:          /small.bin
Document Length:        1024 bytes

Concurrency Level:      8
Time taken for tests:   0.038 seconds
Complete requests:      500
Failed requests:        0
Total transferred:      629500 bytes
HTML transferred:       512000 bytes
Requests per second:    13015.07 [#/sec] (mean)
Time per request:       0.615 [ms] (mean)
Time per request:       0.077 [ms] (mean, across all concurrent requests)
Transfer rate:          16001.93 [Kbytes/sec] received

Connection Times (ms)
              min  mean[+/-sd] median   max
Connect:        0    0   0.1      0       1
Processing:     0    0   0.1      0       1
Waiting:        0    0   0.1      0       1
Total:          0    1   0.1      1       1
"""

# the lines of `ab ... -n 200 http://127.0.0.1:PORT/nope` that differ (nginx answers 404)
AB_404_COUNTS = """Complete requests:      200
Failed requests:        0
Non-2xx responses:      200
Total transferred:      60600 bytes
Requests per second:    13003.06 [#/sec] (mean)
"""


def test_iperf3_gbit_per_second_at_the_receiver() -> None:
    assert parse_iperf3_json(IPERF3_JSON) == pytest.approx(13.672011973309664)


def test_iperf3_json_followed_by_stderr_text() -> None:
    """run_tool appends stderr after the JSON; the parser reads up to the last closing brace."""
    assert parse_iperf3_json(IPERF3_JSON + "\niperf3: interrupt - the client has terminated\n") > 13


def test_iperf3_error_is_reported_in_its_own_words() -> None:
    with pytest.raises(UnparsableOutput, match="unable to connect to server: Connection refused"):
        parse_iperf3_json(IPERF3_REFUSED)


@pytest.mark.parametrize("out", ["", "iperf3: error - unable to connect", '{"end": {}}'])
def test_iperf3_without_a_figure_is_unparsable(out: str) -> None:
    with pytest.raises(UnparsableOutput):
        parse_iperf3_json(out)


def test_wrk_rate_count_and_percentiles_in_ms() -> None:
    got = parse_wrk(WRK)
    assert got["rps"] == 48134.02
    assert got["requests"] == 52926
    assert got["p50_ms"] == pytest.approx(0.29)  # 290.00us
    assert got["p99_ms"] == pytest.approx(3.52)
    assert got["errors"] == 0


def test_wrk_counts_non_2xx_as_errors() -> None:
    got = parse_wrk(WRK_404)
    assert got["errors"] == 9192 and got["requests"] == 9192
    assert got["p50_ms"] == pytest.approx(0.096)


def test_wrk_counts_every_kind_of_socket_error() -> None:
    # wrk prints this line only when there were socket errors: "connect 1, read 2, write 3, timeout 4"
    out = WRK.replace("Requests/sec:", "  Socket errors: connect 1, read 2, write 3, timeout 4\nRequests/sec:")
    assert parse_wrk(out)["errors"] == 10


def test_wrk_latency_in_seconds_and_missing_percentiles() -> None:
    out = WRK.replace("     99%    3.52ms\n", "     99%    1.20s\n").replace("     50%  290.00us\n", "")
    got = parse_wrk(out)
    assert got["p99_ms"] == pytest.approx(1200.0)
    assert math.isnan(got["p50_ms"])


def test_wrk_that_could_not_connect_is_unparsable() -> None:
    with pytest.raises(UnparsableOutput):
        parse_wrk(WRK_REFUSED)


def test_ab_connections_per_second_and_failures() -> None:
    assert parse_ab(AB) == {"cps": 13015.07, "complete": 500, "failed": 0}


def test_ab_counts_non_2xx_as_failed() -> None:
    assert parse_ab(AB_404_COUNTS) == {"cps": 13003.06, "complete": 200, "failed": 200}


def test_ab_without_its_summary_is_unparsable() -> None:
    with pytest.raises(UnparsableOutput):
        parse_ab(AB.split("Complete requests")[0])


@pytest.mark.parametrize("tool, out, version", [
    ("iperf3", "iperf 3.12 (cJSON 1.7.15)\nLinux vm 6.18.44-fc-v669 #1 SMP PREEMPT_DYNAMIC @0 x86_64\n", "3.12"),
    ("wrk", "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer\nUsage: wrk <options> <url>\n",
     "debian/4.1.0-3+b2"),
    ("ab", "This is ApacheBench, Version 2.3 <$Revision$>\n", "2.3"),
    ("nginx", "\nnginx version: nginx/1.22.1\n", "1.22.1"),
    ("curl", "curl 7.88.1 (x86_64-pc-linux-gnu) libcurl/7.88.1 OpenSSL/3.0.22 zlib/1.2.13\n", "7.88.1"),
])
def test_tool_versions(tool: str, out: str, version: str) -> None:
    pattern = dict((args[0], pattern) for args, pattern in TOOL_VERSIONS)[tool]
    assert parse_tool_version(out, pattern) == version
    assert parse_tool_version("command not found", pattern) == "?"


@pytest.mark.parametrize("line, expected", [
    ("reverse_websockify_server 0.1.0; Python 3.11.7, websockets 17.4",
     {"version": "0.1.0", "python": "3.11.7", "websockets": "17.4"}),
    ("reverse_websockify_server 0.1.0 (single-file build); Python 3.12.8, websockets 15.0.1",
     {"version": "0.1.0", "python": "3.12.8", "websockets": "15.0.1"}),
    ("something else", {}),
])
def test_program_version(line: str, expected: dict[str, str]) -> None:
    assert parse_program_version(line) == expected


SERVER_LOG = """2026-12-02 01:20:11,123 INFO reverse_websockify.server: service main stream 3: closed
2026-12-02 01:20:12,456 ERROR reverse_websockify.server: service main: tunnel failed
Traceback (most recent call last):
  File "/usr/lib/python3.11/asyncio/events.py", line 80, in _run
    self._context.run(self._callback, *self._args)
  File "/work/main/reverse_websockify/tunnel.py", line 218, in on_message
    raise ProtocolError("bad")
reverse_websockify.protocol.ProtocolError: bad
2026-12-02 01:20:13,789 ERROR reverse_websockify.server: service main: tunnel failed
"""


def test_log_problems_name_the_last_own_frame_and_count_repeats() -> None:
    assert problems_in("main server", SERVER_LOG) == [
        "main server: ERROR reverse_websockify.server: service main: tunnel failed",
        "main server: traceback at tunnel.py:218 in on_message → reverse_websockify.protocol.ProtocolError: bad",
        "main server: ERROR reverse_websockify.server: service main: tunnel failed",
    ]
    assert log_problems([("main server", SERVER_LOG), ("main agent x", "all quiet\n")]) == [
        "2× main server: ERROR reverse_websockify.server: service main: tunnel failed",
        "main server: traceback at tunnel.py:218 in on_message → reverse_websockify.protocol.ProtocolError: bad",
    ]
