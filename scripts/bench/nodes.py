#!/usr/bin/env python3
"""Several nodes on one PostgreSQL: figures of the release `dirigent` with one node and with
three nodes on the same database, in one run.

Measures on this machine, for each layout (a fresh schema each):
  1. starts: N runs of a sleeping robot, one API call each, spread over the nodes in turn, on
     one agent (connected to the first node): time until all run;
  2. API latency while nothing else happens: GET /api/v1/robots and GET /api/v1/runs,
     sequential requests spread over the nodes (p50, p99);
  3. stop latency across nodes: a run on the agent of the first node, stopped through the
     last node; from the stop request to the answer of a wait for `stopped` on that node
     (p50, p99; the goal is p99 <= 100 ms on loopback).

    cargo build --release --bin dirigent && python3 scripts/bench/nodes.py
(needs PostgreSQL as the tests find it: DIRIGENT_TEST_PG_URL, else 127.0.0.1:5432 database test)
"""

import argparse
import os
import statistics
import subprocess
import tempfile
import time

from orchestrator import BINARY, PASSWORD, call, free_port

PG_URL = os.environ.get("DIRIGENT_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432/test")


def psql(sql, url=PG_URL):
    subprocess.run(["psql", url, "-Atqc", sql], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Api:
    """One node's API, logged in."""

    def __init__(self, base):
        self.base = base
        self.token = call(base, "POST", "/api/v1/login", {"username": "admin", "password": PASSWORD})["token"]

    def call(self, method, path, body=None):
        return call(self.base, method, path, body, self.token)


def percentile(values, fraction):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * fraction))]


class Cluster:
    """`n_nodes` nodes on a schema of their own, and one agent connected to the first."""

    def __init__(self, workdir, n_nodes, capacity):
        self.schema = f"bench_nodes_{os.getpid()}_{n_nodes}"
        psql(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE; CREATE SCHEMA {self.schema}")
        separator = "&" if "?" in PG_URL else "?"
        url = f"{PG_URL}{separator}options=-c%20search_path%3D{self.schema}"
        self.processes = []
        self.apis = []
        for n in range(n_nodes):
            port = free_port()
            env = dict(os.environ, DIRIGENT_ADMIN_PASSWORD=PASSWORD, DIRIGENT_LOG="warn")
            node = subprocess.Popen(
                [BINARY, "serve", "--listen", f"127.0.0.1:{port}", "--data", os.path.join(workdir, f"node-{n}"),
                 "--database-url", url, "--node-id", f"node-{n}", "--no-local-agent"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for line in node.stdout:
                if " listening on " in line:
                    break
            self.processes.append(node)
            self.apis.append(Api(f"http://127.0.0.1:{port}"))
        first = self.apis[0]
        token = first.call("POST", "/api/v1/agents/enrollment-tokens", {})["token"]
        servers = ",".join(api.base for api in self.apis)
        self.processes.append(subprocess.Popen(
            [BINARY, "agent", "--server", servers, "--data", os.path.join(workdir, f"agent-{n_nodes}"),
             "--name", "bench", "--capacity", str(capacity), "--enroll-token", token],
            env=dict(os.environ, DIRIGENT_LOG="warn"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while not any(a["state"] == "online" for a in first.call("GET", "/api/v1/agents")):
            time.sleep(0.01)

    def api(self, n):
        return self.apis[n % len(self.apis)]

    def close(self):
        for process in reversed(self.processes):
            process.terminate()
            process.wait()
        psql(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


def wait_state(api, run_id, state, timeout=50):
    return api.call("GET", f"/api/v1/runs/{run_id}?wait_for={state}&timeout_seconds={timeout}")


def bench_layout(workdir, n_nodes, count, requests, stops):
    cluster = Cluster(workdir, n_nodes, count + 1)
    try:
        first = cluster.api(0)
        first.call("POST", "/api/v1/robots", {"name": "sleeper", "argv": ["sleep", "1000"], "max_parallel": count + 1})
        began = time.perf_counter()
        ids = [cluster.api(n).call("POST", "/api/v1/runs", {"robot": "sleeper"})["id"] for n in range(count)]
        for n, run_id in enumerate(ids):
            wait_state(cluster.api(n), run_id, "running")
        elapsed = time.perf_counter() - began
        for n, run_id in enumerate(ids):
            cluster.api(n).call("POST", f"/api/v1/runs/{run_id}/kill")
        for run_id in ids:
            wait_state(first, run_id, "killed")

        latencies = {"/api/v1/robots": [], "/api/v1/runs?limit=50": []}
        for path, samples in latencies.items():
            for n in range(requests):
                began_request = time.perf_counter()
                cluster.api(n).call("GET", path)
                samples.append((time.perf_counter() - began_request) * 1000)

        last = cluster.api(n_nodes - 1)
        stop_ms = []
        for _ in range(stops):
            run_id = last.call("POST", "/api/v1/runs", {"robot": "sleeper"})["id"]
            wait_state(last, run_id, "running")
            began_stop = time.perf_counter()
            last.call("POST", f"/api/v1/runs/{run_id}/stop")
            ended = wait_state(last, run_id, "stopped")
            stop_ms.append((time.perf_counter() - began_stop) * 1000)
            assert ended["state"] == "stopped", ended
        return {
            "starts_s": elapsed,
            "latencies": latencies,
            "stop_ms": stop_ms,
        }
    finally:
        cluster.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--stops", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        results = {n: bench_layout(workdir, n, args.runs, args.requests, args.stops) for n in (1, 3)}
    print(f"PostgreSQL at {PG_URL.split('@')[-1]}, one agent, release build, loopback")
    print(f"{'':<48}{'1 node':>14}{'3 nodes':>14}")
    row = lambda label, values: print(f"{label:<48}" + "".join(f"{value:>14}" for value in values))
    row(f"{args.runs} runs all running, s (starts/s)",
        [f"{r['starts_s']:.2f} ({args.runs / r['starts_s']:.0f})" for r in results.values()])
    for path in results[1]["latencies"]:
        row(f"GET {path} p50 / p99, ms",
            [f"{statistics.median(r['latencies'][path]):.2f} / {percentile(r['latencies'][path], 0.99):.2f}"
             for r in results.values()])
    row("stop through the last node -> stopped, p50 / p99 ms",
        [f"{statistics.median(r['stop_ms']):.1f} / {percentile(r['stop_ms'], 0.99):.1f}" for r in results.values()])
    p99 = percentile(results[3]["stop_ms"], 0.99)
    verdict = "met" if p99 <= 100 else "NOT met"
    print(f"goal: a run stopped through another node than its agent's stops within 100 ms (p99): {verdict} ({p99:.1f} ms)")


if __name__ == "__main__":
    main()
