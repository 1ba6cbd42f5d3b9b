"""A fleet of simulated agents in one process, for the benchmark's group ``fleet`` (issue 14).

- ``agent``: one simulated agent — the real agent's handshake (subprotocols, User-Agent, no
  compression: ``reverse_websockify.wsconnection.connection_options``), its backoff with jitter
  (``reverse_websockify.agent.backoff_delays``), its session rules (``reverse_websockify.session.Session``,
  resume included) and an in-process echo service behind it, so every simulated agent is a
  working tunnel;
- ``fleet``: N of them on one event loop, with what is measured: the time to attach all N, how
  many are attached at any moment, failures and disconnections by reason;
- ``config``: a server config.toml with N services (ports outside the ephemeral range);
- ``__main__``: the command line, ``python3 -m bench.fleet --agents 8000 --server 127.0.0.1:PORT``.
"""
