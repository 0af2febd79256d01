"""`python -m fer_flax.serve` as clients meet it: the real server started as its own process on a
loopback port with the tiny trained run, then the JSON API (one image, a batch, 16 requests at
once), every kind of bad request answered with its 4xx while the server stays up with bounded
memory, and the page in a real headless Chromium, given a photo through its file input."""

from __future__ import annotations

import concurrent.futures
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.helpers import http_server
from tests.helpers.browser import headless_chromium
from tests.helpers.http_server import post_images, request

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")
# One worker trains the tiny run (conftest's `trained_run`) that several test files share.
pytestmark = [pytest.mark.xdist_group("trained_run"), pytest.mark.slow]

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with http_server.running_server(["--workdir", trained_run, "--max_upload_mb", "10"], log) as running:
        yield running


def _crop(seed: int) -> bytes:
    """A 48x48 grayscale PNG: the model's input size, taken as a face crop whole."""
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8)
    return http_server.png(Image.fromarray(pixels))


def _check_face(face: dict, box: tuple[int, int, int, int]) -> None:
    assert tuple(face["box"][k] for k in ("x", "y", "width", "height")) == box
    probabilities = face["probabilities"]
    assert list(probabilities) == CLASSES and sum(probabilities.values()) == pytest.approx(1, abs=1e-4)
    assert face["label"] == max(probabilities, key=probabilities.get)
    assert face["confidence"] == pytest.approx(probabilities[face["label"]])


def _healthy(server) -> dict:
    status, health = request(server.port, "GET", "/health")
    assert status == 200 and health["status"] == "ok", health
    return health


def test_predict_answers_the_faces_and_the_models_name(server):
    status, answer = post_images(server.port, "/predict", [("crop.png", _crop(0))])
    assert status == 200, answer
    assert answer["model"]["name"] == "cnn/tiny" and answer["model"]["trained_on_synthetic"] is True
    assert answer["image"] == {"name": "crop.png", "width": 48, "height": 48}
    (face,) = answer["faces"]
    _check_face(face, (0, 0, 48, 48))
    assert face["landmarks"] is None  # a crop taken whole: no detector ran


def test_predict_batch_answers_each_image_in_order(server):
    blank = http_server.png(Image.new("RGB", (120, 90), (128, 128, 128)))  # a photo with no face
    images = [("a.png", _crop(1)), ("blank.png", blank), ("b.png", _crop(2))]
    status, answer = post_images(server.port, "/predict/batch", images)
    assert status == 200, answer
    results = answer["results"]
    assert [r["image"]["name"] for r in results] == ["a.png", "blank.png", "b.png"]
    assert [len(r["faces"]) for r in results] == [1, 0, 1]
    _check_face(results[2]["faces"][0], (0, 0, 48, 48))
    _, alone = post_images(server.port, "/predict", [("a.png", _crop(1))])
    assert results[0]["faces"][0]["label"] == alone["faces"][0]["label"]
    for name, p in alone["faces"][0]["probabilities"].items():
        assert results[0]["faces"][0]["probabilities"][name] == pytest.approx(p, abs=1e-5)


def test_concurrent_requests_are_all_answered_and_batched(server):
    before = _healthy(server)
    crops = [_crop(10 + i % 4) for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda c: post_images(server.port, "/predict", [("c.png", c)]), crops))
    assert [status for status, _ in answers] == [200] * 16
    labels = {}
    for crop, (_, answer) in zip(crops, answers, strict=True):
        labels.setdefault(crop, set()).add(answer["faces"][0]["label"])
    assert all(len(found) == 1 for found in labels.values())  # the same image, the same answer
    after = _healthy(server)
    assert after["requests"] - before["requests"] == 16
    assert after["batches"] - before["batches"] < 16  # some requests shared a model call
    assert after["largest_batch"] > 1


def _bomb(side: int) -> bytes:
    """A real decompression bomb: a 1-bit PNG of side x side black pixels (a few hundred KB that
    decode to side² bytes)."""
    row = b"\x00" + bytes((side + 7) // 8)
    deflate = zlib.compressobj(9)
    data = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


BAD_REQUESTS = (
    "not an image", "a truncated file", "no image part", "the wrong content type",
    "a part that is not an image", "a decompression bomb", "too many pixels", "a 50 MB upload",
)  # fmt: skip


@pytest.fixture(scope="module")
def bad_requests() -> tuple[dict[str, tuple], str]:
    """Per case: (status, words of the error, the images or (kind, body)); and the multipart type."""
    crop = _crop(3)
    body, multipart_type = http_server.multipart([("image", "c.png", crop, "image/png")])
    return {
        "not an image": (400, "not an image", [("notes.png", b"these are not the pixels you want")]),
        "a truncated file": (400, "truncated", [("half.png", crop[: len(crop) // 2])]),
        "no image part": (400, "no part named 'image'", ("other", body.replace(b'"image"', b'"other"'))),
        "the wrong content type": (415, "multipart/form-data", ("json", b'{"image": 1}')),
        "a part that is not an image": (
            415,
            "not an image",
            ("text", body.replace(b"image/png", b"text/plain")),
        ),
        "a decompression bomb": (413, "pixels", [("bomb.png", _bomb(20_000))]),
        "too many pixels": (413, "the limit is 40 Mpx", [("wide.png", _bomb(7_000))]),
        "a 50 MB upload": (413, "too large", [("big.png", bytes(50 * 2**20))]),
    }, multipart_type


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_a_bad_request_gets_its_4xx_and_the_server_stays_up(server, bad_requests, case):
    cases, multipart_type = bad_requests
    assert sorted(cases) == sorted(BAD_REQUESTS)
    expected, words, payload = cases[case]
    if isinstance(payload, list):
        status, answer = post_images(server.port, "/predict", payload)
    else:
        kind, body = payload
        content_type = "application/json" if kind == "json" else multipart_type
        status, answer = request(server.port, "POST", "/predict", body, content_type)
    assert status == expected, answer
    assert words in answer["error"], answer
    _healthy(server)


def test_a_streamed_upload_is_refused_once_it_passes_the_limit_with_bounded_memory(server):
    before = http_server.rss_mb(server.process.pid)
    status, answer = http_server.stream_without_length(server.port, "/predict", bytes(2**20), 50 * 2**20)
    assert status == 413 and "too large" in answer["error"], answer
    assert answer["sent"] < 30 * 2**20  # refused while streaming, well before the 50 MB
    for _ in range(3):  # and again: nothing of the refused uploads stays
        http_server.stream_without_length(server.port, "/predict", bytes(2**20), 50 * 2**20)
    assert http_server.rss_mb(server.process.pid) - before < 100
    _healthy(server)


def test_the_page_shows_a_photos_faces_in_a_headless_browser(server, tmp_path):
    face_pictures = pytest.importorskip("tests.helpers.face_pictures")
    from selenium.webdriver.support.ui import WebDriverWait

    status, page = request(server.port, "GET", "/")
    assert status == 200 and not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched elsewhere
    photo = tmp_path / "astronaut.png"
    face_pictures.astronaut().save(photo)
    browser = headless_chromium()
    try:
        browser.get(server.url)
        WebDriverWait(browser, 30).until(lambda b: "cnn/tiny" in b.find_element("id", "model").text)
        assert browser.find_element("id", "synthetic").is_displayed()
        browser.find_element("id", "file").send_keys(str(photo))
        WebDriverWait(browser, 60).until(lambda b: b.find_elements("css selector", "#faces .face"))
        assert browser.find_element("id", "status").text == "1 face found."
        (face,) = browser.find_elements("css selector", "#faces .face")
        assert face.find_element("css selector", ".label").text in CLASSES
        rows = [r.text.split() for r in face.find_elements("css selector", "tr.probability")]
        assert sorted(r[0] for r in rows) == sorted(CLASSES)
        assert all(re.fullmatch(r"[01]\.\d{4}", r[-1]) for r in rows), rows
        size = browser.execute_script("const c = arguments[0]; return [c.width, c.height];",
                                      browser.find_element("id", "canvas"))  # fmt: skip
        assert size == [512, 512]  # the photo, drawn with its face's box
    finally:
        browser.quit()


def test_the_page_posts_a_webcam_frame(server):
    """Chromium's fake camera (a moving test pattern, no face) through getUserMedia: a captured frame
    goes to /predict and its answer is drawn."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser = headless_chromium("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
    try:
        before = _healthy(server)["requests"]
        browser.get(server.url)
        browser.find_element("id", "camera").click()
        video = browser.find_element("id", "video")
        WebDriverWait(browser, 30).until(lambda b: b.execute_script("return arguments[0].videoWidth", video))
        browser.find_element("id", "capture").click()
        WebDriverWait(browser, 30).until(lambda b: "found" in b.find_element("id", "status").text)
        assert browser.find_element("id", "status").text == "No face found."
        width = browser.execute_script("return arguments[0].videoWidth", video)
        canvas = browser.execute_script("return arguments[0].width", browser.find_element("id", "canvas"))
        assert canvas == min(width, 640) > 0  # the frame, drawn
        assert _healthy(server)["requests"] == before + 1
    finally:
        browser.quit()
