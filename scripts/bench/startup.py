#!/usr/bin/env python3
"""Start-up time and idle memory of the release `dirigent serve`.

Measures, over several runs, the time from spawning `dirigent serve` to its first 200 answer
on /healthz (first start on an empty data directory, and a restart on an existing one), and
the resident memory of the idle server after a few requests.

    cargo build --release && python3 scripts/bench/startup.py [--runs 7]
"""

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.path.join(ROOT, "target", "release", "dirigent")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthz(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_and_time(data_dir):
    port = free_port()
    env = dict(os.environ, DIRIGENT_ADMIN_PASSWORD="bench-password-1", DIRIGENT_LOG="warn")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [BINARY, "serve", "--listen", f"127.0.0.1:{port}", "--data", data_dir],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Polling is the measurement here: the first moment /healthz answers.
    while healthz(port) != 200:
        if proc.poll() is not None:
            raise SystemExit(f"dirigent serve exited with {proc.returncode}")
        time.sleep(0.0005)
    elapsed_ms = (time.perf_counter() - started) * 1000
    return proc, port, elapsed_ms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    if not os.path.exists(BINARY):
        raise SystemExit("build first: cargo build --release")

    first, again, rss = [], [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as data_dir:
            proc, _, ms = start_and_time(data_dir)
            first.append(ms)
            proc.terminate()
            proc.wait()
            proc, port, ms = start_and_time(data_dir)
            again.append(ms)
            for _ in range(100):
                healthz(port)
            time.sleep(1)
            rss.append(rss_kib(proc.pid) / 1024)
            proc.terminate()
            proc.wait()

    def row(name, values, unit, goal):
        print(f"{name:<44} median {statistics.median(values):7.1f} {unit}   min {min(values):7.1f}   max {max(values):7.1f}   goal {goal}")

    print(f"dirigent serve (release), SQLite, {args.runs} runs")
    row("start to first 200 /healthz, empty data dir", first, "ms", "<= 200 ms")
    row("start to first 200 /healthz, existing data", again, "ms", "<= 200 ms")
    row("idle RSS after 100 requests", rss, "MiB", "<= 30 MiB")


if __name__ == "__main__":
    main()
