"""The figures of a run: rows of direct/tunnel measurements, their medians, the markdown and JSON."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.progress import progress
from bench.settings import Settings


@dataclass
class Row:
    key: str
    label: str
    unit: str
    direct: list[float | None] = field(default_factory=list)
    tunnel: list[float | None] = field(default_factory=list)
    digits: int = 2
    ratio: bool = True  # tunnel/direct; for latencies and failures it is still tunnel/direct

    def ratios(self) -> list[float]:
        out = []
        for d, t in zip(self.direct, self.tunnel):
            if d is not None and t is not None and d > 0:
                out.append(t / d)
        return out


def median_spread(values: list[float | None]) -> tuple[float, float, float] | None:
    vals = [v for v in values if v is not None and v == v]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def fmt(stats: tuple[float, float, float] | None, digits: int, pct: bool = False) -> str:
    if stats is None:
        return "–"
    med, lo, hi = stats
    if pct:
        text = f"{med * 100:.1f} %"
        return text if lo == hi else f"{text} ({lo * 100:.1f}–{hi * 100:.1f})"
    text = f"{med:,.{digits}f}"
    return text if lo == hi else f"{text} ({lo:,.{digits}f}–{hi:,.{digits}f})"


class Results:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rows: dict[str, Row] = {}
        self.memory: dict[str, Any] = {}
        self.link: dict[str, Any] = {}  # the far link emulator's validation (group far)
        self.profile: dict[str, Any] = {}  # where the wss agent's CPU goes (--profile)
        self.fleet: dict[str, Any] = {}  # group fleet: N simulated agents on one server
        self.shards: dict[str, Any] = {}  # group shards: K busy tunnels on 1 server process and on 2 shards
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.log_problems: list[str] = []
        self.interruptions: list[str] = []
        self.header: dict[str, Any] = {}

    def row(self, key: str, label: str, unit: str, digits: int = 2) -> Row:
        if key not in self.rows:
            self.rows[key] = Row(key, label, unit, digits=digits)
        return self.rows[key]

    def fail(self, message: str) -> None:
        progress("FAILED: " + message.splitlines()[0])
        self.failures.append(message)

    def to_json(self) -> dict[str, Any]:
        return {
            "header": self.header,
            "settings": {k: (str(v) if isinstance(v, Path) else sorted(v) if isinstance(v, set) else v)
                         for k, v in vars(self.settings).items()},
            "throughput": {
                r.key: {
                    "label": r.label, "unit": r.unit, "direct": r.direct, "tunnel": r.tunnel,
                    "ratio": r.ratios(),
                    "median": {"direct": _med(r.direct), "tunnel": _med(r.tunnel), "ratio": _med(r.ratios())},
                } for r in self.rows.values()
            },
            "memory": self.memory,
            "link_emulator": self.link,
            "profile": self.profile,
            "fleet": self.fleet,
            "shards": shards_json(self.shards),
            "failures": self.failures,
            "notes": self.notes,
            "log_problems": self.log_problems,
            "tunnel_interruptions": self.interruptions,
        }

    def markdown(self) -> str:
        h = self.header
        out = [
            f"### reverse_websockify {h.get('version', '?')} benchmark, {h.get('date', '?')}",
            "",
            f"- machine: {h.get('cores')} cores ({h.get('cpu')}), Linux {h.get('kernel')}, "
            f"load average at start {h.get('loadavg_start')}",
            f"- programs: {h.get('mode')}: {h.get('program_version')}; event loop: "
            f"{h.get('event_loop') or 'default (auto)'}"
            + (f"; server config adds `{h['server_config']}`" if h.get("server_config") else ""),
            f"- Python {h.get('python')}, websockets {h.get('websockets')}; git {h.get('git')}",
            f"- tools: {h.get('tools')}",
            f"- {self.settings.repeat} repetition(s){' (--quick)' if self.settings.quick else ''}; "
            f"iperf3 -t {self.settings.bulk_seconds}, wrk -t2 -d{self.settings.wrk_seconds}s, "
            f"ab -n {self.settings.ab_requests}{self._more_settings()}; median (min–max); tunnel/direct is the "
            f"median of the per-repetition ratios; run took {h.get('duration_s', '?')} s",
            "",
        ]
        if self.rows:
            out += ["| test | unit | direct | tunnel | tunnel/direct |", "|---|---|---:|---:|---:|"]
            for r in self.rows.values():
                ratio = "–" if not r.ratio else fmt(median_spread(r.ratios()), 2, pct=True)
                out.append(f"| {r.label} | {r.unit} | {fmt(median_spread(r.direct), r.digits)} | "
                           f"{fmt(median_spread(r.tunnel), r.digits)} | {ratio} |")
            out.append("")
        if self.memory:
            out += ["| memory | value |", "|---|---:|"]
            for label, value in memory_lines(self.memory):
                out.append(f"| {label} | {value} |")
            out.append("")
        if self.link:
            out += ["| far link emulator (bench/linkemu.py) | configured | measured |", "|---|---:|---:|"]
            out += [f"| {label} | {configured} | {measured} |" for label, configured, measured in link_lines(self.link)]
            out.append("")
        if self.profile:
            ways = list(self.profile)
            out += [f"| where the agent's CPU goes on the wss path (py-spy, innermost frame) | {' | '.join(ways)} |",
                    "|---|" + "---:|" * len(ways)]
            parts = list(self.profile[ways[0]]["shares"])
            out += [f"| {part} | " + " | ".join(f"{self.profile[w]['shares'][part] * 100:.0f} %" for w in ways) + " |"
                    for part in parts]
            out.append("| busy samples (200 per second, not counting epoll waits) | " + " | ".join(
                str(self.profile[w]["samples"]) for w in ways) + " |")
            out.append("| iperf3 1 stream while profiled, Gbit/s | " + " | ".join(
                "–" if self.profile[w]["gbit"] is None else f"{self.profile[w]['gbit']:.2f}" for w in ways) + " |")
            out.append("| CPU during that run, cores: agent / nginx / server | " + " | ".join(
                " / ".join(f"{c:.2f}" for c in self.profile[w]["cores"].values()) for w in ways) + " |")
            out.append("")
        if self.shards:
            out += shards_markdown(self.shards)
        if self.fleet:
            out += fleet_markdown(self.fleet)
        for note in self.notes:
            out.append(f"- note: {note}")
        if self.failures:
            out.append("")
            out.append(f"**{len(self.failures)} failure(s):**")
            for f in self.failures:
                out.append(f"- `{f.splitlines()[0]}`")
        if self.interruptions:
            out.append("")
            out.append(f"**{len(self.interruptions)} tunnel interruption(s)** (an agent's WebSocket broke and it "
                       "reconnected; the next measurement waited for it):")
            out += [f"- {i}" for i in self.interruptions]
        if self.log_problems:
            out.append("")
            out.append(f"**Errors in the server/agent logs ({len(self.log_problems)} distinct, first 10):**")
            out.append("```")
            out += self.log_problems[:10]
            out.append("```")
        return "\n".join(out) + "\n"


    def _more_settings(self) -> str:
        s, more = self.settings, ""
        if "far" in s.only:
            more += f", far link iperf3 -t {s.far_seconds}"
        if "workloads" in s.only:
            more += f", redis-benchmark -n {s.redis_requests}, pgbench -T {s.pgbench_seconds}"
        if "shards" in s.only:
            more += f", shards: {s.shard_tunnels} busy tunnels"
        return more


def _med(values: list[float | None]) -> float | None:
    s = median_spread(values)
    return None if s is None else s[0]


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def memory_lines(m: dict[str, Any]) -> list[tuple[str, str]]:
    lines = []
    peak = m.get("peak")
    if peak:
        for name, kib in peak.items():
            lines.append((f"peak RSS (VmHWM) during the throughput tests: {name}", mib(kib)))
    idle = m.get("idle_streams")
    if idle:
        n = idle["opened"]
        lines += [
            ("idle streams: opened and echoed / asked", f"{n} / {idle['asked']}"),
            (f"server RSS before → with {n} idle streams", f"{mib(idle['server_before_kib'])} → {mib(idle['server_after_kib'])}"),
            ("server RSS per idle stream", f"{idle['server_per_stream_kib']:.1f} KiB"),
            (f"agent RSS before → with {n} idle streams", f"{mib(idle['agent_before_kib'])} → {mib(idle['agent_after_kib'])}"),
            ("agent RSS per idle stream", f"{idle['agent_per_stream_kib']:.1f} KiB"),
            ("streams still open 5 s after the users closed (leak check)", str(idle["left_open_after_close"])),
        ]
    ag = m.get("agents")
    if ag:
        n = ag["attached"]
        lines += [
            ("idle agents attached / started", f"{n} / {ag['started']}"),
            (f"server RSS with no agent → with {n} agents", f"{mib(ag['server_before_kib'])} → {mib(ag['server_after_kib'])}"),
            ("server RSS per idle agent", f"{ag['server_per_agent_kib']:.1f} KiB"),
            ("agent process RSS (median, min–max)", f"{mib(ag['agent_rss_kib'][0])} ({mib(ag['agent_rss_kib'][1])}–{mib(ag['agent_rss_kib'][2])})"),
            ("agent process PSS, shared pages split (median)", mib(ag["agent_pss_kib_median"])),
            ("time for all agents to attach", f"{ag['attach_seconds']:.1f} s"),
        ]
    return lines


def link_lines(link: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The emulator's validation: (what, configured, measured) per RTT, then its own ceiling."""
    lines = []
    for rtt, v in link.get("rtts", {}).items():
        lines += [
            (f"RTT {rtt} ms: round trip of a 64-byte ping-pong (median of {v['pings']})",
             f"{rtt} ms", f"{v['rtt_ms']:.1f} ms"),
            (f"RTT {rtt} ms: direct iperf3 1 stream through it, median of both directions",
             f"{v['rate_mbit']:g} Mbit/s", f"{v['direct_mbit']:.1f} Mbit/s ({v['direct_mbit'] / v['rate_mbit'] * 100:.0f} %)"),
            (f"RTT {rtt} ms: the emulator's CPU while it carried that", "–", f"{v['emulator_cores']:.2f} cores"),
        ]
    ceiling = link.get("ceiling")
    if ceiling:
        lines.append(("its own ceiling: no delay, no rate limit, iperf3 1 stream through it",
                      "–", f"{ceiling['gbit']:.2f} Gbit/s at {ceiling['emulator_cores']:.2f} cores"))
    return lines


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:,.0f} ms"


def _s(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:.1f} s"


def fleet_markdown(f: dict[str, Any]) -> list[str]:
    """Group fleet: the wrk table (p99 ÷ baseline), then the fleet's figures (see bench/fleet_group.py)."""
    n = f.get("agents")
    out: list[str] = []
    runs = f.get("wrk", {})
    base = runs.get("baseline: only the real agent")
    if runs:
        out += [f"| fleet: wrk -c16 through one real agent, {n} simulated agents attached | req/s | p50 ms | "
                "p99 ms | p99 ÷ baseline p99 (target ≤ 2×) | errors | server's event loop held ≥ 5 ms "
                "(of samples every 10 ms); longest |", "|---|---:|---:|---:|---:|---:|---:|"]
        for label, v in runs.items():
            if v is None:
                out.append(f"| {label} | failed | | | | | |")
                continue
            ratio = "–" if not base or not base["p99_ms"] else f"{v['p99_ms'] / base['p99_ms']:.2f}×"
            lag = v.get("loop_lag")
            held = f"{lag['over_5ms']} of {lag['samples']}; ≤ {lag['longest_ms_at_most']} ms" if lag else "–"
            out.append(f"| {label} | {v['rps']:,.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {ratio} | "
                       f"{v['errors']:.0f} | {held} |")
        out.append("")
    lines: list[tuple[str, str]] = []
    att = f.get("attach")
    if att:
        lines += [("simulated agents attached / started", f"{att.get('attached')} / {n}"),
                  (f"time for all {n} to attach (first attempts ramp in: ≤ 256 handshakes in flight)",
                   _s(att.get("all_attached_seconds"))),
                  ("attach rate", f"{att.get('attach_rate_per_second')} agents/s"),
                  ("connection attempts / failures by reason", f"{att.get('attempts')} / {att.get('failures') or 'none'}")]
        cpu = att.get("cpu_seconds")
        if cpu:
            lines.append(("CPU time spent on the attach: server / generator",
                          f"{cpu['server']:.1f} s / {cpu['generator']:.1f} s"))
    if "server_rss_after_kib" in f:
        lines += [(f"server RSS with no simulated agent → with {n}",
                   f"{mib(f['server_rss_before_kib'])} → {mib(f['server_rss_after_kib'])}"),
                  ("server RSS per idle agent", f"{f['server_rss_per_agent_kib']:.1f} KiB"),
                  (f"server file descriptors with {n} agents", str(f.get("server_fds"))),
                  ("generator RSS (all simulated agents)", mib(f.get("generator_rss_kib", 0)))]
    cores = f.get("idle_cores")
    if cores:
        lines.append((f"CPU while idle ({f.get('idle_cpu_seconds')} s): server / generator",
                      f"{cores['server'] * 100:.1f} % / {cores['generator'] * 100:.1f} % of a core"))
    for when in ("baseline_http", "fleet_http"):
        got = f.get(when)
        if got:
            who = "only the real agent" if when == "baseline_http" else f"{n} agents"
            lines.append((f"one GET each, {who}: /metrics, / JSON, / HTML, /healthz", " · ".join(
                f"{_ms(v['seconds'])} ({v['bytes'] / 1024:,.0f} KiB)" if k != "healthz" else _ms(v["seconds"])
                for k, v in got.items())))
    timings = f.get("http_timings", {})
    for key, per in timings.items():
        for name, t in per.items():
            lines.append((f"during wrk: {'GET /metrics' if key == 'metrics' else 'GET / (' + name + ')'}, "
                          f"each second: median / slowest",
                          f"{_ms(t['median_s'])} / {_ms(t['max_s'])} ({t['count']} requests, "
                          f"{t['bytes'] / 1024:,.0f} KiB, {t['failed']} failed)"))
    hup = f.get("sighup")
    if hup:
        lines += [("SIGHUP (unchanged config) during wrk: slowest /healthz (polled every 50 ms)",
                   f"{_ms(hup.get('healthz_slowest_s'))} ({hup.get('healthz_failed')} failed)"),
                  ("SIGHUP alone: until the \"reloaded\" log line / slowest /healthz meanwhile",
                   f"{_s(hup.get('reload_seconds'))} / {_ms(hup.get('healthz_slowest_alone_s'))}")]
    for sig, r in f.get("restarts", {}).items():
        lines += [(f"restart by {sig}: server exited after (exit code)", f"{_s(r['exit_seconds'])} ({r['exit_code']})"),
                  (f"restart by {sig}: /healthz again after", _s(r["healthz_again_s"])),
                  (f"restart by {sig}: all {n} attached again after (target ≤ 30 s)",
                   f"{_s(r['all_attached_again_s'])} from the signal, {_s(r.get('all_attached_after_healthz_s'))} "
                   "from /healthz"),
                  (f"restart by {sig}: the real agent attached again after", _s(r["real_agent_again_s"])),
                  (f"restart by {sig}: agents stuck (not back within {r['waited_s']:.0f} s)", str(r["stuck"])),
                  (f"restart by {sig}: failed attempts meanwhile, by reason", str(r["failures_during"] or "none"))]
    final = f.get("generator_final")
    if final and final.get("protocol_errors"):
        lines.append(("protocol errors seen by the simulated agents", str(final["protocol_errors"])))
    if lines:
        out += [f"| fleet: {n} simulated agents (bench/fleet) | value |", "|---|---:|"]
        out += [f"| {label} | {value} |" for label, value in lines]
        out.append("")
    return out


SHARDS_ONE, SHARDS_TWO = "1 process", "2 shards"  # the columns of group shards (bench/shards_group.py)


def _shard_ratios(r: dict[str, Any]) -> list[float]:
    return [t / o for o, t in zip(r[SHARDS_ONE], r[SHARDS_TWO]) if o is not None and t is not None and o > 0]


def shards_json(f: dict[str, Any]) -> dict[str, Any]:
    """Group shards with, for every row, the per-repetition ratios 2 shards ÷ 1 process and the medians."""
    if not f:
        return {}
    rows = {key: {**r, "ratio_2_shards_to_1_process": _shard_ratios(r),
                  "median": {SHARDS_ONE: _med(r[SHARDS_ONE]), SHARDS_TWO: _med(r[SHARDS_TWO]),
                             "ratio": _med(_shard_ratios(r))}}
            for key, r in f.get("rows", {}).items()}
    return {**f, "rows": rows}


def shards_markdown(f: dict[str, Any]) -> list[str]:
    """Group shards: K busy tunnels at once, 1 server process against 2 shards; the ratio is per repetition."""
    out = [f"| shards: {f.get('tunnels')} busy tunnels at once (one agent each) | unit | 1 process | "
           f"{f.get('shards')} shards | {f.get('shards')} shards ÷ 1 process |", "|---|---|---:|---:|---:|"]
    for r in f.get("rows", {}).values():
        ratio = fmt(median_spread(_shard_ratios(r)), 2, pct=True) if r.get("ratio", True) else "–"
        out.append(f"| {r['label']} | {r['unit']} | {fmt(median_spread(r[SHARDS_ONE]), r['digits'])} | "
                   f"{fmt(median_spread(r[SHARDS_TWO]), r['digits'])} | {ratio} |")
    out.append("")
    split = f.get("cpu_split", {})
    if split:
        names = sorted({n for runs in split.values() for run in runs for n in run})
        out += [f"| shards: where the {f.get('shards')} shards' CPU went (cores, median) | " + " | ".join(names) + " |",
                "|---|" + "---:|" * len(names)]
        for test, runs in split.items():
            label = f.get("rows", {}).get(test, {}).get("label", test).split(":")[0]
            out.append(f"| {label} | " + " | ".join(
                fmt(median_spread([run.get(n) for run in runs]), 2) for n in names) + " |")
        out.append("")
    peak = f.get("peak_rss_kib")
    if peak:
        out += ["- shards: peak RSS (VmHWM, summed over the process tree) of the server: " + ", ".join(
            f"{what} {mib(kib)}" for what, kib in peak.items()) + " (2 shards: the supervisor and both shards)", ""]
    return out
