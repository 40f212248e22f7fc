"""The `seglab` command: argparse subcommands that call the library. No logic lives here."""
from __future__ import annotations

import argparse
import json
import sys

from seglab import __version__
from seglab.errors import SeglabError


# Seeds of the watershed: interiors whose membrane probability is below this. Lower values merge
# fewer cells until seeds go missing; 0.05-0.07 scored best on ISBI slices 25-29 (BENCHMARKS.md).
SEED_THRESHOLD = 0.07


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, not {text!r}") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, not {text!r}") from None


def _class_weights(text: str):
    return text if text in ("auto", "none") else _floats(text)


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _add_mask_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mask-values", type=_ints, help="mask values in class order, e.g. 0,128,255")
    parser.add_argument("--num-classes", type=int, help="masks hold class indices 0..K-1")
    parser.add_argument("--class-names", type=_names, help="comma-separated names, one per class")
    parser.add_argument("--ignore-index", type=int, dest="ignore_value",
                        help="mask value that counts nowhere (e.g. 11 for CamVid's void)")
    parser.add_argument("--mask-colors", metavar="FILE.json", help="colour table for RGB colour masks")


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tile", type=_ints, help="overlap-tile prediction with H[,W] tiles")
    parser.add_argument("--overlap", type=float, default=0.5, help="tile overlap fraction (default 0.5)")
    parser.add_argument("--tta", choices=["none", "flips", "d4"], default="none",
                        help="test-time augmentation: average over flips or all 8 rotations/flips")
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    parser.add_argument("--membrane-class", type=int, default=0,
                        help="class index of the boundaries for --instances (ISBI: 0 = membrane)")
    parser.add_argument("--seed-threshold", type=float, default=SEED_THRESHOLD,
                        help=f"--instances: membrane probability below which pixels seed a cell (default {SEED_THRESHOLD})")
    parser.add_argument("--device", default="auto")


def _predictor(args):
    from seglab.runtime.device import resolve_device
    from seglab.inference.predictor import Predictor

    tile = (args.tile[0], args.tile[-1]) if args.tile else None
    return Predictor.from_checkpoint(args.model, resolve_device(args.device), args.mask_threshold, tile=tile,
                                     overlap=args.overlap, tta=args.tta, batch_size=args.batch_size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seglab", description="Train and run image-segmentation models.")
    parser.add_argument("--version", action="version", version=f"seglab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    check = commands.add_parser("check", help="describe a data folder and find problems before training")
    check.add_argument("data", help="folder with images/ + masks/, or train/ val/ test/ subfolders")
    _add_mask_options(check)
    check.add_argument("--preview", metavar="FILE.png", help="write a grid of augmented image/mask pairs")
    check.add_argument("--augment", choices=["none", "light", "paper", "strong"], default="paper",
                       help="augmentation preset shown by --preview (default paper)")
    check.add_argument("--crop", type=_ints, help="crop size shown by --preview, H[,W]")
    check.add_argument("-n", "--count", type=int, default=8, help="pairs in the preview (default 8)")
    check.add_argument("--fix-to", metavar="DIR", help="write a clean copy into DIR (new or empty): class-index PNG "
                       "masks, blurred edges snapped to the nearest class, paired names; originals untouched")

    report = commands.add_parser("report", help="write RUN_DIR/report.html: curves, scores, best and worst "
                                 "predictions (one self-contained file)")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `seglab train --out`")
    report.add_argument("--device", default="cpu", help="device for the validation predictions (default cpu)")

    data = commands.add_parser("data", help="download a public data set into the seglab layout and check it")
    data.add_argument("name", choices=["carvana"], help="carvana: Kaggle's Carvana Image Masking Challenge")
    data.add_argument("--dest", required=True, metavar="DIR", help="folder for images/ and masks/ (new or empty)")
    data.add_argument("--train-zip", metavar="ZIP", help="an already downloaded train_hq.zip (skips the download)")
    data.add_argument("--masks-zip", metavar="ZIP", help="an already downloaded train_masks.zip")

    train = commands.add_parser("train", help="train a model on a data folder")
    train.add_argument("data", nargs="?", help="data folder (or data.root in --config)")
    train.add_argument("--config", help="YAML file with data/model/train sections; flags override it")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    train.add_argument("--out", help="run folder (default runs/<data>-<model>-<time>)")
    train.add_argument("-e", "--epochs", type=int, dest="train.epochs")
    train.add_argument("-b", "--batch-size", type=int, dest="train.batch_size")
    train.add_argument("-l", "--learning-rate", type=float, dest="train.learning_rate")
    train.add_argument("-f", "--load", dest="train.load", help="initial weights from a seglab checkpoint")
    train.add_argument("-s", "--scale", type=float, dest="data.scale", help="resize images by this factor")
    train.add_argument("-v", "--validation", type=float, dest="data.validation",
                       help="percent of whole images held out for validation (default 10)")
    train.add_argument("--val-dir", dest="data.val_dir", help="separate validation folder")
    train.add_argument("--amp", action="store_const", const=True, dest="train.amp",
                       help="mixed precision on GPUs (bf16 where supported, else fp16)")
    train.add_argument("--model", dest="model.name", help="unet (default) or deeplabv3")
    train.add_argument("--base-channels", type=int, dest="model.base_channels")
    train.add_argument("--depth", type=int, dest="model.depth")
    train.add_argument("--up", choices=["transpose", "bilinear"], dest="model.up")
    train.add_argument("--padding", choices=["same", "valid"], dest="model.padding")
    train.add_argument("--backbone", choices=["resnet18", "resnet34", "resnet50", "resnet101"],
                       dest="model.backbone")
    train.add_argument("--output-stride", type=int, choices=[8, 16], dest="model.output_stride")
    train.add_argument("--pretrained-backbone", action="store_const", const=True, dest="model.pretrained_backbone")
    train.add_argument("--in-channels", type=int, dest="data.in_channels")
    train.add_argument("--crop", type=_ints, dest="data.crop", help="random training crops H[,W]")
    train.add_argument("--normalization", choices=["per_image", "minmax", "none"], dest="data.normalization")
    train.add_argument("--optimizer", choices=["adam", "adamw", "rmsprop", "sgd"], dest="train.optimizer")
    train.add_argument("--weight-decay", type=float, dest="train.weight_decay")
    train.add_argument("--scheduler", choices=["cosine", "plateau", "poly", "none"], dest="train.scheduler")
    train.add_argument("--patience", type=int, dest="train.patience")
    train.add_argument("--monitor", choices=["val_dice", "val_miou", "val_iou", "val_loss", "val_pixel_error"],
                       dest="train.monitor")
    train.add_argument("--loss", choices=["auto", "ce", "ce+dice", "bce", "bce+dice", "dice"], dest="train.loss")
    train.add_argument("--augment", choices=["none", "light", "paper", "strong"], dest="train.augment")
    train.add_argument("--device", dest="train.device", help="cpu, cuda, cuda:N or auto (default)")
    train.add_argument("--seed", type=int, dest="train.seed")
    train.add_argument("--workers", type=int, dest="data.workers", help="DataLoader worker processes")
    train.add_argument("--max-time", type=float, dest="train.max_time", help="stop after this many seconds")
    train.add_argument("--eval-every", dest="train.eval_every", metavar="N[steps]",
                       help="validate every N epochs (5), or every N optimizer steps (500steps)")
    train.add_argument("--threshold", type=float, dest="train.threshold")
    train.add_argument("--precision", choices=["fp32", "bf16", "fp16"], dest="train.precision",
                       help="autocast precision (default: fp32, or with --amp bf16/fp16 on GPUs)")
    train.add_argument("--compile", action="store_const", const=True, dest="train.compile", help="torch.compile")
    train.add_argument("--channels-last", action="store_const", const=True, dest="train.channels_last")
    train.add_argument("--accumulate", type=int, dest="train.accumulate", help="gradient accumulation steps")
    train.add_argument("--sync-bn", action="store_const", const=True, dest="train.sync_bn",
                       help="SyncBatchNorm across DDP processes")
    train.add_argument("--save-every", type=int, dest="train.save_every",
                       help="also write last.pt every N optimizer steps (bounds the work a crash loses)")
    train.add_argument("--checkpoint-interval", type=float, dest="train.checkpoint_interval", metavar="SECONDS",
                       help="write best.pt/last.pt at most every SECONDS of wall time, and at the end "
                            "(default 60; 0 = at every metrics row)")
    train.add_argument("--early-stop", type=int, dest="train.early_stop",
                       help="stop after N evaluations without improvement of --monitor")
    train.add_argument("--border-weight", type=_floats, dest="train.border_weight", metavar="W0,SIGMA",
                       help="U-Net paper border weight map, e.g. 10,5 (binary masks; class 1 = cells)")
    train.add_argument("--class-weights", type=_class_weights, dest="train.class_weights",
                       help="comma-separated per-class loss weights, or 'auto' from class frequencies")
    train.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    train.add_argument("--mask-values", type=_ints, dest="data.mask_values")
    train.add_argument("--num-classes", type=int, dest="data.num_classes")
    train.add_argument("--class-names", type=_names, dest="data.class_names")
    train.add_argument("--ignore-index", type=int, dest="data.ignore_value")
    train.add_argument("--mask-colors", dest="data.mask_colors", help="colour table (JSON) for RGB colour masks")

    for action in train._actions:
        if "." in action.dest and action.metavar is None and action.nargs != 0:
            action.metavar = action.dest.split(".", 1)[1].upper()

    predict = commands.add_parser("predict", help="predict masks for images with a trained model")
    predict.add_argument("-m", "--model", required=True, help="checkpoint (.pt)")
    predict.add_argument("-i", "--input", nargs="+", required=True, help="image files or folders")
    predict.add_argument("-o", "--output", nargs="+", help="one output file per input, or an output folder")
    predict.add_argument("--viz", action="store_true", help="save an image | prediction figure per input")
    predict.add_argument("-n", "--no-save", action="store_true", help="do not write the masks")
    predict.add_argument("-t", "--mask-threshold", type=float, help="probability threshold (binary models)")
    predict.add_argument("-s", "--scale", type=float, help="resize factor (default: the training scale)")
    predict.add_argument("--overlay", action="store_true", help="write <stem>_overlay.png per image")
    predict.add_argument("--palette", action="store_true",
                         help="write class indices as palette PNGs (colours for viewers) instead of mask values")
    _add_inference_options(predict)
    predict.add_argument("--instances", action="store_true",
                         help="also write <stem>_instances.png: cells from a seeded watershed of the membrane map")

    evaluate = commands.add_parser("evaluate", help="score a model on labelled images")
    evaluate.add_argument("-m", "--model", required=True, help="checkpoint (.pt)")
    evaluate.add_argument("data", help="data folder with images/ and masks/ (or a val/ or test/ split)")
    evaluate.add_argument("--split", choices=["train", "val", "test"], help="which split to score")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("-t", "--mask-threshold", type=float)
    evaluate.add_argument("-s", "--scale", type=float)
    _add_inference_options(evaluate)
    evaluate.add_argument("--instances", action="store_true",
                          help="add the ISBI scores: adapted Rand error and variation of information of cells")

    export = commands.add_parser("export", help="export a checkpoint to ONNX or TorchScript (parity-checked)")
    export.add_argument("-m", "--model", required=True, help="checkpoint (.pt)")
    export.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    export.add_argument("-o", "--output", help="file to write (default: beside the checkpoint)")
    export.add_argument("--parity-images", nargs="+", metavar="IMAGE",
                        help="real images for the parity check (default: crops of the bundled ISBI slices)")
    export.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed probability difference")

    demo = commands.add_parser("demo", help="train, predict and evaluate on the bundled ISBI 2012 slices")
    demo.add_argument("--out", help="run folder (default runs/demo-<time>)")
    demo.add_argument("--device", default="auto")
    demo.add_argument("--time-budget", type=float, help="seconds of training (default: 420 on CPU, 60 on GPU)")
    demo.add_argument("--no-progress", action="store_true")
    return parser


def cmd_check(args) -> int:
    from seglab.data.preflight import format_preflight, run_preflight

    from seglab.config import DataConfig
    from seglab.engine.data_plan import mask_rules

    rules = mask_rules(DataConfig(mask_values=args.mask_values, num_classes=args.num_classes,
                                  class_names=args.class_names, ignore_value=args.ignore_value,
                                  mask_colors=args.mask_colors))
    if args.fix_to:
        from seglab.data.mask_repair import require_empty_folder

        require_empty_folder(args.fix_to)  # before a long check, not after it
    report = run_preflight(args.data, *rules)
    print(format_preflight(report))
    if args.preview and report.class_map is not None and not report.errors:
        from seglab.viz.preview import write_preview

        crop = (args.crop[0], args.crop[-1]) if args.crop else None
        print(f"preview: {write_preview(report, args.preview, args.augment, args.count, crop)}")
    if args.fix_to:
        from seglab.data.mask_repair import fix_and_recheck

        text, fixed_ok = fix_and_recheck(report, args.fix_to)
        print(text)
        return 0 if fixed_ok else 1
    return 0 if report.ok else 1


def cmd_report(args) -> int:
    from seglab.runtime.device import resolve_device
    from seglab.viz.report import write_report

    print(f"wrote {write_report(args.run_dir, str(resolve_device(args.device)))}")
    return 0


def cmd_data(args) -> int:
    from seglab.data.carvana import fetch_carvana

    return 0 if fetch_carvana(args.dest, args.train_zip, args.masks_zip) else 1


def cmd_train(args) -> int:
    from seglab.config import RunConfig, load_config, override, parse_eval_every
    from seglab.data.preflight import run_preflight
    from seglab.engine.trainer import fit, resume

    updates = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    if args.resume:
        if args.data or args.config:
            raise SeglabError("--resume takes the run's own config.yaml: give no DATA or --config with it")
        resume(args.resume, updates, progress=not args.no_progress)
        return 0
    config = load_config(args.config) if args.config else RunConfig()
    updates["data.root"] = args.data
    updates["out"] = args.out
    config = override(config, updates)
    if not config.data.root:
        raise SeglabError("no data folder: seglab train DATA_DIR (or data.root in --config)")
    parse_eval_every(config.train.eval_every)  # a bad interval fails now, not after the data checks
    from seglab.engine.data_plan import mask_rules

    report = run_preflight(config.data.root, *mask_rules(config.data))
    d = config.data
    if report.errors:
        raise SeglabError(report.errors[0] + (f" (and {len(report.errors) - 1} more problems: run "
                                              f"`seglab check {d.root}`)" if len(report.errors) > 1 else ""))
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    fit(config, progress=not args.no_progress)
    return 0


def cmd_predict(args) -> int:
    from seglab.inference.runner import collect_inputs, plan_outputs, run_predictions

    predictor = _predictor(args)
    files = collect_inputs(args.input)
    jobs = plan_outputs(files, args.output, save=not args.no_save)
    summary = run_predictions(predictor, jobs, args.scale, overlay=args.overlay, viz=args.viz,
                              instances=args.instances, membrane_class=args.membrane_class, palette=args.palette,
                              seed_threshold=args.seed_threshold,
                              stop_on_error=len(jobs) == 1)  # a single named input that fails is an error
    if summary.skipped:
        print(f"{len(summary.skipped)} of {len(jobs)} inputs skipped:", file=sys.stderr)
        for path, reason in summary.skipped:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args) -> int:
    from seglab.evaluation import evaluate_pairs, format_evaluation, labelled_pairs

    predictor = _predictor(args)
    result = evaluate_pairs(predictor, labelled_pairs(args.data, args.split), args.scale,
                            instances=args.instances, membrane_class=args.membrane_class,
                            seed_threshold=args.seed_threshold)
    result = {"model": args.model, "data": args.data, **result}
    print(json.dumps(result) if args.json else format_evaluation(result))
    return 0


def cmd_export(args) -> int:
    from seglab.data.io import read_image
    from seglab.inference.export import export_model

    images = [read_image(path) for path in args.parity_images] if args.parity_images else None
    report = export_model(args.model, args.format, args.output, images, tolerance=args.tolerance)
    print(f"wrote {report['path']} ({report['format']}); parity on {len(report['parity_shapes'])} inputs: "
          f"max |p - p_torch| = {report['max_abs_diff']:.2e} <= {report['tolerance']:.0e}")
    return 0


def cmd_demo(args) -> int:
    from seglab.demo import run_demo

    run_demo(args.out, args.device, args.time_budget, progress=not args.no_progress)
    return 0


COMMANDS = {"check": cmd_check, "report": cmd_report, "data": cmd_data, "train": cmd_train, "predict": cmd_predict,
            "evaluate": cmd_evaluate, "export": cmd_export, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SeglabError as error:
        print(f"seglab: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("seglab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
