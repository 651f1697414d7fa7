#!/usr/bin/env python3
"""Activities of the release `dirigent`: what running a program on an agent costs from the API
call to its result, and a fan-out to many agents by label.

Measures on this machine:
  1. `exec` of `true` on one agent: from `POST /api/v1/activities` to its result
     (`GET /api/v1/activities/{id}?wait=…`), p50 and p99 over 200 activities, one at a time,
     and in parallel mode; side by side, `ssh`-less `subprocess.run(["true"])` here, which is
     the floor of starting a process at all;
  2. `info` fanned out by label to N agents (real agent processes, 20 by default): from the
     call to the fan-out's end.

    cargo build --release && python3 scripts/bench/activities.py [AGENTS]
"""

import os
import statistics
import subprocess
import sys
import time

from orchestrator import BINARY, call, orchestrator

SAMPLES = 200


def percentile(samples, fraction):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def start_agent(base, token, workdir, name, labels):
    enroll = call(base, "POST", "/api/v1/agents/enrollment-tokens", {}, token)["token"]
    return subprocess.Popen(
        [BINARY, "agent", "--server", base, "--data", os.path.join(workdir, name), "--name", name,
         "--labels", labels, "--allow", "exec,info", "--enroll-token", enroll],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, DIRIGENT_LOG="warn"),
    )


def wait_online(base, token, count):
    deadline = time.time() + 120
    while time.time() < deadline:
        agents = call(base, "GET", "/api/v1/agents", token=token)
        if sum(agent["state"] == "online" for agent in agents) >= count:
            return
        time.sleep(0.1)
    sys.exit(f"fewer than {count} agents came online")


def run_one(base, token, body):
    began = time.perf_counter()
    created = call(base, "POST", "/api/v1/activities", body, token)
    ended = call(base, "GET", f"/api/v1/activities/{created['id']}?wait=60", token=token)
    elapsed = (time.perf_counter() - began) * 1000
    if ended["state"] != "succeeded":
        sys.exit(f"activity {ended['id']} {ended['state']}: {ended.get('reason')}")
    return elapsed, ended


def main():
    fan_out = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    with orchestrator() as (base, token, workdir):
        agents = [start_agent(base, token, workdir, "bench-0", "role=solo")]
        try:
            wait_online(base, token, 1)
            for mode in ["sequential", "parallel"]:
                body = {"target": "bench-0", "operation": "exec", "args": {"argv": ["true"]}, "mode": mode}
                run_one(base, token, body)
                samples = [run_one(base, token, body)[0] for _ in range(SAMPLES)]
                print(f"exec of `true`, {mode:<10}  API call -> result   p50 {statistics.median(samples):6.2f} ms"
                      f"   p99 {percentile(samples, 0.99):6.2f} ms   ({SAMPLES} one after another)")
            floor = []
            for _ in range(SAMPLES):
                began = time.perf_counter()
                subprocess.run(["true"], check=True)
                floor.append((time.perf_counter() - began) * 1000)
            print(f"the floor: starting `true` here (Python subprocess)     p50 {statistics.median(floor):6.2f} ms")

            for n in range(fan_out):
                agents.append(start_agent(base, token, workdir, f"fan-{n}", "role=fleet"))
            wait_online(base, token, fan_out + 1)
            body = {"target": "role=fleet", "operation": "info", "mode": "parallel"}
            run_one(base, token, body)
            samples = []
            for _ in range(10):
                elapsed, ended = run_one(base, token, body)
                assert len(ended["children"]) == fan_out, ended
                samples.append(elapsed)
            print(f"info fanned out to {fan_out} agents: API call -> all ended   p50 {statistics.median(samples):7.1f} ms"
                  f"   max {max(samples):7.1f} ms   (10 fan-outs)")
        finally:
            for agent in agents:
                agent.terminate()
            for agent in agents:
                agent.wait()


if __name__ == "__main__":
    main()
