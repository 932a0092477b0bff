"""`mixdaemon backends build | list`: the ONNX graphs and TensorRT plans that the onnxruntime and
tensorrt backends run, built ahead of time from a model pair (mixing.models.build_artifacts) so
that a daemon's first job does not wait for them."""
from __future__ import annotations

import sys

from mixdaemon import defaults
from mixdaemon.cli.models import STORE_HELP


def cmd_backends_build(args) -> int:
    from mixdaemon.mixing.models import PhaseLog, build_artifacts
    built, skipped = build_artifacts(args.model, store=args.store, backend=args.backend, precisions=args.precision,
                                     chunk_seconds=args.chunk_seconds, batch_size=args.batch_size,
                                     progress=PhaseLog("TensorRT", lambda line: print(line, file=sys.stderr)))
    for what, path in built:
        print(f"{what}: {path}")
    if skipped is not None:
        print(f"TensorRT plans skipped: {skipped}")
    return 0


def cmd_backends_list(args) -> int:
    from mixdaemon.mixing.models import built_artifacts
    rows = built_artifacts(args.store)
    if not rows:
        print("no ONNX graphs or TensorRT plans built in the model store "
              "(build them with `mixdaemon backends build`)")
    for row in rows:
        pairs = ", ".join(row["pairs"]) or "no pair in the store"
        print(f"{row['graph']:<19} {row['precision']}  {row['target']}  [{pairs}]  "
              f"{row['bytes'] / 1e6:.1f} MB  {row['created']}\n    {row['path']}")
    return 0


def register(subparsers) -> None:
    """Add `backends build` and `backends list`; each sets `func(args) -> int`."""
    backends = subparsers.add_parser("backends", help="ONNX graphs and TensorRT plans built from the model pairs")
    sub = backends.add_subparsers(dest="backends_command", required=True)
    p = sub.add_parser("build", help="export the ONNX graphs and, where TensorRT runs, build its plans")
    p.add_argument("--model", default=None, help="model pair name or file (default: the neural engine's default pair)")
    p.add_argument("--backend", default="auto", choices=[b for b in defaults.BACKENDS if b != "torch"],
                   help="auto: ONNX graphs, plus TensorRT plans when TensorRT runs here")
    p.add_argument("--precision", nargs="+", default=list(defaults.PRECISIONS), choices=defaults.PRECISIONS,
                   help="TensorRT plan precisions to build (default: both)")
    p.add_argument("--chunk-seconds", type=float, default=defaults.CHUNK_SECONDS,
                   help="the transfer setting the plans are tuned for")
    p.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE,
                   help="the transfer setting the plans are tuned for")
    p.add_argument("--store", help=STORE_HELP)
    p.set_defaults(func=cmd_backends_build)
    p = sub.add_parser("list", help="list the built ONNX graphs and TensorRT plans")
    p.add_argument("--store", help=STORE_HELP)
    p.set_defaults(func=cmd_backends_list)
