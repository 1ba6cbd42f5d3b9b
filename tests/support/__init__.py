"""What the tests and the benchmark (bench/) share: real processes, probes, services, deployments.

One copy of each helper, in small modules with one idea each:

- ``waiting``: wait_for, the poll-until-true loop every wait is built on;
- ``ports``: free loopback ports, and whether something listens on one;
- ``probes``: /proc readings (RSS, PSS, CPU time, fds) of a process or of its tree;
- ``logs``: the programs' ``--log-format json`` lines, read and matched on their fields;
- ``processes``: a started program with its output in a file;
- ``programs``: the command lines of the two programs (package CLIs or RW_BIN_DIR executables);
- ``loops``: an asyncio loop in a thread, for in-process services;
- ``services``: TCP services on loopback (echo and its faulty variants, a blackhole);
- ``clients``: user-side sockets (transfers, exchanges that may be cut, reading until closed);
- ``websocket``: fake agents and hand-made WebSocket frames;
- ``deployment``: a server with its config plus agents, as the tests and the benchmark start it;
- ``nginx``, ``tinyproxy``, ``certs``: the reference deployment's parts, for real.

Nothing here mocks a socket; everything listens on 127.0.0.1 only.
"""
