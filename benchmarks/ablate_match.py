"""Ablations of the match engine on the raw or unpaired protocol: each variant changes one constant
of fx/matching.py (or leaves an aspect out) for its own conversions, in one run beside the engine as
shipped, so the ratios compare directly.

    OMP_NUM_THREADS=1 python benchmarks/ablate_match.py WORK/songs --protocol raw --seed 0

WORK/songs is the songs folder benchmarks/evaluate_transfer.py builds. Prints the per-stem and
multitrack L/R ratios (raw) or the feature ratios (unpaired) of every variant.
"""
from __future__ import annotations

import argparse

import numpy as np

from mixdaemon.evaluation.raw import evaluate_raw
from mixdaemon.evaluation.unpaired import evaluate_unpaired
from mixdaemon.fx import matching
from mixdaemon.mixing.match import MatchingEngine
from mixdaemon.mixing.settings import Controls

VARIANTS = {
    "as shipped": {},
    "EQ limit ±20 dB": {"MAX_EQ_DB": 20.0},
    "1/3-octave EQ smoothing": {"EQ_SMOOTHING_OCTAVES": 1 / 3},
    "1-octave EQ smoothing": {"EQ_SMOOTHING_OCTAVES": 1.0},
    "compression up to 4:1": {"MAX_RATIO": 4.0},
    "no width step": {"aspects": ("level", "eq", "dynamics", "space")},
    "no dynamics steps": {"aspects": ("level", "eq", "width", "space")},
    "no space step": {"aspects": ("level", "eq", "dynamics", "width")},
    "reverb send up to 0 dB": {"SEND_GRID_DB": np.arange(-36.0, 0.5, 1.0)},
}


class Variant(MatchingEngine):
    """The match engine with some of fx/matching.py's constants replaced while it converts."""

    def __init__(self, name: str, changes: dict):
        aspects = changes.get("aspects")
        super().__init__(Controls(aspects=frozenset(aspects)) if aspects else None)
        self.name = name
        self.info = {"name": name, "kind": "match engine variant"}
        self.constants = {k: v for k, v in changes.items() if k != "aspects"}

    def convert(self, *args, **kwargs):
        shipped = {key: getattr(matching, key) for key in self.constants}
        try:
            for key, value in self.constants.items():
                setattr(matching, key, value)
            return super().convert(*args, **kwargs)
        finally:
            for key, value in shipped.items():
                setattr(matching, key, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("songs_dir")
    parser.add_argument("--protocol", choices=("raw", "unpaired"), default="raw")
    parser.add_argument("--seed", type=int, action="append")
    parser.add_argument("--variants", help="comma-separated names of VARIANTS to run (default: all)")
    args = parser.parse_args()
    evaluate = evaluate_raw if args.protocol == "raw" else evaluate_unpaired
    chosen = args.variants.split(",") if args.variants else list(VARIANTS)
    report = evaluate(args.songs_dir, [Variant(name, VARIANTS[name]) for name in chosen],
                      seeds=args.seed or [0])
    for name, entry in report["engines"].items():
        summary = entry["summary"]
        if args.protocol == "raw":
            print(f"{name:28s} per stem {summary['stem']['ratio_lr']:.3f}  multitrack {summary['multitrack']['ratio_lr']:.3f}"
                  f"  M/S per stem {summary['stem']['ratio_ms']:.3f}")
        else:
            print(f"{name:28s} " + "  ".join(f"{k} {v:.3f}" for k, v in summary.items() if k.startswith(("ratio_", "mean_ratio"))))


if __name__ == "__main__":
    main()
