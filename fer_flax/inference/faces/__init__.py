"""Faces in ordinary pictures: detection (`detect`: OpenCV's Haar cascade, or MTCNN with landmarks in
`mtcnn`, behind the interface in `boxes`), FER2013-like cropping, eye-aligned where there are
landmarks (`crop`), and tracking across video frames (`track`). OpenCV and MTCNN's weights are read
only when a detector is made, so fer_flax runs without them until a picture needs detecting."""
