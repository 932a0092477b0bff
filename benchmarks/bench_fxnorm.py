"""Benchmark FX normalization (fx/normalization.py) and compare the fast compression search with
an original-style brute force.

    python benchmarks/bench_fxnorm.py                   # all parts, MST statistics of the paper
    python benchmarks/bench_fxnorm.py --part song       # only the 3-minute song timing
    taskset -c 0,1 python benchmarks/bench_fxnorm.py    # pin to 2 cores

Parts:
- song: FX-normalize a 3-minute 4-stem song built by tiling the stems of one real song of
  ../shared/data/real_stems (default song_c, whose 8 channels all need compression: the slow case),
  order mst_inference. Prints wall and CPU time, per-step completion times, the machine's load
  average, and the reached loudness / mid fraction per stem.
- search: for every channel of every real stem (15–20 s each) that needs compression after the EQ
  step, run `fxnorm.search_compression` (bracketed secant search) and the released code's brute force (ratio
  r0…20 outer, threshold −10…−40 dB inner, first setting with P < μ+σ; written here only, as the
  reference, with the plain `dsp.compress` on every pass as a direct port would). Compares the chosen
  setting, the resulting P and the time; extrapolates the brute force to the 3-minute song by
  scaling its time per second of audio (pass time is linear in length; the number of passes depends
  on the content, so this is an estimate).
- onsets: does compression move the onsets? For the same channels and thresholds −12…−40 dB at r0,
  compares P computed with the compressed signal's own onsets against P with the uncompressed
  signal's onsets (the shortcut of reusing onsets).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixdaemon.audio import dsp  # noqa: E402
from mixdaemon.fx import normalization as fxnorm
from mixdaemon.fx.stats import FxStats  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL_STEMS = SHARED / "data" / "real_stems"
MST_STATS = SHARED / "data" / "musdb18_fx_stats" / "mst_musdb18_fxfeatures_eqcompimagegain.npy"
SONGS = ("song_a", "song_b", "song_c")


def read_stem(song: str, stem: str) -> np.ndarray:
    audio, rate = sf.read(REAL_STEMS / song / f"{stem}.wav", dtype="float32", always_2d=True)
    assert rate == dsp.WORKING_RATE, f"{song}/{stem}.wav is {rate} Hz"
    return audio


def long_song(seconds: float, song: str) -> dict[str, np.ndarray]:
    """Each stem of one real song tiled to `seconds`."""
    n = int(seconds * dsp.WORKING_RATE)
    stems = {}
    for stem in fxnorm.STEM_NAMES:
        one = read_stem(song, stem)
        stems[stem] = np.concatenate([one] * (n // one.shape[0] + 1))[:n]
    return stems


def bench_song(stats: FxStats, seconds: float, order: str, song: str) -> None:
    stems = long_song(seconds, song)
    print(f"\n== FX normalization of a {seconds:.0f} s 4-stem song ({song} tiled), order {order}, "
          f"{os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.1f}")
    marks = []
    start, cpu = time.perf_counter(), time.process_time()
    out = fxnorm.normalize_stems(stems, stats, order=order,
                                 progress=lambda done, total, label: marks.append((time.perf_counter() - start, label)))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"wall {wall:.1f} s, CPU {cpu:.1f} s, load average after {os.getloadavg()[0]:.1f}")
    print("steps finished at: " + ", ".join(f"{label} {t:.1f}s" for t, label in marks))
    for stem, y in out.items():
        target = stats.stems[stem]
        extra = f", mid fraction {dsp.mid_energy_fraction(y):.3f} (target {target.imager:.3f})" if target.imager else ""
        print(f"  {stem:6s} {dsp.integrated_loudness(y):6.2f} LUFS (target {target.loudness:6.2f}), "
              f"peak {dsp.db(dsp.peak(y)):5.1f} dBFS{extra}")


def brute_force(x: np.ndarray, mean_db: float, std_db: float, setting: fxnorm.CompressorSetting):
    """The released search: every ratio r0…20, every threshold −10…−40 dB, first P < μ+σ wins;
    compressor and onset detector run afresh on each pass."""
    upper = mean_db + std_db
    fxnorm.onset_peak_stat(x)   # the released code measures the input first, as search_compression does
    passes = 0
    for ratio in range(setting.ratio, fxnorm.COMP_MAX_RATIO + 1):
        for threshold in fxnorm.COMP_THRESHOLDS_DB:
            passes += 1
            y = dsp.compress(x, threshold, ratio, setting.attack_ms, setting.release_ms)
            level = fxnorm.onset_peak_stat(y)
            level = -np.inf if level is None else level[0]
            if level < upper:
                return y, float(ratio), float(threshold), level, passes
    return y, float(ratio), float(threshold), level, passes


def eq_normalized_channels(stats: FxStats):
    """(song, stem, channel index, peak-normalised padded channel) for every real stem channel, after
    the EQ step — the input the compression step sees in the training order."""
    for song in SONGS:
        for stem in fxnorm.STEM_NAMES:
            padded = np.pad(read_stem(song, stem).astype(np.float64), ((fxnorm.STEP_PAD, fxnorm.STEP_PAD), (0, 0)))
            equalized = fxnorm.EqMatch(stats.stems[stem].eq, fxnorm.MIN_DB["mst"])(padded)
            for c in range(2):
                yield song, stem, c, fxnorm.peak_normalize(equalized[:, c], fxnorm.COMP_PEAK_DB)


def bench_search(stats: FxStats, song_seconds: float) -> None:
    print("\n== compression search: fast search vs brute force (real stems after EQ, MST statistics)")
    print("song    stem   ch  P before     | fast search: r, θ, P, passes, s | brute force: r, θ, P, passes, s | same")
    totals = {"fast": 0.0, "brute": 0.0, "fast_passes": 0, "brute_passes": 0, "audio_s": 0.0, "n": 0, "same": 0}
    all_audio = 0.0
    for song, stem, c, x in eq_normalized_channels(stats):
        mean_db, std_db = stats.stems[stem].compression
        setting = fxnorm.COMP_SETTINGS[stem]
        seconds = (x.shape[0] - 2 * fxnorm.STEP_PAD) / dsp.WORKING_RATE
        all_audio += seconds
        t = time.perf_counter()
        _, result = fxnorm.search_compression(x, mean_db, std_db, setting)
        t_fast = time.perf_counter() - t
        if result.ratio is None:
            continue
        t = time.perf_counter()
        _, ratio, threshold, level, passes = brute_force(x, mean_db, std_db, setting)
        t_brute = time.perf_counter() - t
        same = (ratio, threshold) == (result.ratio, result.threshold_db)
        print(f"{song} {stem:6s} {c}  {result.peak_stat[0]:6.2f}±{result.peak_stat[1]:4.2f} | "
              f"{result.ratio:4.0f} {result.threshold_db:6.1f} {result.final_mean_db:6.2f} {result.passes:3d} "
              f"{t_fast:5.2f} | {ratio:4.0f} {threshold:6.1f} {level:6.2f} {passes:4d} {t_brute:6.2f} | {same}")
        totals["fast"] += t_fast
        totals["brute"] += t_brute
        totals["fast_passes"] += result.passes
        totals["brute_passes"] += passes
        totals["audio_s"] += seconds
        totals["n"] += 1
        totals["same"] += same
    if not totals["n"]:
        print("no channel needed compression")
        return
    n = totals["n"]
    print(f"{n} of {2 * len(SONGS) * 4} channels needed compression; same setting chosen in {totals['same']} of {n}")
    print(f"passes: fast search {totals['fast_passes']} (mean {totals['fast_passes'] / n:.1f}/channel), "
          f"brute force {totals['brute_passes']} (mean {totals['brute_passes'] / n:.1f}/channel)")
    print(f"time on these channels ({totals['audio_s']:.0f} s of channel audio): fast search {totals['fast']:.1f} s, "
          f"brute force {totals['brute']:.1f} s ({totals['brute'] / totals['fast']:.1f}x)")
    # Extrapolation: the same share of channels needing compression, with the same passes per second
    # of audio, over 8 channels × song_seconds.
    scale = 8 * song_seconds / all_audio
    print(f"estimated for a {song_seconds:.0f} s 4-stem song (×{scale:.1f}, linear in length): "
          f"fast search {totals['fast'] * scale:.0f} s, brute force {totals['brute'] * scale:.0f} s")


def bench_onsets(stats: FxStats) -> None:
    print("\n== does compression move the onsets? (r0, thresholds −12…−40 dB, real stems after EQ)")
    same_sets, count, count_changed, differences = 0, 0, 0, []
    for song, stem, c, x in eq_normalized_channels(stats):
        setting = fxnorm.COMP_SETTINGS[stem]
        onsets = fxnorm.hfc_onsets(x)
        for threshold in (-12.0, -16.0, -20.0, -25.0, -30.0, -40.0):
            y = dsp.compress(x, threshold, setting.ratio, setting.attack_ms, setting.release_ms)
            own = fxnorm.hfc_onsets(y)
            count += 1
            same_sets += np.array_equal(own, onsets)
            count_changed += own.size != onsets.size

            def stat(levels):
                upper = levels[levels > np.percentile(levels, fxnorm.COMP_PERCENTILE)]
                return (upper if upper.size else levels).mean()

            differences.append(stat(fxnorm.onset_peak_levels(y, onsets)) - stat(fxnorm.onset_peak_levels(y, own)))
    differences = np.abs(differences)
    print(f"{count} compressed signals: identical onset positions in {same_sets}, a different onset count in "
          f"{count_changed}")
    print(f"|P mean with reused onsets − P mean with own onsets|: median {np.median(differences):.3f} dB, "
          f"90th percentile {np.percentile(differences, 90):.3f} dB, max {differences.max():.3f} dB "
          f"(σ of the targets: 0.87–1.36 dB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "song", "search", "onsets"), default="all")
    parser.add_argument("--seconds", type=float, default=180.0, help="length of the built song")
    parser.add_argument("--order", default="mst_inference", choices=sorted(fxnorm.ORDERS))
    parser.add_argument("--song", default="song_c", choices=SONGS,
                        help="real song to tile (song_c: all 8 channels need compression, the slow case)")
    parser.add_argument("--stats", default=str(MST_STATS), help="statistics file (default: MUSDB18, MST)")
    args = parser.parse_args()
    stats = FxStats.load(args.stats)
    if args.part in ("all", "song"):
        bench_song(stats, args.seconds, args.order, args.song)
    if args.part in ("all", "search"):
        bench_search(stats, args.seconds)
    if args.part in ("all", "onsets"):
        bench_onsets(stats)


if __name__ == "__main__":
    main()
