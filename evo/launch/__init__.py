"""Launching one evaluation: the runner (subprocess, scrubbed env, process group, limits), the
watchdog it starts by file path, the log parser (pure), and prepare.py seen from the harness."""
