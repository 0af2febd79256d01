"""Faces in ordinary pictures: detection (`detect`), FER2013-like cropping (`crop`) and tracking
across video frames (`track`). OpenCV is imported only when a detector is made, so fer_flax runs
without it until a picture needs detecting."""
