"""`mixdaemon serve`: run the daemon (daemon.service.serve) with config.toml, environment
overrides and these quick-start flags on top."""
from __future__ import annotations

import argparse

from mixdaemon import defaults


def config_from_args(args):
    """The config file (if any) with the quick-start flags on top."""
    from mixdaemon.daemon.config import load_config
    overrides: dict = {}
    if args.watch:
        overrides["watch"] = [{"path": w} for w in args.watch]
    if args.reference:
        overrides["reference"] = args.reference
    if args.out:
        overrides.setdefault("output", {})["root"] = args.out
    if args.allow:
        overrides["allowed_roots"] = args.allow
    if args.osc_host:
        overrides.setdefault("osc", {})["host"] = args.osc_host
    if args.osc_port is not None:
        overrides.setdefault("osc", {})["port"] = args.osc_port
    if args.engine:
        overrides.setdefault("transfer", {})["engine"] = args.engine
    if args.executor:
        overrides.setdefault("executor", {})["kind"] = args.executor
    if args.ray_address:
        overrides.setdefault("executor", {})["address"] = args.ray_address
    if args.workers is not None:
        overrides.setdefault("executor", {})["workers"] = args.workers
    if args.state_dir:
        overrides["state_dir"] = args.state_dir
    if args.settle is not None:
        overrides["settle_seconds"] = args.settle
    if args.log_file:
        overrides["log_file"] = args.log_file
    if args.verbose:
        overrides["log_level"] = "DEBUG"
    return load_config(args.config, overrides=overrides)


def cmd_serve(args) -> int:
    from mixdaemon.daemon.service import serve
    return serve(config_from_args(args))


def register(subparsers) -> None:
    """`mixdaemon serve [--config config.toml] [--watch DIR --reference REF --out DIR ...]`."""
    p = subparsers.add_parser("serve", help="run the background daemon (watch folders + OSC)",
                              description="Run the daemon. Settings come from --config FILE (TOML; the source "
                                          "repository's config.toml is an example with every key and its default, "
                                          "and a misspelt key is an error that lists the keys its section takes), "
                                          "MIXDAEMON__SECTION__KEY environment variables, then these flags.")
    p.add_argument("--config", metavar="FILE", help="the daemon's configuration, a TOML file")
    p.add_argument("--watch", action="append", metavar="DIR", help="watch this folder for bounces (repeatable; "
                                                                    "replaces the config's watch folders)")
    p.add_argument("--reference", metavar="REF", help="default reference: a file or a folder of stems")
    p.add_argument("--out", metavar="DIR", help="output root for results")
    p.add_argument("--osc-host", help=f"OSC listen address (default {defaults.OSC_HOST})")
    p.add_argument("--osc-port", type=int, metavar="N", help=f"OSC UDP port (default {defaults.OSC_PORT}; 0: any free port)")
    p.add_argument("--allow", action="append", metavar="PATH",
                   help="a folder OSC and request-file clients may name for stems, references and outputs, "
                        "e.g. your REAPER projects' folder (repeatable; replaces the config's allowed_roots)")
    p.add_argument("--engine", choices=defaults.ENGINES)
    p.add_argument("--executor", choices=defaults.EXECUTORS,
                   help="where jobs run: local threads, or workers on a Ray cluster (pip install 'mixdaemon[ray]')")
    p.add_argument("--ray-address", metavar="ADDR", help="the Ray cluster to join (auto, ray://HOST:10001); "
                                                         "unset: a local Ray cluster")
    p.add_argument("--workers", type=int, metavar="N", help="jobs run at once (default 1)")
    p.add_argument("--state-dir", help="folder for the job database, lock and log")
    p.add_argument("--settle", type=float, metavar="SECONDS", help="how long a bounce must be unchanged")
    p.add_argument("--log-file")
    p.add_argument("--debug", dest="verbose", action="store_true", default=argparse.SUPPRESS,
                   help="log at DEBUG level (as -v does)")
    p.set_defaults(func=cmd_serve)
