"""Using a trained model: the one inference path (`engine`), evaluate, predict, export, explain and
saliency, face detection (`faces`), photos, video, webcam and annotation, the Python API
(`recognizer.Recognizer`), the HTTP server around it (`serve`) and the bundled model's command and
card (`bundle`, `model_card`). Imports `run` and the layers below it, never `training` or `research`."""
