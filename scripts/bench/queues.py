#!/usr/bin/env python3
"""Work-item queue figures of the release `dirigent` over HTTP, and huey side by side.

Measures on this machine, SQLite with full synchronous durability on both sides:
  1. bulk add: items per second, added in batches of 1,000 by 4 concurrent senders;
  2. the add -> claim -> complete cycle with several consumers (and a producer per four
     consumers): items per second, and claim latency p50/p99; once with one item a request,
     once with --batch items a request (producers add that many at once, consumers claim
     up to that many under one lease and complete them in one request);
  3. huey 2.x/3.x (SqliteHuey, fsync=True, 4 worker threads): enqueue rate and the
     enqueue -> execute cycle with producers running alongside the consumer;
and prints the ratios.

    cargo build --release --bin dirigent --example queue_load && python3 scripts/bench/queues.py
(installs huey from PyPI when missing)
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from orchestrator import BINARY, call, example, orchestrator

LOAD = example("queue_load")


def dirigent(items, runs):
    """Figures of each (consumers, batch) run, each on a queue of its own."""
    results = []
    with orchestrator() as (base, token, _):
        for consumers, batch in runs:
            queue = f"bench-{consumers}-{batch}"
            call(base, "POST", "/api/v1/queues", {"name": queue}, token)
            out = subprocess.run(
                [LOAD, base, token, queue, str(items), str(consumers), str(batch)],
                check=True, capture_output=True, text=True,
            ).stdout
            results.append(json.loads(out))
    return results


def huey(items, producers=2):
    try:
        import huey as huey_module  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "huey"], check=True)
    from huey import SqliteHuey
    from huey.consumer import Consumer

    with tempfile.TemporaryDirectory() as workdir:
        queue = SqliteHuey(filename=os.path.join(workdir, "huey.db"), fsync=True, results=False)
        done = []
        finished = threading.Event()

        @queue.task()
        def process(payload):
            done.append(payload["invoice"])
            if len(done) >= 2 * items:
                finished.set()

        def payload(n):
            return {"invoice": n, "customer": f"c-{n % 997}", "amount": n * 1.5}

        # Enqueue rate (huey has no bulk add: one call per task).
        started = time.perf_counter()
        for n in range(items):
            process(payload(n))
        enqueue_rate = items / (time.perf_counter() - started)

        # The cycle: producers enqueue while the consumer's 4 threads execute.
        consumer = Consumer(queue, workers=4, worker_type="thread", periodic=False, initial_delay=0.001,
                            max_delay=0.01, check_worker_health=False)
        consumer._set_signal_handlers = lambda: None  # it runs in a thread of this process
        started = time.perf_counter()
        consumer.start()

        def produce(first, count):
            for n in range(first, first + count):
                process(payload(n))

        threads = [threading.Thread(target=produce, args=(items + i * items // producers, items // producers))
                   for i in range(producers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        finished.wait(timeout=600)
        cycle_rate = len(done) / (time.perf_counter() - started)
        consumer.stop(graceful=False)
    return {"enqueue_per_second": enqueue_rate, "cycle_items_per_second": cycle_rate}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--consumers", default="8,32,128", help="consumers of one item a request")
    parser.add_argument("--batch", type=int, default=10, help="items a request in the batched runs")
    parser.add_argument("--batched-consumers", default="4,8,16", help="consumers of --batch items")
    args = parser.parse_args()
    for path in (BINARY, LOAD):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: cargo build --release --bin dirigent --example queue_load")
    runs = [(int(n), 1) for n in args.consumers.split(",")]
    runs += [(int(n), args.batch) for n in args.batched_consumers.split(",")]

    ours = dirigent(args.items, runs)
    theirs = huey(args.items)
    print(f"{'':52}{'dirigent':>12}{'huey':>12}{'ratio':>8}")
    bulk = max(result["bulk_items_per_second"] for result in ours)
    print(f"{'add, items/s (bulk 1000 vs one by one)':52}{bulk:12.0f}{theirs['enqueue_per_second']:12.0f}"
          f"{bulk / theirs['enqueue_per_second']:8.1f}")
    def run(result):
        return f"{result['consumers']} consumers, {result['batch']} a request"

    for result in ours:
        label = f"cycle, items/s ({run(result)})"
        rate = result["cycle_items_per_second"]
        print(f"{label:52}{rate:12.0f}{theirs['cycle_items_per_second']:12.0f}"
              f"{rate / theirs['cycle_items_per_second']:8.1f}")
    for result in ours:
        label = f"claim latency p50/p99, ms ({run(result)})"
        print(f"{label:52}{result['claim_p50_ms']:6.1f}/{result['claim_p99_ms']:<5.1f}")
    best = max(ours, key=lambda result: result["cycle_items_per_second"])
    fast = [result for result in ours if result["claim_p99_ms"] <= 5.0]
    def verdict(met):
        return "met" if met else "NOT met"
    print(f"goal bulk add >= 100,000 items/s: {verdict(bulk >= 100_000)} ({bulk:,.0f})")
    print(f"goal cycle >= 10,000 items/s: {verdict(best['cycle_items_per_second'] >= 10_000)} "
          f"(best {best['cycle_items_per_second']:,.0f} with {run(best)})")
    where = "; ".join(f"{run(result)}: {result['claim_p99_ms']:.1f} ms" for result in fast)
    print(f"goal claim p99 <= 5 ms: {verdict(bool(fast))} ({where or 'in no run'})")


if __name__ == "__main__":
    main()
