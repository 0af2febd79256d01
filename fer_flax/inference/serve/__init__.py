"""The model over HTTP: `python -m fer_flax.serve` answers `POST /predict` (and `/predict/batch`)
with the faces of uploaded images as JSON, and serves a page at `/` for photos and the webcam.

`batcher` gathers the images of concurrent requests into one `Recognizer` call (the model stays
loaded and compiled), `uploads` bounds what a request may cost (body size, pixels, concurrent
decodes) and says why it refuses one, `app` holds the routes and `command` the command line. The
page is `page.html`, self-contained (nothing fetched from elsewhere). Needs the `serve` extra.
"""
