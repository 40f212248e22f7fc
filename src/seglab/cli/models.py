"""`seglab models` and `seglab weights fetch`: what can be trained, and weights for machines without internet."""
from __future__ import annotations

import argparse
import os

from seglab.errors import SeglabError
from seglab.models.smp_architecture import WEIGHTS_DIR_VARIABLE


def register(commands) -> None:
    models = commands.add_parser("models", help="list the architectures and a curated set of encoders (parameters, "
                                 "pretrained weights, input-size multiple, export formats)")
    models.add_argument("--all-encoders", action="store_true", help="every SMP encoder, not the curated set")
    models.add_argument("--weights-dir", metavar="DIR", help="mark the weights found in DIR (default: "
                        f"${WEIGHTS_DIR_VARIABLE}, else the Hugging Face cache)")
    models.set_defaults(run=run_models)

    weights = commands.add_parser("weights", help="pretrained encoder weights for machines without internet")
    actions = weights.add_subparsers(dest="action", metavar="ACTION", required=True)
    fetch = actions.add_parser("fetch", help="download encoders' weights into a folder, each file checked against "
                               "its published hash; copy the folder and pass --weights-dir DIR to train offline")
    fetch.add_argument("encoders", nargs="+", metavar="ENCODER", help="e.g. resnet34 efficientnet-b0 tu-convnext_tiny")
    fetch.add_argument("--weights", default="imagenet", metavar="NAME",
                       help="which weights (default: imagenet; some SMP encoders also have ssl, swsl, advprop, ...)")
    fetch.add_argument("--dest", metavar="DIR", help=f"the weights folder (default: ${WEIGHTS_DIR_VARIABLE})")
    fetch.set_defaults(run=run_fetch)


def run_models(args: argparse.Namespace) -> int:
    from seglab.api.models import models_table

    print(models_table(args.all_encoders, args.weights_dir))
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from seglab.api.models import fetch_weights

    dest = args.dest or os.environ.get(WEIGHTS_DIR_VARIABLE)
    if not dest:
        raise SeglabError(f"where should the weights go? pass --dest DIR (or set {WEIGHTS_DIR_VARIABLE})")
    paths = fetch_weights(args.encoders, dest, args.weights)
    print(f"{len(paths)} files in {dest}; train offline with --weights-dir {dest} (or {WEIGHTS_DIR_VARIABLE}={dest})")
    return 0
