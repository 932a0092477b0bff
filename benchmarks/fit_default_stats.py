"""Regenerate the shipped default FX-normalization statistics and compare them with MUSDB18's.

    python benchmarks/fit_default_stats.py                 # writes both flavours into mixdaemon/fx/data/
    python benchmarks/fit_default_stats.py --flavour mst --songs DIR --out-dir DIR

Fits fx/fit.py's `fit` on ../shared/data/real_stems (song_a/b/c: SONG/{drums,bass,other,
vocals}.wav, read in place, never copied), saves mixdaemon/fx/data/fxnorm_default_{mst,fxnorm}.npz
(the derived statistics only) and prints the comparison with the papers' MUSDB18 statistics
(../shared/data/musdb18_fx_stats) that fx/normalization.py's module docstring quotes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixdaemon.fx import normalization as fxnorm  # noqa: E402
from mixdaemon.fx.fit import fit  # noqa: E402
from mixdaemon.fx.stats import DATA_DIR, FxStats  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
MUSDB18 = {
    "mst": SHARED / "data" / "musdb18_fx_stats" / "mst_musdb18_fxfeatures_eqcompimagegain.npy",
    "fxnorm": SHARED / "data" / "musdb18_fx_stats" / "fxnorm_features_MUSDB18.npy",
}
BANDS_HZ = ((60, 250), (250, 2000), (2000, 8000), (8000, 16000))


def band_means_db(curve: np.ndarray) -> list[float]:
    freqs = np.arange(curve.shape[0]) * 44100 / fxnorm.FFT_SIZE
    return [float(np.mean(20 * np.log10(curve[(freqs >= lo) & (freqs < hi)]))) for lo, hi in BANDS_HZ]


def compare(ours: FxStats, reference: FxStats) -> None:
    bands = " / ".join(f"{lo}-{hi}" for lo, hi in BANDS_HZ)
    print(f"\n{ours.flavour}: MUSDB18 ({reference.source}) vs ours")
    print(f"stem   | loudness LUFS   | {'imager' if ours.flavour == 'mst' else 'panning mean'}     "
          f"| compression mu/sigma dB   | EQ mean dB, bands {bands} Hz")
    for stem in fxnorm.STEM_NAMES:
        r, o = reference.stems[stem], ours.stems[stem]
        if ours.flavour == "mst":
            space = f"{r.imager:5.3f} | {o.imager:5.3f}"
        else:
            space = f"{np.mean(r.panning):5.3f} | {np.mean(o.panning):5.3f}"
        eq_r = "/".join(f"{v:6.1f}" for v in band_means_db(r.eq))
        eq_o = "/".join(f"{v:6.1f}" for v in band_means_db(o.eq))
        print(f"{stem:6s} | {r.loudness:6.1f} | {o.loudness:6.1f} | {space} | "
              f"{r.compression[0]:6.1f}/{r.compression[1]:4.2f} | {o.compression[0]:6.1f}/{o.compression[1]:4.2f} | "
              f"{eq_r} | {eq_o}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", default=str(SHARED / "data" / "real_stems"))
    parser.add_argument("--out-dir", default=str(DATA_DIR))
    parser.add_argument("--flavour", choices=("mst", "fxnorm", "both"), default="both")
    args = parser.parse_args()
    for flavour in (("mst", "fxnorm") if args.flavour == "both" else (args.flavour,)):
        stats = fit(args.songs, flavour=flavour, progress=lambda stage, fraction: print("  " + stage))
        stats.metadata["source"] = (f"mixdaemon fxnorm fit of ../shared/data/real_stems "
                                    f"({len(stats.metadata['songs'])} Demucs-separated songs: "
                                    f"{', '.join(stats.metadata['songs'])}) by benchmarks/fit_default_stats.py")
        path = stats.save(Path(args.out_dir) / f"fxnorm_default_{flavour}.npz")
        print(f"wrote {path}")
        compare(FxStats.load(path), FxStats.load(MUSDB18[flavour]))


if __name__ == "__main__":
    main()
