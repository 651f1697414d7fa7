#!/usr/bin/env python3
"""The log store of the release `dirigent` (SQLite, `synchronous=FULL`): ingest, search, tail.

Measures on this machine:
  1. ingest: robots on a real agent write 80-byte lines as fast as they can; lines stored per
     second (full-text index kept), from the first start to the last line stored. Side by
     side: the same lines loaded into SQLite FTS5 (same WAL and `synchronous=FULL`, batches of
     500 a transaction) by a plain Python loader;
  2. search: a word within one day, over RECORDS records (10 million by default) spread over 30
     days, through `GET /api/v1/logs` — p50 and p95 of 200 queries (each a different word of
     middling frequency and a different day), after a warm-up; and each query also as an
     FTS5 statement by Python on the same file, for the floor;
  3. tail: a robot writes a line (stamped with the time it is written) every 10 ms; a
     follower of `GET /api/v1/logs/stream` notes when each arrives: p50 and p99 of the delay.

    cargo build --release && python3 scripts/bench/logs.py [RECORDS]
"""

import itertools
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

from orchestrator import BINARY, PASSWORD, call, free_port

ROBOTS = 4
LINES_PER_ROBOT = 250_000
LINE = "x" * 70 + " invoice"  # 78 characters and a newline: 80 bytes a line.
QUERIES = 200
DAY_MS = 86_400_000


def percentile(samples, fraction):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


class Server:
    """A release `dirigent serve` on `workdir`, without a local agent."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, DIRIGENT_ADMIN_PASSWORD=PASSWORD, DIRIGENT_LOG="warn")
        self.process = subprocess.Popen(
            [BINARY, "serve", "--listen", f"127.0.0.1:{self.port}", "--data", workdir, "--no-local-agent"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
        )
        for line in self.process.stdout:
            if " listening on " in line:
                break
        session = call(self.base, "POST", "/api/v1/login", {"username": "admin", "password": PASSWORD})["token"]
        name = f"bench-{self.port}"
        self.token = call(self.base, "POST", "/api/v1/tokens", {"name": name}, session)["token"]

    def call(self, method, path, body=None):
        return call(self.base, method, path, body, self.token)

    def stop(self):
        self.process.terminate()
        self.process.wait()


def start_agent(server, name):
    enroll = server.call("POST", "/api/v1/agents/enrollment-tokens", {})["token"]
    agent = subprocess.Popen(
        [BINARY, "agent", "--server", server.base, "--data", os.path.join(server.workdir, name),
         "--name", name, "--capacity", "64", "--enroll-token", enroll],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, DIRIGENT_LOG="warn"),
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        if any(a["state"] == "online" for a in server.call("GET", "/api/v1/agents")):
            return agent
        time.sleep(0.05)
    sys.exit("the agent did not come online")


def wait_for_line(server, run_id, seq, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        lines = server.call("GET", f"/api/v1/runs/{run_id}/logs?after={seq - 1}&limit=1")
        if lines:
            return
        time.sleep(0.02)
    sys.exit(f"line {seq} of {run_id} never arrived")


def ingest(server):
    argv = ["sh", "-c", f"yes '{LINE}' | head -n {LINES_PER_ROBOT}"]
    server.call("POST", "/api/v1/robots", {"name": "chatty", "argv": argv, "max_parallel": ROBOTS})
    began = time.perf_counter()
    runs = [server.call("POST", "/api/v1/runs", {"robot": "chatty"})["id"] for _ in range(ROBOTS)]
    for run_id in runs:
        wait_for_line(server, run_id, LINES_PER_ROBOT)
    elapsed = time.perf_counter() - began
    return ROBOTS * LINES_PER_ROBOT / elapsed


FTS_SCHEMA = """
CREATE TABLE logs (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, source TEXT NOT NULL,
  level TEXT NOT NULL, robot TEXT, run_id TEXT, seq INTEGER, stream TEXT, fields TEXT, text TEXT NOT NULL);
CREATE VIRTUAL TABLE logs_fts USING fts5 (text, fields, content = 'logs', content_rowid = 'id');
CREATE TRIGGER logs_fts_insert AFTER INSERT ON logs BEGIN
  INSERT INTO logs_fts (rowid, text, fields) VALUES (new.id, new.text, new.fields);
END;
"""


def python_loader(workdir):
    """The peer: the same lines into SQLite FTS5 by a plain loader, 500 a transaction."""
    db = sqlite3.connect(os.path.join(workdir, "peer.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(FTS_SCHEMA)
    total = ROBOTS * LINES_PER_ROBOT
    now = int(time.time() * 1000)
    began = time.perf_counter()
    for start in range(0, total, 500):
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO logs (at, source, level, robot, run_id, seq, stream, text) "
            "VALUES (?, 'robot', 'info', 'chatty', 'run_1', ?, 'stdout', ?)",
            [(now, seq, LINE) for seq in range(start, min(start + 500, total))],
        )
        db.execute("COMMIT")
    elapsed = time.perf_counter() - began
    db.close()
    return total / elapsed


def vocabulary(size=20_000):
    rng = random.Random(7)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(4, 9))))
    return sorted(words)


def fill(db_path, records):
    """Loads `records` robot records over 30 days into the server's own `logs` table (its
    triggers keep the full-text index), with words drawn from a Zipf-like vocabulary."""
    words = vocabulary()
    cumulative = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(words))))
    rng = random.Random(11)
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    start = 1_800_000_000_000
    step = 30 * DAY_MS // records
    batch = 20_000
    began = time.perf_counter()
    for first in range(0, records, batch):
        rows = []
        for n in range(first, min(first + batch, records)):
            text = " ".join(rng.choices(words, cum_weights=cumulative, k=9)) + f" invoice {n % 100_000}"
            rows.append((start + n * step, f"robot-{n % 50}", text))
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO logs (at, source, level, robot, text) VALUES (?, 'robot', 'info', ?, ?)", rows
        )
        db.execute("COMMIT")
    # What the server keeps beside each insert: the ids of each hour's records.
    db.execute("INSERT INTO log_hours (hour, min_id, max_id) "
               "SELECT at / 3600000, MIN(id), MAX(id) FROM logs GROUP BY at / 3600000")
    db.close()
    return words, start, time.perf_counter() - began


def search(workdir, records):
    db_path = os.path.join(workdir, "dirigent.db")
    words, start, loading = fill(db_path, records)
    print(f"(loaded {records:,} records for the search in {loading:.0f} s)")
    server = Server(workdir)
    try:
        rng = random.Random(3)
        queries = []
        for _ in range(QUERIES):
            word = words[rng.randint(200, 2000)]
            day = rng.randint(0, 29)
            queries.append((word, start + day * DAY_MS, start + (day + 1) * DAY_MS))
        to_time = lambda ms: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        fts = ("SELECT l.id, l.at, l.text FROM logs_fts f JOIN logs l ON l.id = f.rowid "
               "WHERE logs_fts MATCH ? AND l.at >= ? AND l.at < ? ORDER BY f.rowid DESC LIMIT 100")
        api, floor, found = [], [], []
        # Each query through the API and then as a plain statement, after a warm-up of both.
        for n, (word, since, until) in enumerate(queries[:20] + queries):
            query = urllib.parse.urlencode({"q": word, "since": to_time(since), "until": to_time(until)})
            began = time.perf_counter()
            page = server.call("GET", f"/api/v1/logs?{query}")
            api_ms = (time.perf_counter() - began) * 1000
            began = time.perf_counter()
            db.execute(fts, (f'"{word}"', since, until)).fetchall()
            floor_ms = (time.perf_counter() - began) * 1000
            if 20 <= n:
                api.append(api_ms)
                floor.append(floor_ms)
                found.append(len(page["records"]))
        db.close()
        return api, floor, statistics.median(found)
    finally:
        server.stop()


def tail(server):
    script = "import time\nfor n in range(2000):\n    print(f'tick {time.time():.6f}', flush=True)\n    time.sleep(0.01)\n"
    server.call("POST", "/api/v1/robots", {"name": "ticker", "argv": ["python3", "-c", script]})
    delays = []
    ready = threading.Event()

    def follow():
        request = urllib.request.Request(
            server.base + "/api/v1/logs/stream?robot=ticker&limit=1",
            headers={"authorization": "Bearer " + server.token},
        )
        with urllib.request.urlopen(request, timeout=120) as stream:
            ready.set()
            for raw in stream:
                line = raw.decode()
                if not line.startswith("data:"):
                    continue
                arrived = time.time()
                text = json.loads(line[5:])["text"]
                if text.startswith("tick "):
                    delays.append((arrived - float(text.split()[1])) * 1000)
                    if len(delays) == 2000:
                        return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    ready.wait(30)
    server.call("POST", "/api/v1/runs", {"robot": "ticker"})
    follower.join(120)
    return delays


def main():
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    with tempfile.TemporaryDirectory() as workdir:
        server = Server(workdir)
        agent = start_agent(server, "bench-agent")
        try:
            rate = ingest(server)
            delays = tail(server)
        finally:
            agent.terminate()
            agent.wait()
            server.stop()
        peer = python_loader(workdir)
    print(f"ingest, 80-byte lines from {ROBOTS} robots on a real agent, FTS kept:"
          f"  Dirigent {rate:9,.0f} lines/s   Python -> SQLite FTS5 {peer:9,.0f} lines/s"
          f"   ({rate / peer:.2f}x; goal >= 100,000)")
    print(f"tail, robot write -> follower ({len(delays)} lines, 1 every 10 ms):"
          f"  p50 {statistics.median(delays):6.1f} ms   p99 {percentile(delays, 0.99):6.1f} ms   (goal p99 <= 100)")
    with tempfile.TemporaryDirectory() as workdir:
        Server(workdir).stop()
        api, floor, found = search(workdir, records)
    print(f"search, a word within one day over {records:,} records ({QUERIES} queries, median {found:.0f} found):"
          f"  API p50 {statistics.median(api):6.1f} ms  p95 {percentile(api, 0.95):6.1f} ms"
          f"   FTS5 statement by Python p50 {statistics.median(floor):6.1f} ms  p95 {percentile(floor, 0.95):6.1f} ms"
          f"   (goal p95 <= 100)")


if __name__ == "__main__":
    main()
