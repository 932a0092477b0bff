"""`mixdaemon models import | list` (the model store) and `mixdaemon embed` (FXencoder embeddings)."""
from __future__ import annotations

from pathlib import Path

from mixdaemon.files import atomic_write

# The --store option of every command that reads or writes models.
STORE_HELP = ("your model folder, where models are written and looked up before the shipped ones "
              "(default: $MIXDAEMON_ENGINES, else engines/ in your per-user data folder)")


def cmd_embed(args) -> int:
    """The MST feature-extraction tool: one FXencoder embedding per file, stacked in one .npy."""
    import numpy as np

    from mixdaemon.audio.io import read_audio
    from mixdaemon.mixing.neural import StyleEncoder
    encoder = StyleEncoder(args.model)
    embeddings = np.stack([encoder.embed(read_audio(f).samples, name=f) for f in args.files])
    out = Path(args.out)
    with atomic_write(out) as f:
        np.save(f, embeddings)
    print(f"{len(args.files)} embeddings of size {embeddings.shape[1]} (model {encoder.source['name']}) "
          f"written to {out}")
    return 0


def cmd_models_import(args) -> int:
    from mixdaemon.mixing.models import import_authors_checkpoints
    paths = import_authors_checkpoints(args.encoder, args.cloner, store=args.store, name=args.name)
    print(f"imported model pair '{args.name}':")
    for p in (paths if isinstance(paths, (list, tuple)) else [paths]):
        print(f"  {p}")
    return 0


def cmd_models_list(args) -> int:
    from mixdaemon.mixing.models import MODEL_KINDS, list_models, shipped_store, store_folders
    models = list_models(args.store)
    for folder in store_folders(args.store):
        shipped = folder == shipped_store()
        print(f"{'shipped models (read-only)' if shipped else 'your models'}: {folder}")
        held = [m for m in models if m.path.parent == folder]
        if not held:
            print("  none" + ("" if shipped else " yet (`mixdaemon models import` and `mixdaemon train` write here)"))
        for m in held:
            hidden = "  (not used: your model of this name is)" if m.hidden else ""
            print(f"  {m.name:<24} {MODEL_KINDS.get(m.format, m.format):<40} "
                  f"created {m.metadata.get('created', '?')}{hidden}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("embed", help="FXencoder embedding of each file (mean over its non-silent segments)")
    p.add_argument("files", nargs="+", help="audio files (mixes or stems)")
    p.add_argument("--out", required=True, help=".npy file: one row per input file, in order")
    p.add_argument("--model", help="model pair name in the model store, or a model file (default: default)")
    p.set_defaults(func=cmd_embed)

    models = sub.add_parser("models", help="model files in the model store")
    msub = models.add_subparsers(dest="models_command", required=True)
    p = msub.add_parser("import", help="import the authors' FXencoder_ps.pt and MixFXcloner_ps.pt")
    p.add_argument("--encoder", required=True)
    p.add_argument("--cloner", required=True)
    p.add_argument("--name", default="mst-official")
    p.add_argument("--store", help=STORE_HELP)
    p.set_defaults(func=cmd_models_import)
    p = msub.add_parser("list", help="list your models and the shipped ones, with the folder of each")
    p.add_argument("--store", help=STORE_HELP)
    p.set_defaults(func=cmd_models_list)
