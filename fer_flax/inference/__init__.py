"""Using a trained model: the one inference path (`engine`), evaluate, predict, export, explain and
saliency, face detection (`faces`), photos, video, webcam and annotation. Imports `run` and the layers
below it, never `training` or `research`."""
