"""Serve a trained model over HTTP: a JSON API for images and a page for photos and the webcam.

Command:
  python -m fer_flax.serve [--workdir W] [--checkpoint best|latest|STEP] [--tta none|flip|tencrop]
      [--detector auto|haar|dnn] [--host 127.0.0.1] [--port 8000] [--max_upload_mb 10]
      [--max_megapixels 40] [--max_images 16] [--max_batch 32] [--batch_wait_ms 5]

Without --workdir the model bundled with fer_flax is used. The model is loaded and compiled once, at
start-up (for every batch size up to --max_batch), then kept: the images of concurrent requests are gathered
for up to --batch_wait_ms into one call of at most --max_batch images. Once it listens it prints
`Serving MODEL on http://HOST:PORT/` on stderr; --port 0 takes a free port (the line says which).
Ctrl-C (or SIGTERM) stops it after the requests in hand.

  curl -F image=@photo.jpg http://127.0.0.1:8000/predict
  curl -F image=@a.jpg -F image=@b.png http://127.0.0.1:8000/predict/batch

The answers and the refusals are described in docs/predict.md and `fer_flax.inference.serve.app`.
The server has no authentication: keep it on the loopback address (the default), or behind a proxy
that has, unless every machine that can reach it may use it. Needs the `serve` extra.
"""

from __future__ import annotations

import socket
import sys

import numpy as np
from absl import flags

from fer_flax import cli
from fer_flax.base.extras import install_extra
from fer_flax.config.choices import TTA_MODES
from fer_flax.data import sources
from fer_flax.inference.faces.detect import DETECTORS, MissingDependencyError

COMMAND = cli.Command(log_level="error", expected_errors=(MissingDependencyError,))


def define_flags() -> None:
    flags.DEFINE_multi_string(
        "workdir", None, "Training workdir; repeat for an ensemble. Without it: the bundled model."
    )
    flags.DEFINE_string("checkpoint", "best", "'best' (by val accuracy), 'latest' or a step number.")
    flags.DEFINE_enum("tta", None, list(TTA_MODES), "TTA; default: the run's eval_tta.")
    flags.DEFINE_enum("detector", "auto", list(DETECTORS), "Face detector: haar, dnn (MTCNN) or auto.")
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (the loopback address by default).")
    flags.DEFINE_integer("port", 8000, "Port to listen on; 0 takes a free one.", lower_bound=0)
    flags.DEFINE_float("max_upload_mb", 10.0, "Largest request body, in MB (413 beyond).", lower_bound=0.001)
    flags.DEFINE_float("max_megapixels", 40.0, "Largest image, width x height in Mpx (413 beyond).",
                       lower_bound=0.000001)  # fmt: skip
    flags.DEFINE_integer("max_images", 16, "Most images per /predict/batch request.", lower_bound=1)
    flags.DEFINE_integer("max_batch", 32, "Most images per model call.", lower_bound=1)
    flags.DEFINE_float("batch_wait_ms", 5.0, "How long a batch waits for more requests.", lower_bound=0)


def _server_modules():
    """uvicorn and the app, or MissingDependencyError naming the extra that installs them."""
    try:
        import uvicorn

        from fer_flax.inference.serve import app
    except ImportError as e:
        raise MissingDependencyError(
            f"python -m fer_flax.serve needs {e.name or 'starlette and uvicorn'}: {install_extra('serve')}"
        ) from e
    return uvicorn, app


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) and listening, so that clients may connect from now on; an
    address in use is an OSError saying which."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    sock.listen(128)
    return sock


def warm(recognizer, max_batch: int) -> None:
    """Compiles the model for every batch of faces a request may meet (the powers of two up to
    `max_batch`, `FaceClassifier`'s padded shapes) and loads the face detector, so that no request
    waits for a compilation."""
    recognizer.predict(np.zeros((96, 96), np.uint8))  # a photo (no face): the detector loads
    empty = recognizer.classifier.empty_crops()
    size = 1
    while True:
        recognizer.classifier(np.zeros((size, *empty.shape[1:]), empty.dtype))
        if size >= max_batch:
            return
        size = min(2 * size, max_batch)


def main(argv: list[str]) -> None:
    f = flags.FLAGS
    uvicorn, app_lib = _server_modules()
    from fer_flax.inference.recognizer import Recognizer

    recognizer = Recognizer(f.workdir, checkpoint=f.checkpoint, tta=f.tta, detector=f.detector)
    if recognizer.trained_on_synthetic:
        print(sources.SYNTHETIC_MODEL_NOTICE, file=sys.stderr)
    warm(recognizer, f.max_batch)
    limits = app_lib.Limits(
        max_upload_bytes=round(f.max_upload_mb * 2**20),
        max_pixels=round(f.max_megapixels * 1e6),
        max_images=f.max_images,
        max_batch=f.max_batch,
        max_wait_s=f.batch_wait_ms / 1000,
    )
    sock = listen(f.host, f.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    name = app_lib.model_info(recognizer)["name"]
    print(f"Serving {name} on http://{shown}:{port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
    config = uvicorn.Config(
        app_lib.create_app(recognizer, limits),
        log_level="warning",
        access_log=False,
        limit_concurrency=256,
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run(sockets=[sock])
