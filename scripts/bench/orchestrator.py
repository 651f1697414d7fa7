"""What the HTTP benchmarks share: a release `dirigent serve` in a temporary directory, logged
in with an API token, and a small JSON client of its API."""

import contextlib
import json
import os
import socket
import subprocess
import tempfile
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.path.join(ROOT, "target", "release", "dirigent")
PASSWORD = "bench-password-1"


def example(name):
    """The path of a release example binary (a load generator)."""
    return os.path.join(ROOT, "target", "release", "examples", name)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(base, method, path, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", "Bearer " + token)
    with urllib.request.urlopen(request, timeout=60) as response:
        text = response.read()
        return json.loads(text) if text else None


@contextlib.contextmanager
def orchestrator():
    """Yields (base URL, API token, data directory) of a fresh server without a local agent,
    stopped afterwards."""
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        env = dict(os.environ, DIRIGENT_ADMIN_PASSWORD=PASSWORD, DIRIGENT_LOG="warn")
        server = subprocess.Popen(
            [BINARY, "serve", "--listen", f"127.0.0.1:{port}", "--data", workdir, "--no-local-agent"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
        )
        try:
            for line in server.stdout:
                if " listening on " in line:
                    break
            base = f"http://127.0.0.1:{port}"
            session = call(base, "POST", "/api/v1/login", {"username": "admin", "password": PASSWORD})["token"]
            token = call(base, "POST", "/api/v1/tokens", {"name": "bench"}, session)["token"]
            yield base, token, workdir
        finally:
            server.terminate()
            server.wait()
