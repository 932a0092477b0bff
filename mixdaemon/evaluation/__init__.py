"""Evaluation protocols: every engine, and the anchors (identity, Matchering), on the same material
through the job API."""
