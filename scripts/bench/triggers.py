#!/usr/bin/env python3
"""Trigger firing figures of the release `dirigent`, and APScheduler side by side.

Measures on this machine:
  1. dirigent, embedded SQLite: 100,000 triggers registered over HTTP (90,000 due far in the
     future), then two rounds of 10,000 dry-run triggers falling due in the same second (spread
     over it, then all at one instant). A firing is the row recording it; lateness is the time it
     became visible in the database (polled every millisecond from this process) minus its due
     time, and, as the server recorded it, `recorded_at - due_at`;
  2. APScheduler 3.x (BackgroundScheduler, default thread pool) holding 5,000 one-second
     interval jobs for 10 seconds: lateness is the job's start minus its scheduled time;
and prints p50/p99 of both and the ratio.

    cargo build --release --bin dirigent --example trigger_load && python3 scripts/bench/triggers.py
(installs apscheduler<4 from PyPI when missing)
"""

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

from orchestrator import BINARY, call, example, orchestrator

LOAD = example("trigger_load")


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def rfc3339(moment):
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def register(base, token, count, first_due, spread_ms):
    out = subprocess.run([LOAD, base, token, "bench", str(count), rfc3339(first_due), str(spread_ms)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def watch_firings(database, count, after_id, deadline):
    """Polls the firings table until `count` rows past `after_id` are there; answers the visible
    and the recorded lateness of each, in milliseconds."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    visible, recorded = [], []
    last = after_id
    while len(visible) < count and time.time() < deadline:
        rows = connection.execute(
            "SELECT id, due_at, recorded_at FROM trigger_firings WHERE id > ? ORDER BY id", (last,)
        ).fetchall()
        seen = time.time() * 1000
        for row_id, due_at, recorded_at in rows:
            visible.append(seen - due_at)
            recorded.append(recorded_at - due_at)
            last = row_id
        time.sleep(0.001)
    connection.close()
    return visible, recorded, last


def dirigent(far, due):
    with orchestrator() as (base, token, workdir):
        call(base, "POST", "/api/v1/robots", {"name": "bench", "argv": ["true"]}, token)
        database = os.path.join(workdir, "dirigent.db")
        future = register(base, token, far, datetime(2100, 1, 1, tzinfo=timezone.utc), 86_400_000)
        rate = future["per_second"]
        rounds = []
        last_id = 0
        for label, spread_ms in (("spread over 1 s", 1000), ("at one instant", 0)):
            lead = due / rate * 1.5 + 3
            first_due = datetime.now(timezone.utc) + timedelta(seconds=lead)
            register(base, token, due, first_due, spread_ms)
            deadline = first_due.timestamp() + 120
            visible, recorded, last_id = watch_firings(database, due, last_id, deadline)
            rounds.append({"label": label, "fired": len(visible), "visible": visible, "recorded": recorded})
    return {"registered_per_second": rate, "registered": far + 2 * due, "rounds": rounds}


def apscheduler(jobs, seconds):
    try:
        import apscheduler  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "apscheduler<4"], check=True)
    from apscheduler.events import EVENT_JOB_SUBMITTED
    from apscheduler.schedulers.background import BackgroundScheduler

    lateness = []
    lock = threading.Lock()

    def submitted(event):
        now = datetime.now(timezone.utc)
        with lock:
            for scheduled in event.scheduled_run_times:
                lateness.append((now - scheduled).total_seconds() * 1000)

    def job():
        pass

    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"misfire_grace_time": 60, "coalesce": False,
                                                                  "max_instances": 10})
    scheduler.add_listener(submitted, EVENT_JOB_SUBMITTED)
    start = datetime.now(timezone.utc) + timedelta(seconds=2)
    for n in range(jobs):
        scheduler.add_job(job, "interval", seconds=1, start_date=start, id=f"job-{n}")
    scheduler.start()
    time.sleep(2 + seconds)
    scheduler.shutdown(wait=False)
    return lateness


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--far", type=int, default=90000, help="triggers due far in the future")
    parser.add_argument("--due", type=int, default=10000, help="triggers due in the same second, per round")
    parser.add_argument("--jobs", type=int, default=5000, help="APScheduler interval jobs")
    parser.add_argument("--seconds", type=int, default=10, help="how long APScheduler runs")
    args = parser.parse_args()
    for path in (BINARY, LOAD):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: cargo build --release --bin dirigent --example trigger_load")

    ours = dirigent(args.far, args.due)
    theirs = apscheduler(args.jobs, args.seconds)
    their_p50, their_p99 = percentile(theirs, 0.5), percentile(theirs, 0.99)
    print(f"dirigent: {ours['registered']} triggers registered over HTTP, "
          f"{ours['registered_per_second']:.0f}/s")
    print(f"APScheduler: {args.jobs} one-second interval jobs for {args.seconds} s, {len(theirs)} firings")
    print(f"{'lateness, ms':44}{'p50':>8}{'p99':>8}{'max':>8}")
    for result in ours["rounds"]:
        for kind in ("visible", "recorded"):
            values = result[kind]
            label = f"dirigent {result['label']}, {kind} ({result['fired']})"
            print(f"{label:44}{percentile(values, 0.5):8.1f}{percentile(values, 0.99):8.1f}{max(values):8.1f}")
    print(f"{'APScheduler, job submitted':44}{their_p50:8.1f}{their_p99:8.1f}{max(theirs):8.1f}")
    worst = max(percentile(result["visible"], 0.99) for result in ours["rounds"])
    print(f"p99 ratio, APScheduler / dirigent (worst visible round): {their_p99 / max(worst, 0.001):.1f}")
    print("goal: 10,000 due in the same second fire with p99 lateness <= 50 ms")


if __name__ == "__main__":
    main()
