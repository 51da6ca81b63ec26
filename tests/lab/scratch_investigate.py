"""Scratch (investigation only, to be deleted): keeps L1 up and execs Python sent on a socket."""
from __future__ import annotations

import contextlib
import io
import os
import socket
import time
import traceback

import pytest

pytestmark = pytest.mark.lab

SOCK = "/tmp/inv/labctl.sock"


def test_serve(lab):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(SOCK)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(SOCK)
    srv.listen(1)
    srv.settimeout(1)
    ns = {"lab": lab, "time": time}
    print("SERVING", lab.run_dir, lab.timings, flush=True)
    deadline = time.monotonic() + 4 * 3600
    while time.monotonic() < deadline:
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        with conn:
            data = b""
            while not data.endswith(b"\0"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            code = data.rstrip(b"\0").decode()
            if code.strip() == "QUIT":
                conn.sendall(b"bye")
                break
            buf = io.StringIO()
            try:
                with contextlib.redirect_stdout(buf):
                    exec(code, ns)
            except BaseException:
                buf.write(traceback.format_exc())
            conn.sendall(buf.getvalue().encode())
    os.unlink(SOCK)
