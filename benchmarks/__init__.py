"""fer_flax's lasting benchmark tools, run from the repository root as `python -m benchmarks.<tool>`.

- `train_throughput`: training images/s per model family and dtype, TFLOP/s and model FLOP
  utilisation (MFU), and the input pipeline's images/s; `device_peaks` holds the accelerators' peak
  FLOP/s and counts a train step's FLOPs from its jaxpr.
- `compare_torch`: fer_flax against the same networks in PyTorch (`torch_models`, `torch_step`), on a
  CPU or a GPU.
- `time_to_accuracy`: every family's strongest config trained on real FER2013 on one GPU, PublicTest
  accuracy against wall time; `gpu_suite.sh` prepares and runs it on a GPU machine, `gpu_check.sh`
  runs the GPU check (throughput, loader, PyTorch comparison, one recipe), and `gpu_teachers` packs the
  suite's runs as teachers, with their distillation targets, for a student trained on a CPU.
- `model_table`: parameters, GFLOPs and CPU training images/s of every model variant (the README's
  model-zoo table).
- `photo_throughput`: faces in photos on a CPU, images/s and faces/s of detection and classification.
- `face_detectors`: the Haar cascade against the dnn detector (MTCNN) on the same pictures: recall,
  false detections and time per photo.

`train_step_setup` builds the one train step the speed tools time. The measured figures, with the
command, hardware, software and commit behind each, are in benchmarks/RESULTS.md; docs/benchmarks.md
says how to run each tool.
"""
