"""`mnist-mlops serve` as a real process on 127.0.0.1, for the serving tests."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .conftest import Spawned, free_port, wait_for

CLI = str(Path(sys.executable).parent / "mnist-mlops")


def fetch(url: str, body: bytes | None = None, timeout: float = 30
          ) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one request (4xx/5xx included)."""
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


class Served(Spawned):
    """The server process; `url` ends with '/'."""

    def __init__(self, model: Path, *options: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        # in a folder of its own: a .h5 model needs no project, and whatever the server
        # writes (its prediction log) stays out of the checkout
        super().__init__([CLI, "serve", "--model", str(model), "--port", str(self.port),
                          *options], Path(tempfile.mkdtemp(prefix="served-")),
                         {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})

    def status(self, path: str) -> int:
        try:
            return fetch(self.url + path, timeout=5)[0]
        except OSError:
            return -1

    def wait_ready(self, timeout: float = 180) -> None:
        wait_for(lambda: self.status("ready") == 200 or self.proc.poll() is not None,
                 timeout, "/ready")
        assert self.status("ready") == 200, self.output[-3000:]

    def json(self, path: str, body: bytes | None = None) -> tuple[int, dict]:
        code, _, raw = fetch(self.url + path, body)
        return code, json.loads(raw)
