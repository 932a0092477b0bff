"""FXmanipulator (docs/ALGORITHMS.md §2): random mixing effects for MST's training pairs (§3.2) and
triplets (§4.2).

One call draws a chain — [EQ, Comp] in random order → [Panner, Imager] in random order → reverb
block → Gain — with one Bernoulli draw and one parameter draw per effect, and applies that same
draw to every signal passed together (A and B, or more). Every processor except Gain is followed by
an RMS match to its own input; afterwards the 2048-sample margins are cropped (when the caller
passed padded signals) and the result is clamped to ±1.

The draw is plain data (JSON-serialisable), so it can be stored and applied again (apply_params)
and the param engine's predictor can learn from it (fx/chain.py's chain_from_draw):

    drawn = {
        "stem": "vocals",
        "order": ["comp", "eq", "imager", "pan", "reverb", "gain"],
        "fired": {"eq": True, "comp": True, "pan": False, "imager": True, "reverb": True, "gain": False},
        "params": {"eq": {...}, "comp": {...}, "imager": {...}, "reverb": {...}},   # fired FX only
    }

Parameter dicts (units in the key names; dimensionless values have none):
    eq:     low_shelf_gain_db, low_shelf_freq_hz, peak{1,2,3}_gain_db, peak{1,2,3}_freq_hz,
            peak{1,2,3}_q, high_shelf_gain_db, high_shelf_freq_hz   (shelves have the fixed Q 0.707)
    comp:   threshold_db, ratio, attack_ms, release_ms
    pan:    position (0 = hard left … 1 = hard right), law ("linear" | "constant_power" | "minus_4_5_db")
    imager: width (0 = mono … 1 = unchanged … 2 = side only)
    reverb: kind "impulse_response" with ir_index (into the sorted IR list) and ir_file, or kind
            "algorithmic" with room_size, damping, width; both with dry_weight (w in y = w·x + (1−w)·wet)
    reverb (drums): {"refilter_without_reverb": bool, "low_band": reverb|None, "high_band": reverb|None}
    gain:   gain_db, polarity (+1 | −1)
For drums, fired["reverb"] says the block ran (by default always, for its shelves); whether a
reverb was drawn in it is low_band / high_band being non-None.

Deviations from the released code (each on purpose):
- Reverb probabilities are p × instrument weight, applied once (the shared-dict bug of §2.3 is
  not reproduced): by default drums 0.5, bass 0.01, other 0.7, vocals 0.9.
- Without impulse responses the algorithmic fallback is pedalboard.Reverb (JUCE's Freeverb, with
  the comb and all-pass tunings intact) instead of the original's buggy Freeverb (comb 5
  overwriting combs 1–4, right all-pass 4 = 255). Its room size, damping and width are drawn from
  ALGORITHMIC_REVERB_RANGES, our choice [U→R]; the wet signal is used fully wet and then handled
  like the convolution reverb (RMS match, dry/wet mix).
- Impulse-response convolution is a plain FFT convolution (scipy.fft, float32) rather than
  pedalboard.Convolution, because the spec needs the full wet signal cut at the IR's peak (JUCE's
  convolution normalises the IR and hides its own alignment).
- Drums keep the original behaviour by default: the fixed shelves of both reverb stages always
  run, so drums are re-filtered even when no reverb is drawn. `drums_refilter_without_reverb=False`
  turns a stage without a reverb into a pass-through.
- Single-FX mode (validation sets, §2.4) fires the named effect with probability 1 and nothing
  else (for drums "reverb", the low-band stage keeps its 0.01 factor); for drums, the reverb
  block's shelves only run in the "reverb" mode.

Kept as specified, though a user may notice: the RMS match divides by max(1e-7, mean y²), so a
compressor that squashes a stem below −70 dBFS RMS leaves it quieter than its input; and the
compressor's state starts at zero, so the first attack time passes uncompressed and, once RMS
matched, can exceed full scale — pass padded signals (padded=True) so those samples are cropped.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pedalboard
import soundfile as sf
import soxr
from scipy import fft as sp_fft

from mixdaemon.audio import dsp
from mixdaemon.errors import AudioFileError, ConfigError

STEMS = ("drums", "bass", "other", "vocals")
FX_NAMES = ("eq", "comp", "pan", "imager", "reverb", "gain")
MARGIN_SAMPLES = 2048

DEFAULT_PROBABILITIES = {"eq": 0.9, "comp": 0.9, "pan": 0.3, "imager": 0.8, "gain": 0.5}
# The reverb probability a user or the scheduler sets is multiplied once by the stem's weight.
# The default base values are chosen so the defaults come out as the intended 0.5/0.01/0.7/0.9.
REVERB_STEM_WEIGHT = {"drums": 0.5, "bass": 0.1, "other": 1.0, "vocals": 1.0}
DEFAULT_REVERB_BASE = {"drums": 1.0, "bass": 0.1, "other": 0.7, "vocals": 0.9}
DRUMS_LOW_BAND_REVERB_FACTOR = 0.01

ALGORITHMIC_REVERB_RANGES = {"room_size": (0.3, 0.95), "damping": (0.1, 0.9), "width": (0.3, 1.0)}
PAN_LAWS = ("linear", "constant_power", "minus_4_5_db")
AUDIO_SUFFIXES = (".wav", ".flac")
RT60_MERGE_MS = 3000.0


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


# --- effects ----------------------------------------------------------------------------------------
# Each effect draws its parameters with draw(rng) and applies a given draw to one (n, 2) float64
# signal with apply(signal, params). RMS matching is the manipulator's job, so apply() is the raw
# effect (the EQ test measures its gain before any matching).

class ParametricEQ:
    """Five RBJ biquads in cascade (low shelf, three peaks, high shelf), zero state per call."""

    name = "eq"
    SHELF_Q = 0.707
    GAIN_RANGE_DB = (-15.0, 15.0)
    Q_RANGE = (0.1, 2.0)
    LOW_SHELF_HZ = (30.0, 200.0)
    PEAK_HZ = ((200.0, 1000.0), (1000.0, 3000.0), (3000.0, 8000.0))
    HIGH_SHELF_HZ = (5000.0, 10000.0)

    def __init__(self, sr: int = dsp.WORKING_RATE):
        self.sr = sr

    def draw(self, rng: np.random.Generator) -> dict:
        params = {"low_shelf_gain_db": _uniform(rng, *self.GAIN_RANGE_DB),
                  "low_shelf_freq_hz": _uniform(rng, *self.LOW_SHELF_HZ)}
        for i, band_hz in enumerate(self.PEAK_HZ, start=1):
            params[f"peak{i}_gain_db"] = _uniform(rng, *self.GAIN_RANGE_DB)
            params[f"peak{i}_freq_hz"] = _uniform(rng, *band_hz)
            params[f"peak{i}_q"] = _uniform(rng, *self.Q_RANGE)
        params["high_shelf_gain_db"] = _uniform(rng, *self.GAIN_RANGE_DB)
        params["high_shelf_freq_hz"] = _uniform(rng, *self.HIGH_SHELF_HZ)
        return params

    def sos(self, params: Mapping) -> np.ndarray:
        sections = [dsp.low_shelf(params["low_shelf_freq_hz"], params["low_shelf_gain_db"], self.SHELF_Q, self.sr)]
        for i in range(1, len(self.PEAK_HZ) + 1):
            sections.append(dsp.peaking(params[f"peak{i}_freq_hz"], params[f"peak{i}_gain_db"],
                                        params[f"peak{i}_q"], self.sr))
        sections.append(dsp.high_shelf(params["high_shelf_freq_hz"], params["high_shelf_gain_db"],
                                       self.SHELF_Q, self.sr))
        return np.stack(sections)

    def apply(self, x: np.ndarray, params: Mapping) -> np.ndarray:
        return dsp.apply_sos(x, self.sos(params))


class Compressor:
    """dsp.compress (the §1.3 DSP shared with FX normalization), no make-up gain."""

    name = "comp"
    THRESHOLD_DB = (-80.0, -5.0)
    RATIO = (4.0, 40.0)
    ATTACK_MS = (1.0, 20.0)
    RELEASE_MS = (50.0, 500.0)

    def __init__(self, sr: int = dsp.WORKING_RATE):
        self.sr = sr

    def draw(self, rng: np.random.Generator) -> dict:
        return {"threshold_db": _uniform(rng, *self.THRESHOLD_DB), "ratio": _uniform(rng, *self.RATIO),
                "attack_ms": _uniform(rng, *self.ATTACK_MS), "release_ms": _uniform(rng, *self.RELEASE_MS)}

    def apply(self, x: np.ndarray, params: Mapping) -> np.ndarray:
        return dsp.compress(x, params["threshold_db"], params["ratio"], params["attack_ms"],
                            params["release_ms"], self.sr)


class Panner:
    """Balance of the stereo input with one of three pan laws."""

    name = "pan"

    def draw(self, rng: np.random.Generator) -> dict:
        return {"position": _uniform(rng, 0.0, 1.0), "law": PAN_LAWS[int(rng.integers(len(PAN_LAWS)))]}

    @staticmethod
    def gains(position: float, law: str) -> tuple[float, float]:
        theta = position * np.pi / 2.0
        if law == "linear":
            return 1.0 - position, position
        if law == "constant_power":
            return float(np.cos(theta)), float(np.sin(theta))
        if law == "minus_4_5_db":
            return float(np.sqrt((1.0 - position) * np.cos(theta))), float(np.sqrt(position * np.sin(theta)))
        raise ConfigError(f"pan law {law!r}: expected one of {', '.join(PAN_LAWS)}")

    def apply(self, x: np.ndarray, params: Mapping) -> np.ndarray:
        return x * np.asarray(self.gains(params["position"], params["law"]))


class Imager:
    """Mid/side balance: width b ≤ 1 scales the side by b; b > 1 moves energy from mid to side.
    The mid gain keeps the total energy (the 1e-3 terms are the spec's regularisers)."""

    name = "imager"

    def draw(self, rng: np.random.Generator) -> dict:
        return {"width": round(_uniform(rng, 0.0, 2.0), 3)}

    @staticmethod
    def gains(mid: np.ndarray, side: np.ndarray, width: float) -> tuple[float, float]:
        """(mid gain, side gain) of width b for a signal's mid and side (dsp.to_mid_side, float64),
        §2.2: g_S = b for b ≤ 1, else sqrt(E_tot / (E_S + 1e-3))·(b − 1);
        g_M = sqrt((E_tot − g_S²·E_S) / (E_M + 1e-3))."""
        # einsum rather than np.dot: np.dot runs on multithreaded OpenBLAS, whose spinning threads
        # slowed the whole chain about 2.5× on a busy 2-core machine.
        e_mid, e_side = float(np.einsum("i,i->", mid, mid)), float(np.einsum("i,i->", side, side))
        e_total = e_mid + e_side
        side_gain = width if width <= 1.0 else float(np.sqrt(e_total / (e_side + 1e-3)) * (width - 1.0))
        # max(0, ·) only guards against rounding when nearly all energy moves to the side.
        mid_gain = float(np.sqrt(max(0.0, e_total - side_gain ** 2 * e_side) / (e_mid + 1e-3)))
        return mid_gain, side_gain

    def apply(self, x: np.ndarray, params: Mapping) -> np.ndarray:
        mid, side = dsp.to_mid_side(x)
        mid_gain, side_gain = self.gains(mid, side, params["width"])
        return dsp.from_mid_side(mid_gain * mid, side_gain * side)


class Gain:
    """U[−6, 9] dB with the polarity flipped half the time; the one processor not RMS-matched."""

    name = "gain"
    GAIN_DB = (-6.0, 9.0)

    def draw(self, rng: np.random.Generator) -> dict:
        return {"gain_db": _uniform(rng, *self.GAIN_DB), "polarity": -1 if rng.random() < 0.5 else 1}

    def apply(self, x: np.ndarray, params: Mapping) -> np.ndarray:
        return x * (params["polarity"] * float(dsp.db_to_amp(params["gain_db"])))


# --- reverb -----------------------------------------------------------------------------------------

def _rt60_class(name: str) -> str:
    """Folder name → class key; every class of RT60 ≥ 3000 ms becomes one class (§2.2). The RT60 is
    the first number with a unit ('rt60_450ms', '2.5s'), else the last number, read as ms
    ('rt60_1200'); a name without numbers is a class of its own."""
    match = re.search(r"(\d+(?:\.\d+)?)\s*(ms|s)(?![a-z])", name, re.IGNORECASE)
    numbers = re.findall(r"\d+(?:\.\d+)?", name)
    if match is None and not numbers:
        return name
    if match is not None:
        rt60_ms = float(match.group(1)) * (1000.0 if match.group(2).lower() == "s" else 1.0)
    else:
        rt60_ms = float(numbers[-1])
    return f">={RT60_MERGE_MS:.0f}ms" if rt60_ms >= RT60_MERGE_MS else name


@functools.lru_cache(maxsize=64)
def _load_impulse_response(path: str, sr: int) -> np.ndarray:
    """IR as float64 (n, 1 or 2) at sr, cached because training draws the same few IRs again and again."""
    try:
        ir, file_sr = sf.read(path, dtype="float64", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise AudioFileError(path, f"cannot read impulse response ({error})") from error
    if ir.shape[1] > 2:
        raise AudioFileError(path, f"impulse response has {ir.shape[1]} channels; expected mono or stereo")
    if file_sr != sr:
        ir = soxr.resample(ir, file_sr, sr)
    if not np.all(np.isfinite(ir)):
        raise AudioFileError(path, "impulse response contains NaN or Inf")
    if ir.shape[0] == 0 or not np.any(ir):
        raise AudioFileError(path, "impulse response is empty or silent")
    return ir


class ImpulseResponseLibrary:
    """WAV/FLAC impulse responses under a folder. With subfolders, each top-level subfolder is an
    RT60 class (classes ≥ 3000 ms merged; files directly in the folder form one more class) and a
    draw picks a class uniformly, then a file; without subfolders a draw is uniform over files.
    Files are indexed in sorted relative-path order, so an ir_index names the same file on every
    machine holding the same folder."""

    def __init__(self, folder, sr: int = dsp.WORKING_RATE):
        self.folder = Path(folder)
        self.sr = sr
        if not self.folder.is_dir():
            raise ConfigError(f"ir_folder {self.folder}: not a folder")
        self.files = sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*")
                            if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        if not self.files:
            raise ConfigError(f"ir_folder {self.folder}: no .wav or .flac impulse responses")
        classes: dict[str, list[int]] = {}
        for index, relative in enumerate(self.files):
            parts = relative.split("/")
            key = _rt60_class(parts[0]) if len(parts) > 1 else "."
            classes.setdefault(key, []).append(index)
        self.classes = [classes[key] for key in sorted(classes)]
        self._last_spectrum: tuple[tuple[int, int], np.ndarray] | None = None

    def draw_index(self, rng: np.random.Generator) -> int:
        members = self.classes[int(rng.integers(len(self.classes)))]
        return members[int(rng.integers(len(members)))]

    def load(self, index: int, expected_file: str | None = None) -> np.ndarray:
        if not 0 <= index < len(self.files):
            raise ConfigError(f"reverb ir_index {index}: {self.folder} holds {len(self.files)} impulse responses")
        if expected_file is not None and expected_file != self.files[index]:
            raise ConfigError(f"reverb ir_index {index}: is {self.files[index]!r} in {self.folder}, "
                              f"but the draw names {expected_file!r} (a different IR folder?)")
        return _load_impulse_response(str(self.folder / self.files[index]), self.sr)

    def spectrum(self, index: int, n_fft: int) -> np.ndarray:
        """float32 rFFT of IR `index`, remembered for the next signal: A and B always share the IR
        and usually the length. float32 halves the FFT cost; its rounding (~1e-7 of full scale)
        is far below anything audible in a training augmentation."""
        if self._last_spectrum is None or self._last_spectrum[0] != (index, n_fft):
            ir = self.load(index).astype(np.float32)
            self._last_spectrum = ((index, n_fft), sp_fft.rfft(ir, n_fft, axis=0))
        return self._last_spectrum[1]


class Reverb:
    """Fully wet reverb, RMS-matched to its input, mixed as y = w·x + (1−w)·wet with w ∈ U[0, 0.5).
    Impulse responses when a library is given (convolution, cut at the IR's peak to the input's
    length), else pedalboard's Freeverb."""

    name = "reverb"
    DRY_WEIGHT = (0.0, 0.5)

    def __init__(self, library: ImpulseResponseLibrary | None = None, sr: int = dsp.WORKING_RATE):
        self.library = library
        self.sr = sr

    def draw(self, rng: np.random.Generator) -> dict:
        if self.library is not None:
            index = self.library.draw_index(rng)
            params = {"kind": "impulse_response", "ir_index": index, "ir_file": self.library.files[index]}
        else:
            params = {"kind": "algorithmic"}
            params.update({key: _uniform(rng, *bounds) for key, bounds in ALGORITHMIC_REVERB_RANGES.items()})
        params["dry_weight"] = _uniform(rng, *self.DRY_WEIGHT)
        return params

    def wet(self, x: np.ndarray, params: Mapping) -> np.ndarray:
        if params["kind"] == "impulse_response":
            if self.library is None:
                raise ConfigError("reverb: the draw uses an impulse response but this FXManipulator has no ir_folder")
            index = int(params["ir_index"])
            ir = self.library.load(index, params.get("ir_file"))
            start = int(np.argmax(np.max(np.abs(ir), axis=1)))
            n_fft = sp_fft.next_fast_len(x.shape[0] + ir.shape[0] - 1, real=True)
            spectrum = sp_fft.rfft(x.astype(np.float32), n_fft, axis=0) * self.library.spectrum(index, n_fft)
            return sp_fft.irfft(spectrum, n_fft, axis=0)[start:start + x.shape[0]].astype(np.float64)
        if params["kind"] == "algorithmic":
            board = pedalboard.Reverb(room_size=params["room_size"], damping=params["damping"],
                                      width=params["width"], wet_level=1.0, dry_level=0.0)
            return board(np.ascontiguousarray(x.T, dtype=np.float32), self.sr).T.astype(np.float64)
        raise ConfigError(f"reverb kind {params['kind']!r}: expected 'impulse_response' or 'algorithmic'")

    def apply(self, x: np.ndarray, params: Mapping) -> np.ndarray:
        w = params["dry_weight"]
        return w * x + (1.0 - w) * dsp.rms_match(self.wet(x, params), x)


class DrumsReverbBlock:
    """Drums' two-band reverb (§2.2). Stage 1 (low band): branch = RMS-matched high shelf −50 dB at
    100 Hz (≈ low-pass), reverberated with probability 0.01·p; out = 0.8·x + 0.2·branch. Stage 2
    (high band), on stage 1's output: branch = low shelf −50 dB at 100 Hz (≈ high-pass), reverberated
    with probability p; out = 0.6·in + 0.4·branch. It makes its own Bernoulli draws, so the
    manipulator always asks it to draw."""

    name = "reverb"
    SHELF_HZ = 100.0
    SHELF_GAIN_DB = -50.0

    def __init__(self, reverb: Reverb, probability: float, refilter_without_reverb: bool = True,
                 sr: int = dsp.WORKING_RATE):
        self.reverb = reverb
        self.probability = probability
        self.refilter_without_reverb = refilter_without_reverb
        self.low_pass = dsp.high_shelf(self.SHELF_HZ, self.SHELF_GAIN_DB, sr=sr)
        self.high_pass = dsp.low_shelf(self.SHELF_HZ, self.SHELF_GAIN_DB, sr=sr)

    def draw(self, rng: np.random.Generator) -> dict | None:
        low = self.reverb.draw(rng) if rng.random() < DRUMS_LOW_BAND_REVERB_FACTOR * self.probability else None
        high = self.reverb.draw(rng) if rng.random() < self.probability else None
        if low is None and high is None and not self.refilter_without_reverb:
            return None
        return {"refilter_without_reverb": self.refilter_without_reverb, "low_band": low, "high_band": high}

    def apply(self, x: np.ndarray, params: Mapping) -> np.ndarray:
        refilter = params["refilter_without_reverb"]
        if params["low_band"] is not None or refilter:
            branch = dsp.rms_match(dsp.apply_sos(x, self.low_pass), x)
            if params["low_band"] is not None:
                branch = self.reverb.apply(branch, params["low_band"])
            x = 0.8 * x + 0.2 * branch
        if params["high_band"] is not None or refilter:
            branch = dsp.apply_sos(x, self.high_pass)
            if params["high_band"] is not None:
                branch = self.reverb.apply(branch, params["high_band"])
            x = 0.6 * x + 0.4 * branch
        return x


# --- probabilities ----------------------------------------------------------------------------------

def schedule_from_losses(single_fx_losses: Mapping[str, float]) -> dict[str, float]:
    """§2.4 [U→R]: p_f = clip(0.1 + 0.8·(ℓ_f − min ℓ)/(max ℓ − min ℓ), 0.1, 0.9), ℓ_f being the
    validation loss on the single-FX set of f — the FX the encoder finds hardest fire most often.
    Equal losses give 0.5 for all. Keys other than FX names (e.g. "full") are ignored. The result
    is a base probability dict for FXManipulator.set_probabilities (which applies the reverb stem
    weights once)."""
    losses = {fx: float(loss) for fx, loss in single_fx_losses.items() if fx in FX_NAMES}
    if not losses:
        raise ConfigError(f"single_fx_losses: no FX among {sorted(single_fx_losses)}; "
                          f"expected some of {', '.join(FX_NAMES)}")
    bad = [fx for fx, loss in losses.items() if not np.isfinite(loss)]
    if bad:
        raise ConfigError(f"single_fx_losses[{bad[0]!r}]: loss is not finite")
    low, high = min(losses.values()), max(losses.values())
    if high == low:
        return {fx: 0.5 for fx in losses}
    return {fx: float(np.clip(0.1 + 0.8 * (loss - low) / (high - low), 0.1, 0.9)) for fx, loss in losses.items()}


def _check_probabilities(probabilities: Mapping[str, float]) -> dict[str, float]:
    checked = {}
    for fx, p in probabilities.items():
        if fx not in FX_NAMES:
            raise ConfigError(f"probabilities[{fx!r}]: unknown FX; expected one of {', '.join(FX_NAMES)}")
        if not 0.0 <= float(p) <= 1.0:
            raise ConfigError(f"probabilities[{fx!r}] = {p}: must lie in [0, 1]")
        checked[fx] = float(p)
    return checked


# --- the manipulator --------------------------------------------------------------------------------

class FXManipulator:
    """Random mixing effects for one stem (see the module docstring).

    probabilities: base firing probabilities by FX name (missing keys keep the defaults); the
    reverb value is multiplied by REVERB_STEM_WEIGHT[stem] once. ir_folder: impulse responses for
    the reverb (else pedalboard's algorithmic reverb). single_fx: only that FX, firing every call.
    drums_refilter_without_reverb: drums' reverb shelves run even when no reverb is drawn (the
    original behaviour, default)."""

    def __init__(self, stem: str, probabilities: Mapping[str, float] | None = None, ir_folder=None,
                 sr: int = dsp.WORKING_RATE, *, single_fx: str | None = None,
                 drums_refilter_without_reverb: bool = True):
        if stem not in STEMS:
            raise ConfigError(f"stem {stem!r}: expected one of {', '.join(STEMS)}")
        if single_fx is not None and single_fx not in FX_NAMES:
            raise ConfigError(f"single_fx {single_fx!r}: expected one of {', '.join(FX_NAMES)}")
        if sr < 22050:
            raise ConfigError(f"sr {sr}: the EQ bands reach 10 kHz, so the rate must be at least 22050 Hz")
        self.stem = stem
        self.sr = sr
        self.single_fx = single_fx
        library = ImpulseResponseLibrary(ir_folder, sr) if ir_folder is not None else None
        reverb = Reverb(library, sr)
        if stem == "drums":
            refilter = drums_refilter_without_reverb and single_fx in (None, "reverb")
            reverb = DrumsReverbBlock(reverb, 0.0, refilter, sr)
        self.effects = {effect.name: effect for effect in
                        (ParametricEQ(sr), Compressor(sr), Panner(), Imager(), reverb, Gain())}
        self._base = {**DEFAULT_PROBABILITIES, "reverb": DEFAULT_REVERB_BASE[stem]}
        self._probabilities: dict[str, float] = {}
        if single_fx is not None:
            if probabilities is not None:
                raise ConfigError("probabilities: a single_fx FXManipulator fires its one FX every call; "
                                  "pass no probabilities")
            self._apply_probabilities({fx: float(fx == single_fx) for fx in FX_NAMES})
        else:
            self.set_probabilities(probabilities or {})

    # probabilities

    def set_probabilities(self, probabilities: Mapping[str, float]) -> None:
        """Set base probabilities for some FX (the others keep their current values), e.g. from
        schedule_from_losses. The reverb value is weighted by the stem once."""
        if self.single_fx is not None:
            raise ConfigError(f"probabilities: this FXManipulator is single-FX ({self.single_fx}); they are fixed")
        self._base.update(_check_probabilities(probabilities))
        effective = dict(self._base)
        effective["reverb"] *= REVERB_STEM_WEIGHT[self.stem]
        self._apply_probabilities(effective)

    def _apply_probabilities(self, effective: dict[str, float]) -> None:
        self._probabilities = effective
        if isinstance(self.effects["reverb"], DrumsReverbBlock):
            self.effects["reverb"].probability = effective["reverb"]

    # drawing and applying

    def draw(self, rng: np.random.Generator) -> dict:
        """One random draw of the whole chain (plain data; does not depend on the signals)."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng: expected numpy.random.Generator, got {type(rng).__name__}")
        order = [pair[i] for pair in (("eq", "comp"), ("pan", "imager")) for i in rng.permutation(2)]
        order += ["reverb", "gain"]
        fired, params = {}, {}
        for fx in order:
            effect = self.effects[fx]
            if isinstance(effect, DrumsReverbBlock):
                drawn = effect.draw(rng)
            else:
                drawn = effect.draw(rng) if rng.random() < self._probabilities[fx] else None
            fired[fx] = drawn is not None
            if drawn is not None:
                params[fx] = drawn
        return {"stem": self.stem, "order": order, "fired": fired, "params": params}

    def manipulate(self, signals: Sequence[np.ndarray], rng: np.random.Generator, *,
                   padded: bool = False) -> tuple[list[np.ndarray], dict]:
        """Draw once and apply the draw to every signal. signals: (n, 2) arrays; with padded=True
        each carries MARGIN_SAMPLES extra samples at both ends, cropped after processing.
        Returns float32 (n, 2) arrays in [−1, 1] and the draw."""
        drawn = self.draw(rng)
        return self.apply_params(signals, drawn, padded=padded), drawn

    def apply_params(self, signals: Sequence[np.ndarray], drawn_params: Mapping, *,
                     padded: bool = False) -> list[np.ndarray]:
        """Apply a given draw (from draw, manipulate or JSON) deterministically."""
        if drawn_params.get("stem") != self.stem:
            raise ConfigError(f"drawn_params['stem'] = {drawn_params.get('stem')!r}: "
                              f"this FXManipulator is for {self.stem!r}")
        unknown = [fx for fx in drawn_params["order"] if fx not in FX_NAMES]
        if unknown:
            raise ConfigError(f"drawn_params['order']: unknown FX {unknown[0]!r}")
        chain = [fx for fx in drawn_params["order"] if drawn_params["fired"].get(fx, False)]
        missing = [fx for fx in chain if fx not in drawn_params["params"]]
        if missing:
            raise ConfigError(f"drawn_params['params']: {missing[0]!r} fired but has no parameters")
        margin = MARGIN_SAMPLES if padded else 0
        outputs = []
        for i, x in enumerate(signals):
            x = np.asarray(x)
            if x.ndim != 2 or x.shape[1] != 2 or x.shape[0] <= 2 * margin:
                raise ValueError(f"signals[{i}]: shape {x.shape}; expected (n, 2) stereo"
                                 + (f" with n > {2 * margin} (padded)" if padded else ""))
            y = x.astype(np.float64)
            # Level is matched on the segment proper, not the margins: a compressor's settling
            # burst at the start of the padding would otherwise dominate the RMS and leave the
            # rest of the stem up to 20 dB quieter, so "gain" would no longer be the only level FX.
            middle = slice(margin, y.shape[0] - margin)
            for fx in chain:
                processed = self.effects[fx].apply(y, drawn_params["params"][fx])
                y = processed if fx == "gain" else dsp.rms_match(processed, y, middle)
            y = y[margin:y.shape[0] - margin]
            outputs.append(np.clip(y, -1.0, 1.0).astype(np.float32))
        return outputs

