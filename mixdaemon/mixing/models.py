"""The model store as the command line sees it: list and import models, and build the ONNX graphs
and TensorRT plans of a pair ahead of time. The store itself is nets/repo.py and nets/store.py."""
from __future__ import annotations

from mixdaemon.nets.backends import PhaseLog, build_artifacts, built_artifacts
from mixdaemon.nets.repo import list_models, shipped_store, store_folders
from mixdaemon.nets.store import import_authors_checkpoints

# What each model file format is for, as `models list` shows it.
MODEL_KINDS = {"mixdaemon-mst-pair": "MST pair (--engine neural)", "mixdaemon-automix": "automix model (automix)",
               "mixdaemon-param-predictor": "parameter predictor (--engine param)"}

__all__ = ["MODEL_KINDS", "PhaseLog", "build_artifacts", "built_artifacts", "import_authors_checkpoints",
           "list_models", "shipped_store", "store_folders"]
