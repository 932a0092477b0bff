"""Effects: FX normalization (normalization, its statistics in stats, computing them in fit), the
interpretable FX chain (chain) and the features its estimation compares (features), and the
FXmanipulator that draws random effects (manipulator). Imports audio/ and below, never nets/."""
