"""`seglab check`, `export`, `report`, `data` and `demo`: each a few lines over the library."""
from __future__ import annotations

import argparse

from seglab.cli.parsing import add_dataclass_options, add_max_pixels, ints, positive_int
from seglab.config import DataConfig
from seglab.data.augment_config import AUGMENT_PRESETS

MASK_OPTIONS = ("mask_values", "num_classes", "class_names", "ignore_index", "mask_colors", "label_map")
CHECK_OPTIONS = MASK_OPTIONS + ("multilabel",)  # `data convert` writes one class per pixel: no labels


def register(commands) -> None:
    check = commands.add_parser("check", help="describe a data folder and find problems before training")
    check.add_argument("data", help="folder with images/ + masks/, or train/ val/ test/ subfolders")
    add_dataclass_options(check.add_argument_group("masks"), DataConfig, "",
                          skip=tuple(f for f in DataConfig.__dataclass_fields__ if f not in CHECK_OPTIONS))
    check.add_argument("--preview", metavar="FILE.png", help="write a grid of augmented image/mask pairs")
    check.add_argument("--augment", choices=list(AUGMENT_PRESETS), default="paper",
                       help="augmentation preset shown by --preview (default: paper)")
    check.add_argument("--crop", type=ints, metavar="H[,W]", help="crop size shown by --preview (default: none)")
    check.add_argument("-n", "--count", type=positive_int, default=8, help="pairs in the preview (default: 8)")
    check.add_argument("--fix-to", metavar="DIR", help="write a clean copy into DIR (new or empty): class-index PNG "
                       "masks, blurred edges snapped to the nearest class, paired names; originals untouched")
    add_max_pixels(check)
    check.set_defaults(run=run_check)

    export = commands.add_parser("export", help="export a checkpoint to ONNX or TorchScript (parity-checked)")
    export.add_argument("-m", "--model", required=True, help="checkpoint (.pt)")
    export.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="(default: onnx)")
    export.add_argument("-o", "--output", help="file to write (default: beside the checkpoint)")
    export.add_argument("--parity-images", nargs="+", metavar="IMAGE",
                        help="real images for the parity check (default: crops of the bundled ISBI slices)")
    export.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest allowed probability difference (default: 1e-4)")
    export.add_argument("--quantize", choices=["int8"], help="int8: static quantization for ONNX Runtime on the "
                        "CPU, calibrated on the run's training images, refused if its masks lose more than "
                        "--max-dice-drop mean Dice on the run's validation images (default name: <model>.int8.onnx)")
    export.add_argument("--calibration-images", nargs="+", metavar="IMAGE",
                        help="--quantize: images to calibrate on (default: 16 of the run's training images)")
    export.add_argument("--max-dice-drop", type=float, default=0.01,
                        help="--quantize: largest loss of mean Dice against the float model (default: 0.01)")
    export.set_defaults(run=run_export)

    report = commands.add_parser("report", help="write RUN_DIR/report.html: curves, scores, best and worst "
                                 "predictions (one self-contained file)")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `seglab train --out`")
    report.add_argument("--device", default="cpu", help="device for the validation predictions (default: cpu)")
    report.set_defaults(run=run_report)

    _register_data(commands)

    demo = commands.add_parser("demo", help="train, predict and evaluate on the bundled ISBI 2012 slices")
    demo.add_argument("--out", help="run folder (default: runs/demo-<time>)")
    demo.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    demo.add_argument("--time-budget", type=float, help="seconds of training (default: 420 on CPU, 60 on GPU)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(run=run_demo)


def _register_data(commands) -> None:
    """`seglab data carvana` (download) and `seglab data convert SRC DST`."""
    data = commands.add_parser("data", help="download a public data set, or convert labels into class-index masks")
    tasks = data.add_subparsers(dest="task", required=True, metavar="{carvana,convert}")
    carvana = tasks.add_parser("carvana", help="Kaggle's Carvana Image Masking Challenge, downloaded and checked")
    carvana.add_argument("--dest", required=True, metavar="DIR", help="folder for images/ and masks/ (new or empty)")
    carvana.add_argument("--train-zip", metavar="ZIP", help="an already downloaded train_hq.zip (skips the download)")
    carvana.add_argument("--masks-zip", metavar="ZIP", help="an already downloaded train_masks.zip")
    carvana.set_defaults(run=run_data)
    convert = tasks.add_parser("convert", help="write any layout seglab reads (COCO, YOLO, palette or colour "
                               "masks, --label-map) as images/ + class-index PNG masks/ + classes.json")
    convert.add_argument("source", metavar="SRC", help="the data folder to read")
    convert.add_argument("dest", metavar="DST", help="the folder to write (new or empty)")
    add_dataclass_options(convert.add_argument_group("masks"), DataConfig, "",
                          skip=tuple(f for f in DataConfig.__dataclass_fields__ if f not in MASK_OPTIONS))
    convert.set_defaults(run=run_convert)


def run_check(args: argparse.Namespace) -> int:
    import seglab

    if args.fix_to:
        from seglab.data.mask_repair import require_empty_folder

        require_empty_folder(args.fix_to)  # before a long check, not after it
    report = seglab.check(args.data, **{name: getattr(args, name) for name in CHECK_OPTIONS})
    print(report)
    if args.preview and report.class_map is not None and not report.errors:
        from seglab.viz.preview import write_preview

        crop = DataConfig(crop=args.crop).crop  # checked as training checks --crop
        crop = (crop[0], crop[-1]) if crop else None
        print(f"preview: {write_preview(report, args.preview, args.augment, args.count, crop)}")
    if args.fix_to:
        from seglab.data.mask_repair import fix_and_recheck

        text, fixed_ok = fix_and_recheck(report, args.fix_to)
        print(text)
        return 0 if fixed_ok else 1
    return 0 if report.ok else 1


def run_export(args: argparse.Namespace) -> int:
    import seglab
    from seglab.inference.fastest import REQUIRED_SPEEDUP

    report = seglab.export(args.model, args.format, args.output, parity_images=args.parity_images,
                           tolerance=args.tolerance, quantize=args.quantize,
                           calibration_images=args.calibration_images, max_dice_drop=args.max_dice_drop)
    print(f"wrote {report['path']} ({report['format']}{', int8' if args.quantize else ''}); parity on "
          f"{len(report['parity_shapes'])} inputs: max |p - p_torch| = {report['max_abs_diff']:.2e} <= "
          f"{report['tolerance']:.0e}")
    if "quantization" in report:
        parity = report["quantization"]["parity"]
        print(f"int8: mean Dice {parity['dice_int8']:.4f} vs {parity['dice_float']:.4f} float on {parity['images']} "
              f"(drop {parity['dice_drop']:.4f} <= {parity['max_dice_drop']:g}); masks agree on "
              f"{100 * parity['mask_agreement']:.2f}% of the pixels")
    speed = report["metadata"].get("speed")
    if speed:
        seconds = speed["seconds"]
        print(f"speed on this CPU ({speed['image'][1]}x{speed['image'][0]} image): {speed['runtime']} "
              f"{seconds[speed['runtime']]:.3f} s, {speed['pytorch_path']} {seconds['pytorch']:.3f} s: "
              + ("`seglab predict -m` the checkpoint runs this file"
                 if seconds[speed["runtime"]] * REQUIRED_SPEEDUP <= seconds["pytorch"]
                 else f"the checkpoint stays in PyTorch (an export must be {REQUIRED_SPEEDUP}x faster)"))
    return 0


def run_report(args: argparse.Namespace) -> int:
    import seglab

    print(f"wrote {seglab.report(args.run_dir, args.device)}")
    return 0


def run_data(args: argparse.Namespace) -> int:
    from seglab.data.carvana import fetch_carvana

    return 0 if fetch_carvana(args.dest, args.train_zip, args.masks_zip) else 1


def run_convert(args: argparse.Namespace) -> int:
    from seglab.data.classmap import MaskRules
    from seglab.data.convert import convert_folder

    rules = MaskRules.from_options(args.mask_values, args.num_classes, args.class_names, args.ignore_index,
                                   args.mask_colors)
    text, ok = convert_folder(args.source, args.dest, args.label_map, **rules.as_kwargs())
    print(text)
    return 0 if ok else 1


def run_demo(args: argparse.Namespace) -> int:
    from seglab.demo import run_demo as demo

    demo(args.out, args.device, args.time_budget, progress=not args.no_progress)
    return 0
