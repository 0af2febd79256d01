"""What a request may cost, and the 4xx answer when it asks too much or sends the wrong thing.

- The body: `BodyLimit`, an ASGI middleware, refuses a declared `Content-Length` over the limit before
  reading a byte, and stops a body without one (chunked) as soon as the bytes read pass the limit:
  413 either way, and the upload is never held whole (Starlette spools file parts to disk past 1 MB).
- The pixels: `decode` reads an image's header first and refuses one with more pixels than allowed
  (a decompression bomb: a small file of a huge image) before decoding it: 413.
- The rest: not multipart (415), a part that says it is not an image (415), no `image` part, a file
  that is not an image or is truncated (400).

Each refusal is a `Refused(status, message)`, which the app answers as JSON `{"error": message}`.
"""

from __future__ import annotations

import json
from typing import IO

from PIL import Image

from fer_flax.inference import image_io

# The part types taken as images: any image/*, and what clients send when they do not know the type.
GENERIC_TYPES = ("application/octet-stream", "")


class Refused(Exception):
    """A request answered with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def megabytes(size: int) -> str:
    return f"{size / 2**20:.3g} MB"


class BodyLimit:
    """ASGI middleware: request bodies of at most `limit` bytes (413 beyond, while streaming)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_json(send, 413, self._message(f"{megabytes(int(declared))} declared"))
            return
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise Refused(413, self._message(f"over {megabytes(self.limit)} sent"))
            return message

        await self.app(scope, limited_receive, send)

    def _message(self, what: str) -> str:
        return f"the upload is too large ({what}); the limit is {megabytes(self.limit)}"


async def _send_json(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def check_multipart(content_type: str | None) -> None:
    """415 unless the request is multipart/form-data (the images are its `image` parts)."""
    if not (content_type or "").lower().startswith("multipart/form-data"):
        raise Refused(
            415,
            f"send the image as multipart/form-data with a part named 'image' (got content type "
            f"{content_type or 'none'!r})",
        )


def check_part_type(name: str, content_type: str | None) -> None:
    """415 for a part that declares a type other than an image (or no type, or a generic one)."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if not kind.startswith("image/") and kind not in GENERIC_TYPES:
        raise Refused(415, f"{name}: the part is {kind!r}, not an image (PNG, JPEG, or another image/*)")


def decode(file: IO[bytes], name: str, max_pixels: int) -> Image.Image:
    """The upright 8-bit image in `file` (as the photos' reader gives it), refusing one of more than
    `max_pixels` pixels before decoding it (413), and a file that is no image or is damaged (400)."""
    try:
        with Image.open(file) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise Refused(
                    413,
                    f"{name}: the image is {width}x{height} pixels ({width * height / 1e6:.1f} Mpx); "
                    f"the limit is {max_pixels / 1e6:g} Mpx",
                )
            im.load()
            return image_io.upright_8bit(im)
    except Image.UnidentifiedImageError as e:
        raise Refused(400, f"{name}: not an image (no format Pillow reads: PNG, JPEG, WebP, ...)") from e
    except Image.DecompressionBombError as e:
        raise Refused(413, f"{name}: {e}") from e
    except (OSError, ValueError, SyntaxError) as e:
        # Pillow: UnidentifiedImageError (no image), "image file is truncated" (an OSError), and
        # some malformed headers as ValueError or SyntaxError.
        raise Refused(400, f"{name}: not a readable image ({type(e).__name__}: {e})") from e
