"""``gptclf serve``: its limits come from :class:`gptclf.inference.serve.settings.ServeSettings`."""

from __future__ import annotations

import argparse
import warnings

from ..inference.serve.settings import ServeSettings
from .options import add_options, given_options
from .predict import add_backend_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP API and web page for a fine-tuned model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", action="append", metavar="[NAME=]RUN",
                   help="a run directory written by 'gptclf train', named NAME (bare: its directory's name); "
                        "repeat it to serve several models from one process, runs of one base sharing it "
                        "(default: runs/latest)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind; 0.0.0.0 exposes the service to the network")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto")
    add_backend_options(p)
    add_options(p, ServeSettings)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = ServeSettings(**given_options(args, ServeSettings)).check()
    from ..errors import DataWarning
    from ..inference.serve.app import serve

    warnings.filterwarnings("once", category=DataWarning)  # truncation: say it once, not per request
    serve(args.model or ["runs/latest"], args.host, args.port, settings, device=args.device,
          quantize="int8" if args.int8 else None, backend=args.backend, threads=args.threads, static_shapes=args.static_shapes, log_level=args.log_level, access_log=args.access_log)
    return 0
