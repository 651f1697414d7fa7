#!/usr/bin/env python3
"""Graphical sessions of the release `dirigent`: what a screenshot of a 1920x1080 session
costs, idle and busy, and what idle sessions cost the agent.

Measures on this machine, with an agent keeping 4 sessions (Xvfb, 1920x1080):
  1. screenshots through the API (the agent reads the screen over X and encodes PNG; the
     server relays it): latency median and p95, size, for an idle desktop (one colour) and a
     busy one (noise, the worst case for PNG);
  2. the panel's refresh (one screenshot every 2 s while a Sessions page is open): bytes per
     second;
  3. CPU of the agent and its X servers over 10 s with 4 idle sessions and nobody watching.

    cargo build --release && python3 scripts/bench/sessions.py
(needs Xvfb and xsetroot: scripts/test installs them)
"""

import os
import random
import statistics
import subprocess
import time
import urllib.request

from orchestrator import BINARY, call, orchestrator

SAMPLES = 20


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def screenshot(base, token, session):
    request = urllib.request.Request(f"{base}/api/v1/sessions/{session}/screenshot")
    request.add_header("authorization", "Bearer " + token)
    began = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        png = response.read()
    return (time.perf_counter() - began) * 1000, len(png)


def measure(base, token, session, what):
    screenshot(base, token, session)
    samples = [screenshot(base, token, session) for _ in range(SAMPLES)]
    latencies = sorted(ms for ms, _ in samples)
    size = samples[-1][1]
    print(f"screenshot of a 1920x1080 session, {what:<13} p50 {statistics.median(latencies):6.1f} ms"
          f"   p95 {latencies[int(len(latencies) * 0.95) - 1]:6.1f} ms   {size / 1024:8.1f} KiB")
    return size


def sessions(base, token):
    return call(base, "GET", "/api/v1/sessions", token=token)


def main():
    with orchestrator() as (base, token, workdir):
        enroll = call(base, "POST", "/api/v1/agents/enrollment-tokens", {}, token)["token"]
        agent = subprocess.Popen(
            [BINARY, "agent", "--server", base, "--data", os.path.join(workdir, "agent"),
             "--name", "gui", "--sessions", "4", "--enroll-token", enroll],
            env=dict(os.environ, DIRIGENT_LOG="warn"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while sum(s["state"] == "ready" for s in sessions(base, token)) < 4:
                time.sleep(0.05)
            x_servers = [int(line.split()[0]) for line in subprocess.run(
                ["pgrep", "-a", "Xvfb"], capture_output=True, text=True).stdout.splitlines()
                if os.path.join(workdir, "agent") in line]

            # Nobody watching: what 4 idle sessions cost.
            before = cpu_seconds(agent.pid) + sum(cpu_seconds(pid) for pid in x_servers)
            time.sleep(10)
            after = cpu_seconds(agent.pid) + sum(cpu_seconds(pid) for pid in x_servers)
            print(f"4 idle sessions, nobody watching: agent and X servers {100 * (after - before) / 10:5.2f} % of one core")

            idle = measure(base, token, "gui/1", "idle desktop")
            print(f"    the panel watching it (one screenshot every 2 s): {idle / 2 / 1024:6.2f} KiB/s")
            session = sessions(base, token)[0]
            env = dict(os.environ, DISPLAY=session["display"],
                       XAUTHORITY=os.path.join(workdir, "agent", "sessions", "1", "Xauthority"))
            noise = os.path.join(workdir, "noise.xbm")
            with open(noise, "w") as bitmap:
                values = [f"0x{random.getrandbits(8):02x}" for _ in range(512 * 512 // 8)]
                lines = ",\n".join(", ".join(values[at:at + 12]) for at in range(0, len(values), 12))
                bitmap.write("#define noise_width 512\n#define noise_height 512\n"
                             f"static unsigned char noise_bits[] = {{\n{lines}}};\n")
            subprocess.run(["xsetroot", "-bitmap", noise, "-fg", "#ff8000", "-bg", "#003366"],
                           env=env, check=True)
            busy = measure(base, token, "gui/1", "busy (noise)")
            print(f"    the panel watching it (one screenshot every 2 s): {busy / 2 / 1024:6.2f} KiB/s")
        finally:
            agent.terminate()
            agent.wait()


if __name__ == "__main__":
    main()
