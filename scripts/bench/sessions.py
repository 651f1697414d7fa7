#!/usr/bin/env python3
"""Graphical sessions of the release `dirigent`: what a screenshot of a 1920x1080 session
costs, idle and busy, what the live view delivers, and what idle sessions cost the agent.

Measures on this machine, with an agent keeping 4 sessions (Xvfb, 1920x1080):
  1. CPU of the agent and its X servers over 10 s with 4 idle sessions and nobody watching;
  2. screenshots through the API (the agent reads the screen over X and encodes PNG; the
     server relays it): latency median and p95, size, for an idle desktop and a busy one
     (noise, the worst case for PNG);
  3. the live view (the WebSocket the panel draws): bytes per second while nothing changes,
     latency from a change on the screen (`xsetroot`) to its region at the client, and frames
     and bytes per second while the whole screen keeps changing (one colour, and noise).

    cargo build --release && python3 scripts/bench/sessions.py
(needs Xvfb and xsetroot: scripts/test installs them; installs websocket-client from PyPI)
"""

import os
import random
import statistics
import subprocess
import sys
import threading
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


def noise_bitmap(path):
    """A 512x512 bitmap of random bits, for a screen PNG compresses badly."""
    values = [f"0x{random.getrandbits(8):02x}" for _ in range(512 * 512 // 8)]
    lines = ",\n".join(", ".join(values[at:at + 12]) for at in range(0, len(values), 12))
    with open(path, "w") as bitmap:
        bitmap.write("#define noise_width 512\n#define noise_height 512\n"
                     f"static unsigned char noise_bits[] = {{\n{lines}}};\n")


def live_view(base, token, env, workdir):
    try:
        import websocket
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "websocket-client"], check=True)
        import websocket
    url = base.replace("http://", "ws://") + "/api/v1/sessions/gui/1/live"
    socket = websocket.create_connection(url, header=[f"Authorization: Bearer {token}"])
    socket.settimeout(10)
    socket.recv()  # the whole screen
    received = []  # (time, bytes)
    stop = threading.Event()

    def listen():
        socket.settimeout(0.2)
        while not stop.is_set():
            try:
                message = socket.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception:
                return
            received.append((time.perf_counter(), len(message)))

    listener = threading.Thread(target=listen)
    listener.start()
    xsetroot = lambda *args: subprocess.run(["xsetroot", *args], env=env, check=True)
    time.sleep(0.5)
    received.clear()
    time.sleep(3)
    print(f"live view, nothing changing: {sum(size for _, size in received) / 3:8.1f} bytes/s")

    latencies = []
    for n in range(20):
        received.clear()
        began = time.perf_counter()
        xsetroot("-solid", "#%06x" % random.getrandbits(24))
        while not received and time.perf_counter() - began < 5:
            time.sleep(0.001)
        if received:
            latencies.append((received[0][0] - began) * 1000)
        time.sleep(0.1)
    latencies.sort()
    print(f"live view, change on the screen -> client: p50 {statistics.median(latencies):6.1f} ms"
          f"   p95 {latencies[int(len(latencies) * 0.95) - 1]:6.1f} ms   (goal <= 150 ms)")

    noise = [os.path.join(workdir, f"noise{n}.xbm") for n in range(2)]
    for path in noise:
        noise_bitmap(path)
    for what, change in [
        ("one colour", lambda n: xsetroot("-solid", "#%06x" % random.getrandbits(24))),
        ("noise", lambda n: xsetroot("-bitmap", noise[n % 2], "-fg", "#ff8000", "-bg", "#003366")),
    ]:
        received.clear()
        began = time.perf_counter()
        n = 0
        while time.perf_counter() - began < 3:
            change(n)
            n += 1
        elapsed = time.perf_counter() - began
        frames = len(received)
        print(f"live view, whole screen changing ({what:<10}): {frames / elapsed:5.1f} frames/s "
              f"({n / elapsed:5.1f} changes/s), {sum(size for _, size in received) / elapsed / 1024:8.1f} KiB/s"
              f"   (goal >= 5 frames/s)")
    stop.set()
    listener.join()
    socket.close()


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
            session = sessions(base, token)[0]
            env = dict(os.environ, DISPLAY=session["display"],
                       XAUTHORITY=os.path.join(workdir, "agent", "sessions", "1", "Xauthority"))
            noise = os.path.join(workdir, "noise.xbm")
            noise_bitmap(noise)
            subprocess.run(["xsetroot", "-bitmap", noise, "-fg", "#ff8000", "-bg", "#003366"],
                           env=env, check=True)
            busy = measure(base, token, "gui/1", "busy (noise)")
            print(f"    the panel watching it (one screenshot every 2 s): {busy / 2 / 1024:6.2f} KiB/s")
            live_view(base, token, env, workdir)
        finally:
            agent.terminate()
            agent.wait()


if __name__ == "__main__":
    main()
