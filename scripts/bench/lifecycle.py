#!/usr/bin/env python3
"""Robot lifecycle figures of the release `dirigent`, and supervisord side by side.

Measures on this machine:
  1. start latency: from the API call to the robot's process running (it writes to a FIFO
     the bench is reading), with the built-in local agent;
  2. 1,000 concurrent runs of a sleeping robot on one agent: time until all run, and the
     memory of the server, the agent and its keeper;
  3. pause, resume and kill of a robot whose process tree holds 100 processes;
  4. supervisord starting the same 1,000 programs, and the ratio.

    cargo build --release && python3 scripts/bench/lifecycle.py
(installs supervisor from PyPI when missing)
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.path.join(ROOT, "target", "release", "dirigent")
PASSWORD = "bench-password-1"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Api:
    def __init__(self, base):
        self.base = base
        self.token = None

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("content-type", "application/json")
        if self.token:
            request.add_header("authorization", "Bearer " + self.token)
        with urllib.request.urlopen(request, timeout=120) as response:
            text = response.read()
            return json.loads(text) if text else None


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def group_states(pgid):
    states = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # Zombies are dead already; whoever adopted them reaps them.
        if int(fields[2]) == pgid and fields[0] != "Z":
            states.append(fields[0])
    return states


def start_server(workdir, extra):
    port = free_port()
    env = dict(os.environ, DIRIGENT_ADMIN_PASSWORD=PASSWORD, DIRIGENT_LOG="warn")
    server = subprocess.Popen(
        [BINARY, "serve", "--listen", f"127.0.0.1:{port}", "--data", os.path.join(workdir, "data")] + extra,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in server.stdout:
        if " listening on " in line:
            break
    api = Api(f"http://127.0.0.1:{port}")
    api.token = api.call("POST", "/api/v1/login", {"username": "admin", "password": PASSWORD})["token"]
    return server, api


def wait_state(api, run_id, state, timeout=120):
    return api.call("GET", f"/api/v1/runs/{run_id}?wait_for={state}&timeout_seconds={timeout}")


def bench_start_latency(workdir, samples):
    server, api = start_server(workdir, [])
    try:
        fifo = os.path.join(workdir, "started.fifo")
        os.mkfifo(fifo)
        api.call("POST", "/api/v1/robots", {
            "name": "probe", "argv": ["sh", "-c", f"echo x > {fifo}; exec sleep 1000"], "max_parallel": 1})
        latencies = []
        for _ in range(samples):
            reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            began = time.perf_counter()
            run = api.call("POST", "/api/v1/runs", {"robot": "probe"})
            os.set_blocking(reader, True)
            os.read(reader, 16)
            latencies.append((time.perf_counter() - began) * 1000)
            os.close(reader)
            api.call("POST", f"/api/v1/runs/{run['id']}/kill")
            wait_state(api, run["id"], "killed")
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"start latency, API call -> robot running ({samples} starts)   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   goal p50 <= 5, p99 <= 20")
    finally:
        server.terminate()
        server.wait()


def bench_thousand(workdir, count):
    server, api = start_server(workdir, ["--no-local-agent"])
    agent = None
    try:
        token = api.call("POST", "/api/v1/agents/enrollment-tokens", {})["token"]
        agent = subprocess.Popen(
            [BINARY, "agent", "--server", api.base, "--data", os.path.join(workdir, "agent"),
             "--name", "bench", "--capacity", str(count), "--enroll-token", token],
            env=dict(os.environ, DIRIGENT_LOG="warn"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        api.call("POST", "/api/v1/robots", {"name": "sleeper", "argv": ["sleep", "1000"], "max_parallel": count})
        while not any(a["state"] == "online" for a in api.call("GET", "/api/v1/agents")):
            time.sleep(0.01)
        began = time.perf_counter()
        ids = [api.call("POST", "/api/v1/runs", {"robot": "sleeper"})["id"] for _ in range(count)]
        for run_id in ids:
            wait_state(api, run_id, "running")
        elapsed = time.perf_counter() - began
        time.sleep(1)
        print(f"{count} concurrent sleeping runs on one agent: all running after {elapsed:5.2f} s ({count / elapsed:6.0f} starts/s)")
        with open(os.path.join(workdir, "agent", "keeper.lock")) as lock:
            keeper = int(lock.read().strip())
        print(f"    memory with {count} runs: server {rss_mib(server.pid):6.1f} MiB, agent {rss_mib(agent.pid):6.1f} MiB, "
              f"its keeper {rss_mib(keeper):6.1f} MiB")
        began = time.perf_counter()
        for run_id in ids:
            api.call("POST", f"/api/v1/runs/{run_id}/kill")
        for run_id in ids:
            wait_state(api, run_id, "killed")
        print(f"    killing all {count}: {time.perf_counter() - began:5.2f} s")
        return elapsed
    finally:
        if agent:
            agent.terminate()
            agent.wait()
        server.terminate()
        server.wait()


def bench_tree(workdir, repeats):
    server, api = start_server(workdir, [])
    try:
        api.call("POST", "/api/v1/robots", {
            "name": "tree", "argv": ["sh", "-c", "for i in $(seq 99); do sleep 1000 & done; echo ready; wait"]})
        confirmed = {"pause": [], "resume": [], "kill": []}
        observed = {"pause": [], "resume": [], "kill": []}
        done = {
            "pause": lambda states: all(state == "T" for state in states),
            "resume": lambda states: not any(state == "T" for state in states),
            "kill": lambda states: not states,
        }
        target = {"pause": "paused", "resume": "running", "kill": "killed"}
        for _ in range(repeats):
            run = api.call("POST", "/api/v1/runs", {"robot": "tree"})
            run = wait_state(api, run["id"], "running")
            pgid = run["pid"]
            while len(group_states(pgid)) < 100:
                time.sleep(0.005)
            for operation in ("pause", "resume", "kill"):
                began = time.perf_counter()
                api.call("POST", f"/api/v1/runs/{run['id']}/{operation}")
                wait_state(api, run["id"], target[operation])
                confirmed[operation].append((time.perf_counter() - began) * 1000)
                deadline = time.perf_counter() + 5
                while not done[operation](group_states(pgid)):
                    assert time.perf_counter() < deadline, f"{operation} did not reach every process"
                observed[operation].append((time.perf_counter() - began) * 1000)
        for operation in ("pause", "resume", "kill"):
            print(f"{operation:<6} a 100-process robot: API call -> agent confirms {statistics.median(confirmed[operation]):6.2f} ms, "
                  f"-> every process seen changed in /proc {statistics.median(observed[operation]):6.2f} ms (median of {repeats})")
    finally:
        server.terminate()
        server.wait()


def bench_supervisord(workdir, count):
    try:
        import supervisor  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "supervisor"], check=True)
    conf = os.path.join(workdir, "supervisord.conf")
    with open(conf, "w") as out:
        out.write(f"[supervisord]\nnodaemon=true\nlogfile={workdir}/supervisord.log\npidfile={workdir}/supervisord.pid\n"
                  f"minfds=4096\n[unix_http_server]\nfile={workdir}/supervisor.sock\n"
                  f"[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n")
        for n in range(count):
            out.write(f"[program:sleeper{n}]\ncommand=sleep 1000\nautostart=true\nstartsecs=0\nstdout_logfile=NONE\nstderr_logfile=NONE\n")
    began = time.perf_counter()
    daemon = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", conf],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            children = subprocess.run(["pgrep", "-c", "-P", str(daemon.pid)], capture_output=True, text=True).stdout.strip()
            if children and int(children) >= count:
                break
            time.sleep(0.01)
        elapsed = time.perf_counter() - began
        print(f"supervisord 4: {count} programs all started after {elapsed:5.2f} s ({count / elapsed:6.0f} starts/s), RSS {rss_mib(daemon.pid):6.1f} MiB")
        return elapsed
    finally:
        daemon.terminate()
        daemon.wait()
        subprocess.run(["pkill", "-f", "sleep 1000"], check=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    if not os.path.exists(BINARY):
        raise SystemExit("build first: cargo build --release")
    with tempfile.TemporaryDirectory() as workdir:
        def fresh(name):
            path = os.path.join(workdir, name)
            os.makedirs(path)
            return path

        bench_start_latency(fresh("latency"), args.samples)
        dirigent = bench_thousand(fresh("thousand"), args.count)
        bench_tree(fresh("tree"), 20)
        supervisord = bench_supervisord(fresh("supervisord"), args.count)
        print(f"starting {args.count} programs: Dirigent {dirigent:5.2f} s, supervisord {supervisord:5.2f} s, ratio {supervisord / dirigent:4.1f}x")


if __name__ == "__main__":
    main()
