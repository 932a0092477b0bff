"""Training the MST networks (docs/ALGORITHMS.md §2–§4) on the project's own material.

- material: procedural songs in the MUSDB18 layout;
- data: FX-normalized, silence-trimmed stem library (cached) and the FXmanipulator pairs/triplets;
- loop: what both trainings share (seeds, devices, resumable checkpoints, CSV log, progress);
- encoder: contrastive FXencoder training with probability scheduling (§3.3, §2.4);
- cloner: MixFXcloner training against a frozen encoder with the multi-scale spectral loss (§4.3);
- runs: the runs `mixdaemon train ...` (cli/train.py) starts: train_encoder, train_cloner, train_automix.
"""
