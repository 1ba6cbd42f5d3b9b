"""The reverse_websockify benchmark (run it as ``python3 bench/run.py``; see bench/README.md).

Modules: settings (the command line), tools (running iperf3/wrk/ab/curl and parsing their
output), fixtures (nginx, the rendezvous, the stalled download), results (rows, medians,
markdown and JSON), scenarios (what is measured), header (the run's identity), cli (main).
Processes, probes, services and the deployment come from tests/support, shared with the tests.
"""
