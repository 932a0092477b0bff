"""`mixdaemon engines build | list`: the ONNX graphs and TensorRT plans of a model pair, built ahead
of time (mixing.models.build_artifacts) so that a daemon's first job does not wait for them."""
from __future__ import annotations

import sys

from mixdaemon import defaults


def cmd_engines_build(args) -> int:
    from mixdaemon.mixing.models import PhaseLog, build_artifacts
    built, skipped = build_artifacts(args.model, store=args.store, backend=args.backend, precisions=args.precision,
                                     chunk_seconds=args.chunk_seconds, batch_size=args.batch_size,
                                     progress=PhaseLog("", lambda line: print(line, file=sys.stderr)))
    for what, path in built:
        print(f"{what}: {path}")
    if skipped is not None:
        print(f"TensorRT engines skipped: {skipped}")
    return 0


def cmd_engines_list(args) -> int:
    from mixdaemon.mixing.models import built_artifacts
    rows = built_artifacts(args.store)
    if not rows:
        print("no built engines in the model store (build them with `mixdaemon engines build`)")
    for row in rows:
        pairs = ", ".join(row["pairs"]) or "no pair in the store"
        print(f"{row['graph']:<19} {row['precision']}  {row['target']}  [{pairs}]  "
              f"{row['bytes'] / 1e6:.1f} MB  {row['created']}\n    {row['path']}")
    return 0


def register(subparsers) -> None:
    """Add `engines build` and `engines list`; each sets `func(args) -> int`."""
    from mixdaemon.mixing.models import PRECISIONS
    engines = subparsers.add_parser("engines", help="ONNX graphs and TensorRT engines built from the model pairs")
    sub = engines.add_subparsers(dest="engines_command", required=True)
    p = sub.add_parser("build", help="export the ONNX graphs and, where TensorRT runs, build its engines")
    p.add_argument("--model", default=None, help="model pair name or file (default: the neural engine's default pair)")
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt"],
                   help="auto: ONNX graphs, plus TensorRT engines when TensorRT runs here")
    p.add_argument("--precision", nargs="+", default=list(PRECISIONS), choices=PRECISIONS,
                   help="TensorRT engine precisions to build (default: both)")
    p.add_argument("--chunk-seconds", type=float, default=defaults.CHUNK_SECONDS,
                   help="the transfer setting the engines are tuned for")
    p.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE, help="the transfer setting the engines are tuned for")
    p.add_argument("--store", help="model store folder (default: $MIXDAEMON_ENGINES or engines/)")
    p.set_defaults(func=cmd_engines_build)
    p = sub.add_parser("list", help="list the built ONNX graphs and TensorRT engines")
    p.add_argument("--store", help="model store folder (default: $MIXDAEMON_ENGINES or engines/)")
    p.set_defaults(func=cmd_engines_list)
