"""The HTTP API and the page, as a Starlette app around a warm `Recognizer`.

    GET  /               the page: a photo or a webcam frame, its faces drawn, their probabilities
    GET  /health         {"status": "ok", "model": ..., "batches": ...}
    POST /predict        one multipart part `image` -> {"model", "image", "faces": [...]}
    POST /predict/batch  several `image` parts -> {"model", "results": [{"image", "faces"}, ...]}

A face is `Face.to_json()`: box {x, y, width, height} in the image's pixels (after its EXIF
orientation), label, confidence, probabilities per class, landmarks ([[x, y], ...] or null). Every
refusal is JSON `{"error": message}` with a 4xx status (`uploads`); 503 when the queue is full.
Decoding runs in worker threads, a few at a time (`Limits.decoders`), so that memory stays bounded
however many uploads arrive; the model runs in the batcher's one thread (`batcher`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.resources
import sys
import traceback
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from fer_flax.inference.recognizer import Recognizer
from fer_flax.inference.serve import uploads
from fer_flax.inference.serve.batcher import Batcher, Busy

FIELD = "image"


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may send, and how requests are batched.

    max_upload_bytes: the request body (413 beyond). max_pixels: an image's width x height (413).
    max_images: `image` parts per batch request (400). decoders: images decoded at once.
    max_batch, max_wait_s, max_pending: the batcher's (`batcher.Batcher`).
    """

    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000
    max_images: int = 16
    decoders: int = 4
    max_batch: int = 32
    max_wait_s: float = 0.005
    max_pending: int = 256


def model_info(recognizer: Recognizer) -> dict[str, Any]:
    """The model as the answers name it: name (architecture/variant, '+'-joined for an ensemble),
    checkpoint steps, whether it is the bundled model and whether it was trained on synthetic faces."""
    members = recognizer.describe()
    return {
        "name": "+".join(f"{m['model_name']}/{m['variant']}" for m in members),
        "checkpoint_steps": [m["checkpoint_step"] for m in members],
        "bundled": all(m["bundled"] for m in members),
        "trained_on_synthetic": recognizer.trained_on_synthetic,
        "classes": list(recognizer.class_names),
        "tta": recognizer.classifier.tta_mode,
    }


def page() -> str:
    return importlib.resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


class _Service:
    """The routes' state: the recognizer behind its batcher, the limits and the decoding slots."""

    def __init__(self, recognizer: Recognizer, limits: Limits):
        self.recognizer, self.limits = recognizer, limits
        self.model = model_info(recognizer)
        self.batcher: Batcher | None = None
        self.decoding = asyncio.Semaphore(limits.decoders)
        self.page = page()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette):
        limits = self.limits
        self.batcher = Batcher(
            self.recognizer.predict,
            max_batch=limits.max_batch,
            max_wait_s=limits.max_wait_s,
            max_pending=limits.max_pending,
        )
        try:
            yield
        finally:
            await run_in_threadpool(self.batcher.close)

    async def index(self, request: Request) -> HTMLResponse:
        return HTMLResponse(self.page)

    async def health(self, request: Request) -> JSONResponse:
        stats = dataclasses.asdict(self.batcher.stats) if self.batcher else {}
        return JSONResponse({"status": "ok", "model": self.model, **stats})

    async def _images(self, request: Request, most: int) -> list[tuple[str, Any]]:
        """(file name, decoded image) of the request's `image` parts, at most `most` of them."""
        uploads.check_multipart(request.headers.get("content-type"))
        async with request.form(max_files=most + 1, max_fields=most + 8) as form:
            parts = form.getlist(FIELD)
            if not parts:
                hint = f"send the image as -F {FIELD}=@photo.jpg"
                raise uploads.Refused(400, f"no part named {FIELD!r}: {hint}")
            if len(parts) > most:
                raise uploads.Refused(400, f"{len(parts)} images sent; the limit is {most} per request")
            decoded = []
            for i, part in enumerate(parts):
                if not isinstance(part, UploadFile):
                    raise uploads.Refused(400, f"part {FIELD!r} #{i + 1} is text, not a file")
                name = part.filename or f"{FIELD} #{i + 1}"
                uploads.check_part_type(name, part.content_type)
                async with self.decoding:
                    image = await run_in_threadpool(uploads.decode, part.file, name, self.limits.max_pixels)
                decoded.append((name, image))
        return decoded

    async def _faces(self, images: list[Any]) -> list[list[dict]]:
        try:
            found = await self.batcher.submit(images)
        except Busy as e:
            raise uploads.Refused(503, str(e)) from e
        return [[face.to_json() for face in faces] for faces in found]

    @staticmethod
    def _record(name: str, image: Any, faces: list[dict]) -> dict:
        return {"image": {"name": name, "width": image.width, "height": image.height}, "faces": faces}

    async def predict(self, request: Request) -> JSONResponse:
        ((name, image),) = await self._images(request, 1)
        (faces,) = await self._faces([image])
        return JSONResponse({"model": self.model, **self._record(name, image, faces)})

    async def predict_batch(self, request: Request) -> JSONResponse:
        decoded = await self._images(request, self.limits.max_images)
        found = await self._faces([image for _, image in decoded])
        results = [self._record(n, im, f) for (n, im), f in zip(decoded, found, strict=True)]
        return JSONResponse({"model": self.model, "results": results})


async def _refused(request: Request, error: Exception) -> JSONResponse:
    if isinstance(error, uploads.Refused):
        return JSONResponse({"error": error.message}, status_code=error.status)
    assert isinstance(error, HTTPException)
    return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)


async def _failed(request: Request, error: Exception) -> JSONResponse:
    """A bug or a broken model call: its traceback on the server's stderr, one JSON line to the client
    (the server goes on)."""
    traceback.print_exception(error, file=sys.stderr)
    return JSONResponse({"error": f"internal error: {type(error).__name__}: {error}"}, status_code=500)


def create_app(recognizer: Recognizer, limits: Limits = Limits()) -> Starlette:
    """The app serving `recognizer` within `limits`; the batcher runs while the app does (its lifespan)."""
    service = _Service(recognizer, limits)
    routes = [
        Route("/", service.index, methods=["GET"]),
        Route("/health", service.health, methods=["GET"]),
        Route("/predict", service.predict, methods=["POST"]),
        Route("/predict/batch", service.predict_batch, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(uploads.BodyLimit, limit=limits.max_upload_bytes)],
        exception_handlers={uploads.Refused: _refused, HTTPException: _refused, Exception: _failed},
        lifespan=service.lifespan,
    )
