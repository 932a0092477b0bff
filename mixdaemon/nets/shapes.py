"""The shapes the inference pipeline feeds the networks, in one place: nets/inference.py cuts audio
into them, and the TensorRT builder (nets/tensorrt.py) makes its optimization profiles for them."""

REFERENCE_SEGMENT = 2 ** 19  # 11.9 s: the authors' inference segment, also the encoder's training crop
REFERENCE_BATCH = 4  # reference segments per encoder call
INTERPOLATION_CHUNK_SECONDS = 1.0  # time resolution of a reference → reference-B fade
