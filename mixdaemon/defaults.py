"""The one source of the package's user-facing defaults (as in Matchering's defaults.py).

The job settings (mixing/settings.py), the daemon's configuration model (daemon/config.py, derived
from those settings), the command line and the model store all take their defaults from here, so a
default is changed in one place.
"""
import os

ENGINE = "match"                        # the --engine used when none is chosen
ENGINES = ("match", "neural", "param")  # what --engine accepts
BACKEND = "auto"
BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16")  # of the exported graphs and TensorRT plans
# --precision: what the CPU backends compute the networks in (nets/precision.py); "auto" picks by
# measured speed and error against fp32 (no int8: 7–20 dB SNR against fp32, nets/precision.py)
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16")
PRECISION = "auto"

# Shipped models, by name in the model store (engines/MODEL_CARD.md).
DEFAULT_MODEL = "default"               # the MST pair of the neural engine
DEFAULT_PREDICTOR = "params-default"    # the param engine's predictor
DEFAULT_AUTOMIX_MODEL = "automix-default"

# neural: output audio per MixFXcloner call. The job streams the cloner (each layer keeps the input
# its next call needs), so short calls recompute nothing; they hold smaller activations (ONNX
# Runtime's arena grows with the call): a 3-minute job took 1.5 GB at 1 s against 3.1 GB at 12 s,
# and 40.5 s against 48.4 s (docs/BENCHMARKS.md, "Songs of any length").
CHUNK_SECONDS = 1.0
AUTOMIX_CHUNK_SECONDS = 10.0  # automix: output audio per network call
# automix: the mix's integrated loudness. "stems": that of the plain sum of the stems as given (the
# network balances and shapes the stems; how loud the session is stays the user's, and the network's
# own level, learnt from its training mixes, was 5–10 LU off real mixes: docs/BENCHMARKS.md,
# "Automatic mixing"); "model": the network's level as it is; a number: that many LUFS.
AUTOMIX_LOUDNESS = "stems"
BATCH_SIZE = 1
# neural: gradient steps that refine each reference embedding (nets/refine.py; 0 = the encoder's
# embedding as it is), on REFINE_SECONDS of the input stem against REFINE_REFERENCE_SECONDS of the
# reference stem (audible excerpts)
REFINE_STEPS = 0
REFINE_SECONDS = 4.0
REFINE_REFERENCE_SECONDS = 12.0
# A transfer's memory is bounded by these, not by the song's length (mixing/measure.py): a song up to
# ANALYSIS_SECONDS is measured whole; a longer one on ANALYSIS_WINDOWS excerpts of
# ANALYSIS_WINDOW_SECONDS per stem; the converted song is rendered RENDER_BLOCK_SECONDS at a time.
ANALYSIS_SECONDS = 60.0
ANALYSIS_WINDOWS = 6
ANALYSIS_WINDOW_SECONDS = 10.0
RENDER_BLOCK_SECONDS = 10
# A fade to a second reference (--reference-b) converts the song in memory: longer songs are refused
# before any work.
NEURAL_MAX_MINUTES = 20
SEPARATION_MODEL = "htdemucs"  # demucs model for mixtures
CEILING_DBTP = -1.0           # true-peak ceiling of every written stem and mix
OUTPUT_SUBTYPE = "PCM_24"
OUTPUT_SUBTYPES = ("PCM_16", "PCM_24", "PCM_32", "FLOAT")
SEED = 0
# What a transfer may move toward the reference (--match), and how far (--amount: 0 = the input,
# 1 = all the way).
ASPECTS = ("level", "eq", "dynamics", "width", "space")
AMOUNT = 1.0
EVALUATION_SEGMENT_SECONDS = 10.0  # segment length of the raw and unpaired evaluation protocols
# The largest input file the daemon reads (4 GiB: a plain WAV cannot be larger, and 4 GiB of RF64
# or FLAC is hours of audio); a larger one is refused before it is hashed or read.
MAX_INPUT_BYTES = 4 * 2**30

# What mixes a cloner run's targets and references (train/effects.py): the paper's FXmanipulator, the
# pedalboard mixing chains, or either by a coin
CLONER_FX_FAMILIES = ("fxmanipulator", "mixing-chains", "both")

EXECUTORS = ("local", "ray")  # where jobs run: threads in this process, or workers on a Ray cluster


def job_threads() -> int:
    """Threads one job may keep busy: OMP_NUM_THREADS where it is set (a Ray worker of N CPUs gets
    N there; a user sharing the machine sets it), else every CPU of the machine."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1

OSC_HOST = "127.0.0.1"
OSC_PORT = 7700
