"""Dirigent's robot SDK: work-item queues and cooperation with the orchestrator.

A robot started by Dirigent finds DIRIGENT_URL, DIRIGENT_RUN_ID and DIRIGENT_RUN_TOKEN in its
environment; this module uses them. Only the standard library is needed.

    from dirigent import queue, should_stop

    for item in queue("invoices"):
        try:
            book(item.payload)
        except BadInvoice as err:
            item.fail("business", str(err))      # final: bad data
        else:
            item.complete({"booked": True})
        if should_stop():
            break

An item the loop body leaves unanswered is failed as an application error (retried later), so
that no item waits for its lease to expire.

Structured log records go to the orchestrator's log store with the run's output, searchable by
their words and fields:

    from dirigent import log
    log.info("booked", invoice=7)              # {"level": "info", "msg": "booked", "invoice": 7}

    import logging
    logging.getLogger().addHandler(dirigent.LogHandler())   # or Python's own logging
"""

import json
import logging
import os
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["Client", "DirigentError", "Item", "queue", "add", "should_stop", "log", "LogHandler"]


_write_lock = threading.Lock()


def _write_record(level, message, fields):
    """Writes one structured record as a JSON line on standard output (which the orchestrator
    reads as a record: its level, its message, its other keys as fields)."""
    record = {"level": level, "msg": str(message)}
    for key, value in fields.items():
        if key not in record:
            record[key] = value
    line = json.dumps(record, default=str, ensure_ascii=False)
    with _write_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Log:
    """Structured records: `log.info("booked", invoice=7)`; also debug, warning, error."""

    def debug(self, message, **fields):
        _write_record("debug", message, fields)

    def info(self, message, **fields):
        _write_record("info", message, fields)

    def warning(self, message, **fields):
        _write_record("warn", message, fields)

    warn = warning

    def error(self, message, **fields):
        _write_record("error", message, fields)


log = Log()


class LogHandler(logging.Handler):
    """A `logging` handler that writes each record as a structured record: its level, its
    message, the logger's name, the exception if any, and what was given as `extra`."""

    _standard = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def emit(self, record):
        try:
            fields = {"logger": record.name}
            for key, value in vars(record).items():
                if key not in self._standard:
                    fields[key] = value
            if record.exc_info:
                fields["exception"] = self.formatException(record.exc_info)
            _write_record(record.levelname.lower(), record.getMessage(), fields)
        except Exception:  # noqa: BLE001 - a log handler must never raise
            self.handleError(record)

    def formatException(self, exc_info):
        return logging.Formatter().formatException(exc_info)


class DirigentError(Exception):
    """An error answer of the server: `status`, the stable `code` and a `message`."""

    def __init__(self, status, code, message, body=None):
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body or {}


class Client:
    """A connection to the orchestrator; from the robot's environment by default."""

    def __init__(self, url=None, token=None, ca_file=None, timeout=30.0):
        self.url = (url or os.environ.get("DIRIGENT_URL") or "").rstrip("/")
        self.token = token or os.environ.get("DIRIGENT_RUN_TOKEN") or os.environ.get("DIRIGENT_TOKEN")
        if not self.url:
            raise DirigentError(0, "no_server", "DIRIGENT_URL is not set: is this a Dirigent run?")
        ca_file = ca_file or os.environ.get("DIRIGENT_CA_FILE")
        self._context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self.timeout = timeout

    def request(self, method, path, body=None, query=None):
        """Sends a request to `path` (under the server's URL); answers the decoded JSON, or
        None for an empty answer."""
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", "Bearer " + self.token)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._context) as answer:
                text = answer.read()
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                error = json.loads(raw)
            except ValueError:
                error = {"code": "http_" + str(err.code), "message": raw.decode(errors="replace")}
            raise DirigentError(err.code, error.get("code"), error.get("message"), error) from None
        return json.loads(text) if text else None

    def queue_path(self, name, *rest):
        parts = [urllib.parse.quote(str(part), safe="") for part in (name,) + rest]
        return "/api/v1/queues/" + "/".join(parts)


class Item:
    """A claimed work item. Answer it once: complete, fail, postpone or abandon."""

    def __init__(self, client, queue_name, item, lease_token, lease_expires_at):
        self._client = client
        self.queue = queue_name
        self.id = item["id"]
        self.payload = item["payload"]
        self.reference = item.get("reference")
        self.priority = item["priority"]
        self.attempts = item["attempts"]
        self.lease_token = lease_token
        self.lease_expires_at = lease_expires_at
        self.answered = False

    def _answer(self, operation, body):
        path = self._client.queue_path(self.queue, "items", self.id, operation)
        item = self._client.request("POST", path, dict(body, lease_token=self.lease_token))
        if operation != "extend":
            self.answered = True
        return item

    def complete(self, output=None):
        """The item is done; `output` is any JSON value."""
        return self._answer("complete", {} if output is None else {"output": output})

    def fail(self, kind, message=""):
        """`business` (bad data: final) or `application` (retried up to the queue's attempts)."""
        return self._answer("fail", {"kind": kind, "message": message})

    def postpone(self, until):
        """Back to the queue until `until`, an RFC 3339 time."""
        return self._answer("postpone", {"until": until})

    def abandon(self, message=None):
        """Give the item up; it is not retried."""
        return self._answer("abandon", {} if message is None else {"message": message})

    def extend(self):
        """Hold the item for another lease period from now."""
        item = self._answer("extend", {})
        self.lease_expires_at = item["lease_expires_at"]
        return item


def queue(name, wait=0.0, batch=1, client=None):
    """Claims the queue's items one after the other. When none is ready, waits up to `wait`
    seconds for one (polling with backoff), then stops. With `batch` above 1, claims up to that
    many items at once under one lease (fewer requests for many small items); those the loop
    does not reach go back to the queue at once."""
    client = client or Client()
    claim_path, body = (client.queue_path(name, "claim"), None)
    if batch > 1:
        claim_path, body = (client.queue_path(name, "claims"), {"count": batch})
    current, waiting = None, []
    try:
        while True:
            deadline = time.monotonic() + wait
            pause = 0.05
            claim = client.request("POST", claim_path, body)
            while claim is None and time.monotonic() < deadline and not should_stop(client):
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, 2.0)
                claim = client.request("POST", claim_path, body)
            if claim is None:
                return
            items = claim["items"] if batch > 1 else [claim["item"]]
            waiting = [Item(client, name, item, claim["lease_token"], claim["lease_expires_at"])
                       for item in items]
            while waiting:
                current = waiting.pop(0)
                yield current
                _release(current, "the robot went on without answering the item")
    finally:
        if current is not None:
            _release(current, "the robot stopped before answering the item")
        for item in waiting:
            try:
                item.postpone(_now())
            except DirigentError:
                pass


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _release(item, message):
    if not item.answered:
        try:
            item.fail("application", message)
        except DirigentError:
            pass


def add(name, payload, reference=None, priority=None, client=None):
    """Adds an item to a queue; answers its id."""
    client = client or Client()
    item = {"payload": payload}
    if reference is not None:
        item["reference"] = reference
    if priority is not None:
        item["priority"] = priority
    return client.request("POST", client.queue_path(name, "items"), item)["ids"][0]


def should_stop(client=None):
    """Whether an operator asked this run to stop safely: finish the current step, then leave."""
    client = client or Client()
    run_id = os.environ.get("DIRIGENT_RUN_ID")
    if not run_id:
        return False
    run = client.request("GET", "/api/v1/runs/" + urllib.parse.quote(run_id, safe=""))
    return bool(run.get("stop_requested"))
