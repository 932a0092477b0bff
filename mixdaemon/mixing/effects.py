"""The effects behind evaluation material, for the evaluation: the FXmanipulator's random draws
(fx/manipulator.py, docs/ALGORITHMS.md §2) and the FX chain in DAW units that a draw corresponds to
(fx/chain.py), with its EQ response."""
from __future__ import annotations

from mixdaemon.fx.chain import StemChain, chain_from_draw, eq_response_db
from mixdaemon.fx.manipulator import FXManipulator

__all__ = ["FXManipulator", "StemChain", "chain_from_draw", "eq_response_db"]
