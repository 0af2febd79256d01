"""A `python -m fer_flax.serve` process on a free loopback port, and plain-HTTP clients for it
(the standard library's: multipart bodies made here, a raw socket for a body streamed without end),
shared by the server's tests and its load benchmark."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import io
import json
import re
import select
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.helpers import REPO

HOST = "127.0.0.1"
_SERVING = re.compile(r"Serving \S+ on http://127\.0\.0\.1:(\d+)/")


@dataclasses.dataclass(frozen=True)
class Server:
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"


@contextlib.contextmanager
def running_server(args: Sequence[str], log: Path, timeout_s: float = 180.0) -> Iterator[Server]:
    """A server started with `args` (after `--host 127.0.0.1 --port 0`), once it listens; stopped
    (SIGTERM, then SIGKILL after 20 s) on leaving. Its stdout and stderr go to `log`."""
    command = [sys.executable, "-m", "fer_flax.serve", "--host", HOST, "--port", "0", *args]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + timeout_s
        while not (match := _SERVING.search(log.read_text(errors="replace"))):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start (status {process.poll()}):\n{log.read_text()}")
            time.sleep(0.1)
        yield Server(int(match.group(1)), process)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def multipart(parts: Sequence[tuple[str, str, bytes, str]]) -> tuple[bytes, str]:
    """(body, content type) of multipart/form-data with file parts (field, file name, data, type)."""
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for field, name, data, kind in parts:
        body.write(f"--{boundary}\r\n".encode())
        body.write(f'Content-Disposition: form-data; name="{field}"; filename="{name}"\r\n'.encode())
        body.write(f"Content-Type: {kind}\r\n\r\n".encode())
        body.write(data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def request(
    port: int, method: str, path: str, body: bytes | None = None, content_type: str | None = None
) -> tuple[int, dict | str]:
    """(status, JSON answer, or the text of one that is not JSON)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read().decode()
        kind = response.getheader("content-type", "")
        return response.status, json.loads(text) if kind.startswith("application/json") else text
    finally:
        connection.close()


def post_images(port: int, path: str, images: Sequence[tuple[str, bytes]], kind: str = "image/png"):
    body, content_type = multipart([("image", name, data, kind) for name, data in images])
    return request(port, "POST", path, body, content_type)


def stream_without_length(port: int, path: str, chunk: bytes, most_bytes: int) -> tuple[int, dict]:
    """Status and JSON answer of a chunked multipart upload that sends `chunk` again and again (up to
    `most_bytes`), stopping as soon as the server answers: how a client streams a body of unknown
    length, and how the server refuses one that grows past its limit."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    with socket.create_connection((HOST, port), timeout=60) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode()
        )
        sent, answer = 0, b""
        for data in [head] + [chunk] * (most_bytes // len(chunk)):
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered (or closed): stop sending
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(data)
        with contextlib.suppress(OSError):
            while chunk_read := sock.recv(65536):
                answer += chunk_read
                if b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
                    break
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2]) | {"sent": sent}


def rss_mb(pid: int) -> float:
    """The resident memory of process `pid`, in MB (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
