"""The benchmark's output parsers (bench/tools.py, bench/logscan.py) on real outputs of the real tools.

The samples were captured on this project's box (iperf3 3.12, wrk debian/4.1.0-3+b2, ab 2.3,
nginx 1.22.1, curl 7.88.1, redis-benchmark 7.0.15, pgbench 15.18, py-spy 0.4.3) against a local
nginx, iperf3 -s, redis-server, PostgreSQL 15 and the agent; long parts are cut where marked.
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
    PROFILE_OTHER,
    TOOL_VERSIONS,
    UnparsableOutput,
    parse_ab,
    parse_iperf3_json,
    parse_pgbench,
    parse_program_version,
    parse_pyspy_raw,
    parse_redis_benchmark_csv,
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

# redis-benchmark -h 127.0.0.1 -p PORT -c 16 -P 16 -n 200000 -t set,get --csv (its stdout)
REDIS_BENCHMARK_CSV = """"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
"SET","340136.06","0.645","0.144","0.543","1.103","2.287","6.639"
"GET","316455.69","0.672","0.120","0.599","1.071","3.207","5.423"
"""

# pgbench -h 127.0.0.1 -p PORT -U postgres -c 16 -j 2 -T 3 -S postgres (stdout; stderr said "starting vacuum...end.")
PGBENCH_SELECT_ONLY = """pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 1
query mode: simple
number of clients: 16
number of threads: 2
maximum number of tries: 1
duration: 3 s
number of transactions actually processed: 41261
number of failed transactions: 0 (0.000%)
latency average = 1.137 ms
initial connection time = 76.876 ms
tps = 14071.566814 (without initial connection time)
"""

# pgbench -h 127.0.0.1 -p 1 -U postgres -c 16 -j 2 -T 1 -S -n postgres: nothing listens (exit status 1)
PGBENCH_REFUSED = """pgbench: error: connection to server at "127.0.0.1", port 1 failed: Connection refused
\tIs the server running on that host and accepting TCP/IP connections?
pgbench: error: could not create connection for setup
"""

# py-spy record --pid AGENT --subprocesses --native --rate 200 --duration 2 --format raw: the wss agent
# (uvloop) under one iperf3 stream, each way. A few of the real lines: every stack starts with the same
# frames up to uv_run (PYSPY_OUTER, as captured), then its own (PYSPY_STACKS, as captured), then a count.
PYSPY_OUTER = (
    ''
    'process 2671:"/root/.pyenv/versions/3.11.7/bin/python3 -m reverse_websockify.cli.agent --service=127.0.0.1:45883 --reverse-websockify=wss://127.0.0.1:41379/forward_to_me/iperf3-wss --ca-cert=/tmp/rw-bench-c_1c4tq_/wss/agent/server.cert.pem --client-cert=/tmp/rw-bench-c_1c4tq_/wss/agent/client.cert.pem --client-key=/tmp/rw-bench-c_1c4tq_/wss/agent/client.key.pem";'
    '0x7f594404524a (libc.so.6);_run_module_as_main (<frozen runpy>:198);'
    '_run_code (<frozen runpy>:88);<module> (reverse_websockify/cli/agent.py:100);'
    'main (reverse_websockify/cli/agent.py:94);run_event_loop (reverse_websockify/cli/common.py:62);'
    'run (uvloop/__init__.py:92);Runner.run (asyncio/runners.py:118);'
    'run_until_complete (loop.c:35410);run_until_complete (loop.c:35886);Py_XDECREF (object.h:602);'
    'Py_DECREF (object.h:537);run_forever (loop.c:33192);run_forever (loop.c:33397);'
    'Loop__run (loop.c:20313);Loop__Loop__run (loop.c:19903)'
)
PYSPY_STACKS = [
    (  # 1 sample(s)
        'uv_run (core.c:464);uv__io_poll (linux.c:1546);uv__stream_io (stream.c:1210);'
        'uv__read (stream.c:1154);loop___uv_stream_buffered_on_read (loop.c:114289);'
        'SSLProtocol_buffer_updated_impl (loop.c:153386);SSLProtocol__do_read (loop.c:159081);'
        'SSLProtocol__do_read__copied (loop.c:160288);SSLObject.read (ssl.py:921);'
        '_ssl__SSLSocket_read (_ssl.c.h:301);_ssl__SSLSocket_read_impl (_ssl.c:2544);'
        'SSL_read_ex (libssl.so.3);0x7f594373f70e (libssl.so.3);0x7f594376a9b0 (libssl.so.3);'
        '0x7f594376c701 (libssl.so.3);0x7f594376f6a6 (libssl.so.3);EVP_DecryptUpdate (libcrypto.so.3);'
        '0x7f594354049c (libcrypto.so.3);0x7f594353f9ff (libcrypto.so.3);'
        '0x7f5943540690 (libcrypto.so.3);CRYPTO_gcm128_setiv (libcrypto.so.3);'
        '0x7f59432dcd20 (libcrypto.so.3)',
        1),
    (  # 1 sample(s)
        'uv_run (core.c:464);uv__io_poll (linux.c:1546);uv__stream_io (stream.c:1210);'
        'uv__read (stream.c:1154);loop___uv_stream_buffered_on_read (loop.c:114289);'
        'SSLProtocol_buffer_updated_impl (loop.c:153386);SSLProtocol__do_read (loop.c:159081);'
        'SSLProtocol__do_read__copied (loop.c:160542);Py_XDECREF (object.h:602);'
        'Py_DECREF (object.h:537);Connection.data_received (websockets/asyncio/connection.py:1098);'
        'Connection.send_data (websockets/asyncio/connection.py:971);write (loop.c:149558);'
        'write (loop.c:149735);SSLProtocol__write_appdata (loop.c:158280);'
        'SSLProtocol__process_outgoing (loop.c:158864);UVStream_write (loop.c:110085);'
        'UVStream__initiate_write (loop.c:107357);UVStream__exec_write (loop.c:107733);'
        'UVStream__try_write (loop.c:106818);write (libc.so.6)',
        1),
    (  # 6 sample(s)
        'uv_run (core.c:464);uv__io_poll (linux.c:1546);uv__stream_io (stream.c:1210);'
        'uv__read (stream.c:1154);loop___uv_stream_buffered_on_read (loop.c:114289);'
        'SSLProtocol_buffer_updated_impl (loop.c:153386);SSLProtocol__do_read (loop.c:159081);'
        'SSLProtocol__do_read__copied (loop.c:160586);Py_XDECREF (object.h:602);'
        'Py_DECREF (object.h:537);Connection.data_received (websockets/asyncio/connection.py:1091);'
        'Protocol.receive_data (websockets/protocol.py:272);'
        'StreamReader.feed_data (websockets/streams.py:146);0x7f5944170d8a (libc.so.6)',
        6),
    (  # 2 sample(s)
        'uv_run (core.c:464);uv__io_poll (linux.c:1546);uv__stream_io (stream.c:1210);'
        'uv__read (stream.c:1154);loop___uv_stream_buffered_on_read (loop.c:114289);'
        'SSLProtocol_buffer_updated_impl (loop.c:153386);SSLProtocol__do_read (loop.c:159081);'
        'SSLProtocol__do_read__copied (loop.c:160586);Py_XDECREF (object.h:602);'
        'Py_DECREF (object.h:537);Connection.data_received (websockets/asyncio/connection.py:1116);'
        'DirectDelivery.process_event (reverse_websockify/wsconnection.py:114);'
        'Tunnel.run.<locals>.deliver (reverse_websockify/tunnel.py:282);'
        'Tunnel._on_message (reverse_websockify/tunnel.py:141);'
        'Tunnel._dispatch (reverse_websockify/tunnel.py:153);'
        'ServiceStream.on_data (reverse_websockify/service_side.py:96);'
        'StreamEndpoint.on_data (reverse_websockify/streams.py:163);'
        'StreamEndpoint._write (reverse_websockify/streams.py:195);write (loop.c:110189);'
        'write (loop.c:110207);UVStream_write (loop.c:109938);UVHandle__ensure_alive (loop.c:87037)',
        2),
    (  # 3 sample(s)
        'uv_run (core.c:452);uv__run_idle (loop-watcher.c:68);uv__queue_empty (queue.h:33);'
        'loop_cb_idle_callback (loop.c:92362);Handle__run (loop.c:70959);Loop__on_idle (loop.c:19387);'
        'Handle__run (loop.c:70935);Py_DECREF (object.h:537);task_step (_asynciomodule.c:2990);'
        'task_step_impl (_asynciomodule.c:2704);Tunnel._write_loop (reverse_websockify/tunnel.py:232);'
        'write_frames (reverse_websockify/wsconnection.py:141);'
        'Protocol.send_binary (websockets/protocol.py:364);'
        'Protocol.send_frame (websockets/protocol.py:759);Frame.serialize (websockets/frames.py:381);'
        'token_bytes (secrets.py:46);SystemRandom.randbytes (random.py:812)',
        3),
    (  # 34 sample(s)
        'uv_run (core.c:464);uv__io_poll (linux.c:1452);epoll_pwait (libc.so.6)',
        34),
    (  # 3 sample(s)
        'uv_run (core.c:464);uv__io_poll (linux.c:1546);uv__stream_io (stream.c:1210);'
        'uv__read (stream.c:1154);loop___uv_stream_buffered_on_read (loop.c:114289);'
        'SSLProtocol_buffer_updated_impl (loop.c:153386);SSLProtocol__do_read (loop.c:159081);'
        'SSLProtocol__do_read__copied (loop.c:160586);Py_XDECREF (object.h:602);'
        'Py_DECREF (object.h:537);Connection.data_received (websockets/asyncio/connection.py:1091);'
        'Protocol.receive_data (websockets/protocol.py:273);'
        'ClientProtocol.parse (websockets/client.py:348);Protocol.parse (websockets/protocol.py:603);'
        'Frame.parse (websockets/frames.py:327)',
        3),
    (  # 2 sample(s)
        'uv_run (core.c:464);uv__io_poll (linux.c:1546);uv__stream_io (stream.c:1210);'
        'uv__read (stream.c:1154);loop___uv_stream_buffered_on_read (loop.c:114289);'
        'SSLProtocol_buffer_updated_impl (loop.c:153386);SSLProtocol__do_read (loop.c:159081);'
        'SSLProtocol__do_read__copied (loop.c:160542);Py_XDECREF (object.h:602);'
        'Py_DECREF (object.h:537);Connection.data_received (websockets/asyncio/connection.py:1116);'
        'DirectDelivery.process_event (reverse_websockify/wsconnection.py:114);'
        'Tunnel.run.<locals>.deliver (reverse_websockify/tunnel.py:282);'
        'Tunnel._on_message (reverse_websockify/tunnel.py:144);'
        'Tunnel._forget_ended (reverse_websockify/tunnel.py:212)',
        2),
]
PYSPY_RAW = "".join(f"{PYSPY_OUTER};{stack} {count}\n" for stack, count in PYSPY_STACKS)


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


def test_redis_benchmark_rate_and_latencies_per_test() -> None:
    got = parse_redis_benchmark_csv(REDIS_BENCHMARK_CSV)
    assert got == {"SET": {"rps": 340136.06, "avg_ms": 0.645, "p50_ms": 0.543, "p99_ms": 2.287},
                   "GET": {"rps": 316455.69, "avg_ms": 0.672, "p50_ms": 0.599, "p99_ms": 3.207}}


def test_redis_benchmark_csv_after_other_text() -> None:
    """run_tool appends stderr; redis-benchmark writes warnings there (e.g. when CONFIG is refused)."""
    got = parse_redis_benchmark_csv(REDIS_BENCHMARK_CSV + "\nWARNING: Could not fetch server CONFIG\n")
    assert set(got) == {"SET", "GET"}


@pytest.mark.parametrize("out", [
    "",
    # redis-benchmark ... -p 1: nothing listens (it retries until killed)
    "Could not connect to Redis at 127.0.0.1:1: Connection refused\nWARNING: Could not fetch server CONFIG\n",
    REDIS_BENCHMARK_CSV.splitlines()[0] + "\n",  # the header and no row
    REDIS_BENCHMARK_CSV.replace('"340136.06"', '""'),
])
def test_redis_benchmark_without_figures_is_unparsable(out: str) -> None:
    with pytest.raises(UnparsableOutput):
        parse_redis_benchmark_csv(out)


def test_pgbench_select_only() -> None:
    assert parse_pgbench(PGBENCH_SELECT_ONLY) == {"tps": 14071.566814, "transactions": 41261, "failed": 0,
                                                  "latency_ms": 1.137}


def test_pgbench_with_its_stderr_mixed_in() -> None:
    """run_tool appends stderr, where pgbench says "starting vacuum...end." (without -n)."""
    out = PGBENCH_SELECT_ONLY.replace("transaction type:", "starting vacuum...end.\ntransaction type:")
    assert parse_pgbench(out)["tps"] == 14071.566814


def test_pgbench_failed_transactions() -> None:
    out = PGBENCH_SELECT_ONLY.replace("number of failed transactions: 0 (0.000%)",
                                      "number of failed transactions: 12 (0.029%)")
    assert parse_pgbench(out)["failed"] == 12


def test_pgbench_that_could_not_connect_is_unparsable() -> None:
    with pytest.raises(UnparsableOutput):
        parse_pgbench(PGBENCH_REFUSED)


def test_pyspy_shares_by_innermost_frame_that_says_where() -> None:
    samples, shares = parse_pyspy_raw(PYSPY_RAW)
    # 34 of the 52 samples wait in epoll_pwait: not CPU, left out
    assert samples == 18
    assert shares == pytest.approx({
        "system calls (socket read/write)": 1 / 18,  # write() under uvloop's UVStream__try_write
        "TLS (ssl, OpenSSL)": 1 / 18,  # libcrypto under SSL_read_ex
        # feed_data's memcpy (a bare libc address), Frame.parse, the mask's randbytes under Frame.serialize
        "websockets (framing, masking)": (6 + 3 + 3) / 18,
        "reverse_websockify (our code)": 2 / 18,  # Tunnel._forget_ended
        "event loop (asyncio, uvloop)": 2 / 18,  # UVHandle__ensure_alive (loop.c)
        PROFILE_OTHER: 0.0,
    })
    assert sum(shares.values()) == pytest.approx(1.0)


def test_pyspy_stack_with_no_known_frame_is_other() -> None:
    assert parse_pyspy_raw("main (tool.py:3);0x7f0000000001 (libfoo.so) 5\n")[1][PROFILE_OTHER] == 1.0


@pytest.mark.parametrize("out", ["", "py-spy> Failed to find python version from target process\n",
                                 f"{PYSPY_OUTER};uv_run (core.c:464);uv__io_poll (linux.c:1452);epoll_pwait (libc.so.6) 7\n"])
def test_pyspy_without_busy_samples_is_unparsable(out: str) -> None:
    with pytest.raises(UnparsableOutput):
        parse_pyspy_raw(out)


@pytest.mark.parametrize("tool, out, version", [
    ("iperf3", "iperf 3.12 (cJSON 1.7.15)\nLinux vm 6.18.44-fc-v669 #1 SMP PREEMPT_DYNAMIC @0 x86_64\n", "3.12"),
    ("wrk", "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer\nUsage: wrk <options> <url>\n",
     "debian/4.1.0-3+b2"),
    ("ab", "This is ApacheBench, Version 2.3 <$Revision$>\n", "2.3"),
    ("nginx", "\nnginx version: nginx/1.22.1\n", "1.22.1"),
    ("curl", "curl 7.88.1 (x86_64-pc-linux-gnu) libcurl/7.88.1 OpenSSL/3.0.22 zlib/1.2.13\n", "7.88.1"),
    ("redis-benchmark", "redis-benchmark 7.0.15\n", "7.0.15"),
    ("pgbench", "pgbench (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n", "15.18"),
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


def test_loop_lag_between_two_readings_of_the_histogram() -> None:
    from bench.fleet_group import lag_summary

    inf = math.inf
    before = {0.001: 10.0, 0.005: 10.0, 0.01: 10.0, 0.025: 10.0, inf: 10.0}
    after = {0.001: 90.0, 0.005: 98.0, 0.01: 99.0, 0.025: 100.0, inf: 100.0}
    assert lag_summary(before, after) == {"samples": 90, "over_5ms": 2, "longest_ms_at_most": "25"}
    assert lag_summary(before, {**before, inf: 11.0}) == {"samples": 1, "over_5ms": 1, "longest_ms_at_most": "∞"}
    assert lag_summary(before, before) == {"samples": 0, "over_5ms": 0, "longest_ms_at_most": "0"}
