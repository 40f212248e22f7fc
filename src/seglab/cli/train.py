"""`seglab train`: flags grouped as the config sections declare them, over seglab.train / seglab.resume."""
from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from pathlib import Path

from seglab.cli.parsing import add_dataclass_options, add_max_pixels, add_option
from seglab.config import DataConfig, TrainConfig
from seglab.errors import SeglabError
from seglab.models.registry import list_models, model_spec

GROUPS = (("optimisation", "optimisation"), ("run control", "run control"), ("folds", "cross-validation"),
          ("speed", "speed: precision and compilation"),
          ("distributed", "distributed (torchrun) and gradient accumulation"))


def add_model_options(group) -> None:
    """--model and every registered model's options; an option several models share gets one flag."""
    summaries = "; ".join(f"{name}: {model_spec(name).summary}" for name in list_models())
    group.add_argument("--model", dest="model.name", choices=list_models(), default=None,
                       help=f"the network (default: planned; unet): {summaries}".replace("%", "%%"))
    owners: dict[str, list[tuple[str, dataclasses.Field]]] = {}
    annotations: dict[str, object] = {}
    for name in list_models():
        spec = model_spec(name)
        hints = typing.get_type_hints(spec.options)
        for field in spec.option_fields():
            owners.setdefault(field.name, []).append((name, field))
            annotations.setdefault(field.name, hints[field.name])
    for option_name, owned in owners.items():
        field = _shared_field([f for _, f in owned], [name for name, _ in owned])
        add_option(group, field, annotations[option_name], f"model.{option_name}",
                   note=f"[{', '.join(name for name, _ in owned)}] ")


def _shared_field(fields: list[dataclasses.Field], models: list[str]) -> dataclasses.Field:
    """One declaration for a flag several models share: the first model's, taking every model's
    allowed values (--output-stride 8/16 and 16/32: the chosen model's own check refuses the rest
    in one line), and naming each model's default where they differ."""
    first = fields[0]
    allowed = sorted({c for f in fields for c in (f.metadata.get("choices") or ())})
    defaults = [_default(f) for f in fields]
    help_text = first.metadata.get("help", "")
    if len({repr(d) for d in defaults}) > 1 and "default" not in help_text:
        help_text += " (default: " + ", ".join(f"{m} {d}" for m, d in zip(models, defaults)) + ")"
    if help_text == first.metadata.get("help") and (not allowed or tuple(allowed) == first.metadata.get("choices")):
        return first
    shared = dataclasses.field(default=_default(first), metadata={**first.metadata, "help": help_text,
                                                                    "choices": tuple(allowed) or None})
    shared.name = first.name
    return shared


def _default(field: dataclasses.Field):
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def add_run_options(parser) -> None:
    """What `seglab train` and `seglab plan` both take: DATA, --config, --out and every option."""
    parser.add_argument("data", nargs="?", help="data folder: images/ + masks/, or train/ val/ test/ subfolders "
                        "(or data.root in --config)")
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file with data/model/train sections")
    parser.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<data>-<model>-<time>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    add_max_pixels(parser)
    add_dataclass_options(parser.add_argument_group("data"), DataConfig, "data", group="data", skip=("root",))
    add_model_options(parser.add_argument_group("model"))
    for group, title in GROUPS:
        target = parser.add_argument_group(title)
        add_dataclass_options(target, TrainConfig, "train", group=group)
        if group in ("run control", "folds"):
            add_dataclass_options(target, DataConfig, "data", group=group)


def register(commands) -> None:
    train = commands.add_parser("train", help="train a model on a data folder (or a recipe from seglab plan)",
                                description="Train a model. Flags override --config or --recipe; every option has "
                                            "the same name in YAML (data/model/train sections) and in seglab.train().")
    train.add_argument("--recipe", metavar="FILE.yaml", help="train the recipe `seglab plan` wrote, exactly: its "
                       "config, split and class map (the data folder is not searched again)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    add_run_options(train)
    train.set_defaults(run=run)
    plan = commands.add_parser("plan", help="check and split a data folder, plan the run, and write its recipe",
                               description="Plan a run without training it: the folder checked and split, the class "
                                           "map, the fingerprint and the plan's choices with their reasons, written "
                                           "to one YAML file to read, edit and train (seglab train --recipe FILE). "
                                           "Flags as seglab train's; they are kept in the recipe.")
    plan.add_argument("-o", "--output", metavar="FILE.yaml", required=True, help="the recipe file to write")
    add_run_options(plan)
    plan.set_defaults(run=run_plan)


def _updates(args: argparse.Namespace) -> dict:
    """The flags given, as dotted config updates (and out)."""
    updates = {key: value for key, value in vars(args).items() if "." in key and value is not None}
    if args.out:
        updates["out"] = args.out
    return updates


def run(args: argparse.Namespace) -> int:
    import seglab

    progress = not args.no_progress
    if args.resume:
        if args.data or args.config or args.out or args.recipe:
            raise SeglabError("--resume takes the run's own folder and recipe: give no DATA, --config, --recipe or "
                              "--out with it")
        result = seglab.resume(args.resume, progress=progress, **_updates(args))
    elif args.recipe:
        if args.data or args.config:
            raise SeglabError("--recipe holds the data's files and the config: give no DATA or --config with it "
                              "(other flags override it)")
        result = seglab.fit(args.recipe, progress=progress, **_updates(args))
    else:
        result = seglab.train(args.data, config=args.config, progress=progress, **_updates(args))
    if isinstance(result, seglab.Run) and os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 says it
        print(result.describe())
    return 0


def run_plan(args: argparse.Namespace) -> int:
    """`seglab plan`: prepare, save the recipe, and say what it holds."""
    import seglab

    if Path(args.output).is_dir():
        raise SeglabError(f"-o '{args.output}' is a folder: give the recipe's file name (e.g. "
                          f"{args.output}/recipe.yaml)")
    recipe = seglab.prepare(args.data, config=args.config, **_updates(args))
    path = recipe.save(args.output)
    folds = f" ({recipe.config.data.folds} folds)" if recipe.folded else ""
    print(f"split{folds}: {len(recipe.train_pairs)} train / {len(recipe.val_pairs)} val images; classes "
          f"{recipe.class_map.describe()}; {recipe.channels} image channel{'s' if recipe.channels > 1 else ''}")
    print(f"recipe: {path} (read or edit it, then: seglab train --recipe {path})")
    return 0
