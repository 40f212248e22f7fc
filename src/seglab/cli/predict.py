"""`seglab predict` and `seglab evaluate`: a model on images, into files or into scores."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from seglab.cli.parsing import add_dataclass_options, add_max_pixels
from seglab.inference.options import InferenceOptions


def add_inference_options(parser) -> None:
    group = parser.add_argument_group("inference")
    add_dataclass_options(group, InferenceOptions, "", use_default=True)
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    add_max_pixels(group)


def inference_options(args: argparse.Namespace) -> InferenceOptions:
    """The InferenceOptions the flags give (checked as seglab.load checks its keywords)."""
    return InferenceOptions(**{field.name: getattr(args, field.name) for field in dataclasses.fields(InferenceOptions)})


def load_model(args: argparse.Namespace):
    """The model the flags ask for."""
    from seglab.api.predicting import load_with

    return load_with(args.model, inference_options(args), args.device)


def register(commands) -> None:
    predict = commands.add_parser("predict", help="predict masks for images with a trained model")
    predict.add_argument("-m", "--model", required=True, help="checkpoint (.pt) or exported model (.onnx, .ts)")
    predict.add_argument("-i", "--input", nargs="+", required=True, help="image files or folders")
    predict.add_argument("-o", "--output", nargs="+", help="one output file per input, or an output folder "
                         "(default: beside each input)")
    predict.add_argument("--viz", action="store_true", help="save an image | prediction figure per input")
    predict.add_argument("-n", "--no-save", action="store_true", help="do not write the masks")
    predict.add_argument("--overlay", action="store_true", help="write <stem>_overlay.png per image")
    predict.add_argument("--palette", action="store_true",
                         help="write class indices as palette PNGs (colours for viewers) instead of mask values")
    predict.add_argument("--instances", action="store_true",
                         help="also write <stem>_instances.png: cells from a seeded watershed of the boundary map")
    predict.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    add_inference_options(predict)
    predict.set_defaults(run=run_predict)

    evaluate = commands.add_parser("evaluate", help="score a model on labelled images")
    evaluate.add_argument("-m", "--model", required=True, help="checkpoint (.pt) or exported model (.onnx, .ts)")
    evaluate.add_argument("data", help="data folder with images/ and masks/ (or a val/ or test/ split)")
    evaluate.add_argument("--split", choices=["train", "val", "test"],
                          help="which split to score (default: val, test, the whole folder or train)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--per-image", action="store_true", help="also print a row per image")
    evaluate.add_argument("--label-map", metavar="FILE.json", help="the table the masks were remapped through "
                          "in training (seglab train --label-map)")
    evaluate.add_argument("--instances", action="store_true",
                          help="add the ISBI scores: adapted Rand error and variation of information of cells")
    add_inference_options(evaluate)
    evaluate.set_defaults(run=run_evaluate)


def run_predict(args: argparse.Namespace) -> int:
    import seglab

    model = load_model(args)
    print(f"model {args.model}: {model.runtime} on {model.device}")  # as serve's first line says it
    summary = seglab.predict_files(model, args.input, args.output,
                                   save=not args.no_save, overlay=args.overlay, viz=args.viz,
                                   instances=args.instances, palette=args.palette, overwrite=args.overwrite)
    if summary.skipped:
        print(f"{len(summary.skipped)} of {summary.inputs} inputs skipped:", file=sys.stderr)
        for path, reason in summary.skipped:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    import seglab

    scores = seglab.evaluate(load_model(args), args.data, split=args.split, instances=args.instances,
                             label_map=args.label_map)
    print(scores.dumps(model=args.model, data=args.data) if args.json else scores.table(per_image=args.per_image))
    return 0
