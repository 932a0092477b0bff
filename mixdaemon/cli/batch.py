"""`mixdaemon batch SONGS_DIR --reference REF --out OUT`: every song folder below SONGS_DIR toward one
reference (daemon.batch.run_batch), on local workers or a Ray cluster; a bar over the songs and a
table of what became of each."""
from __future__ import annotations

import logging

from mixdaemon import defaults
from mixdaemon.cli.progress import ProgressBar
from mixdaemon.cli.transfer import add_transfer_options, settings_from_args


def cmd_batch(args) -> int:
    from mixdaemon.daemon.batch import run_batch
    settings = settings_from_args(args)
    started_ray = False
    if args.executor == "ray":
        from mixdaemon.daemon.ray_executor import connect, disconnect
        # without an address, a local cluster for this batch, shut down after it
        started_ray = connect(args.ray_address, num_cpus=None if args.ray_address else args.workers)
    try:
        with ProgressBar(enabled=not args.quiet) as bar:
            logging.getLogger().addHandler(bar.log_handler())
            outcomes = run_batch(args.songs, args.reference, args.out, settings, executor=args.executor,
                                 workers=args.workers, progress=bar)
    finally:
        if started_ray:
            disconnect()
    width = max(len(o.song) for o in outcomes)
    for o in outcomes:
        if o.state == "done":
            when = "done in an earlier run" if o.earlier else f"done in {o.seconds:.1f} s" if o.seconds else "done"
            print(f"  {o.song:<{width}}  {when:<24} {o.result}")
        else:
            print(f"  {o.song:<{width}}  {o.state:<24} {o.error or ''}")
    done = sum(o.state == "done" for o in outcomes)
    print(f"{done} of {len(outcomes)} songs done; results in {args.out}")
    return 0 if done == len(outcomes) else 1


def register(sub) -> None:
    p = sub.add_parser("batch", help="convert every song folder below a folder toward one reference",
                       description="Every folder below SONGS that holds stems is a song: each is converted toward "
                                   "the reference into OUT/<song>/. Run it again to resume: finished songs are "
                                   "not converted again, failed ones are retried.")
    p.add_argument("songs", metavar="SONGS", help="folder of song folders (each a folder of stems)")
    p.add_argument("--reference", required=True, help="folder of reference stems, or a reference mixture")
    p.add_argument("--out", required=True, help="output folder: one result folder per song")
    p.add_argument("--executor", choices=defaults.EXECUTORS, default="local",
                   help="local: worker threads in this process; ray: workers on a Ray cluster "
                        "(pip install 'mixdaemon[ray]')")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="the cluster to join (auto, ray://HOST:10001); without it a local Ray cluster is "
                        "started for the batch and shut down after it")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="songs converted at once (default 1)")
    add_transfer_options(p)
    p.set_defaults(func=cmd_batch)
