"""`seglab serve`: a model behind an HTTP API and a web page (the `serve` extra: FastAPI and uvicorn)."""
from __future__ import annotations

import argparse
import dataclasses
import os

from seglab.cli.parsing import add_dataclass_options
from seglab.cli.predict import add_inference_options, inference_options
from seglab.serve.options import ServeOptions

TOKEN_VARIABLE = "SEGLAB_TOKEN"


def register(commands) -> None:
    serve = commands.add_parser("serve", help="serve a model over HTTP: an API, a web page, batched predictions")
    serve.add_argument("-m", "--model", required=True, help="checkpoint (.pt) or exported model (.onnx, .ts)")
    server = serve.add_argument_group("server")
    add_dataclass_options(server, ServeOptions, "", use_default=True)
    server.add_argument("--no-auth", action="store_true",
                        help="serve without a token on an address other machines reach (anyone there may use it)")
    add_inference_options(serve)
    serve.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from seglab.api.predicting import load_with
    from seglab.serve.server import serve

    # Checked before the model loads, so a refused --host or --scale costs no time.
    inference = inference_options(args)
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServeOptions) if f.metadata.get("cli", True)}
    options = ServeOptions(**{**flags, "token": args.token or os.environ.get(TOKEN_VARIABLE),
                              "no_auth": args.no_auth})
    if options.runs is not None and not os.path.isdir(options.runs):
        from seglab.errors import SeglabError

        raise SeglabError(f"--runs {options.runs}: no such folder; give the folder that holds your run folders")
    serve(load_with(args.model, inference, args.device), options)
    return 0
