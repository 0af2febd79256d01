"""Load on `python -m fer_flax.serve`: many clients posting images at once for a bounded time.

  python -m benchmarks.serve_load [--workdir W] [--clients 16] [--seconds 20] [--image PATH]

Starts the server on the loopback address (a free port; without --workdir the bundled model), waits
until it listens, then runs `--clients` threads that each post the image to /predict over one
keep-alive connection, again and again, until `--seconds` have passed; requests still in flight then
finish. It prints requests/s, the median and 99th-percentile latency, the errors, and the server's
batching (model calls, mean images per call, from /health). The image is a 48x48 face crop (the
model's input, classified whole: the model's cost, without the face detector's) unless --image
names a photo. The clients share this process with Python's GIL and the machine with the server:
on few cores they cost the server CPU time, so the figures are a floor.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import http_server


def _crop() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    return http_server.png(Image.fromarray(pixels))


def _client(port: int, body: bytes, content_type: str, deadline: float, out: list, errors: list) -> None:
    """Posts `body` until `deadline`, appending each answered request's latency (seconds) to `out`."""
    connection = http.client.HTTPConnection(http_server.HOST, port, timeout=60)
    try:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                connection.request("POST", "/predict", body=body, headers={"Content-Type": content_type})
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as e:
                errors.append(type(e).__name__)
                connection.close()
                continue
            if response.status == 200:
                out.append(time.perf_counter() - start)
            else:
                errors.append(str(response.status))
    finally:
        connection.close()


def load(port: int, body: bytes, content_type: str, clients: int, seconds: float) -> dict:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    deadline = time.monotonic() + seconds
    threads = [
        threading.Thread(target=_client, args=(port, body, content_type, deadline, latencies[i], errors))
        for i in range(clients)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    answered = sorted(x for per_client in latencies for x in per_client)
    quantiles = statistics.quantiles(answered, n=100) if len(answered) > 1 else answered * 99
    return {
        "requests": len(answered),
        "wall_s": wall,
        "requests_per_s": len(answered) / wall,
        "p50_ms": 1000 * statistics.median(answered) if answered else float("nan"),
        "p99_ms": 1000 * quantiles[98] if answered else float("nan"),
        "errors": len(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", help="Training workdir (default: the bundled model).")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--image", help="An image file to post (default: a 48x48 face crop).")
    args = parser.parse_args()
    image = Path(args.image).read_bytes() if args.image else _crop()
    name = Path(args.image).name if args.image else "crop.png"
    body, content_type = http_server.multipart([("image", name, image, "application/octet-stream")])
    server_args = ["--workdir", args.workdir] if args.workdir else []
    with (
        tempfile.TemporaryDirectory() as tmp,
        http_server.running_server(server_args, Path(tmp) / "server.log") as server,
    ):
        _, warm = http_server.request(server.port, "GET", "/health")
        # One request first, so that the shapes of a single image are compiled before timing.
        http_server.post_images(server.port, "/predict", [(name, image)])
        result = load(server.port, body, content_type, args.clients, args.seconds)
        _, health = http_server.request(server.port, "GET", "/health")
    batches = health["batches"] - warm["batches"] - 1
    images = health["images"] - warm["images"] - 1
    print(
        f"model {health['model']['name']}, {args.clients} clients, {result['wall_s']:.1f} s: "
        f"{result['requests_per_s']:.1f} requests/s, p50 {result['p50_ms']:.1f} ms, "
        f"p99 {result['p99_ms']:.1f} ms, {result['errors']} errors; {batches} model calls, "
        f"{images / max(batches, 1):.1f} images per call (largest {health['largest_batch']})"
    )


if __name__ == "__main__":
    main()
