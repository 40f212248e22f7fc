"""seglab.prepare: a data folder and options -> the Recipe one run trains, worked out once.

The config is built in layers: the defaults, then the plan, then the YAML file, then keywords or
flags. The folder is checked as `seglab check` checks it, found once, split, its masks mapped to
classes, and the plan fills in what the user left unsaid. Each image and mask is decoded once (in
the check) and its pixels go with the recipe to the training (`data.decoded`).

    >>> recipe = seglab.prepare("data/isbi2012", time_budget=120)
    >>> recipe.save("recipe.yaml")          # read it, edit it; then seglab.fit("recipe.yaml")
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from seglab.api.keywords import with_run_options
from seglab.config import DataConfig, RunConfig, TrainConfig, flatten, load_config, override
from seglab.data.decoded import DecodedFiles
from seglab.data.in_memory import is_in_memory, materialise
from seglab.data.preflight import Preflight, run_preflight
from seglab.engine.plan import make_plan
from seglab.engine.recipe import Recipe
from seglab.engine.split import split_data
from seglab.errors import DataError, SeglabError
from seglab.models.registry import list_models, model_spec
from seglab.options import refuse_unknown
from seglab.yaml_files import read_yaml

_DATA_FIELDS = [f.name for f in dataclasses.fields(DataConfig) if f.name != "root"]
_TRAIN_FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def config_updates(overrides: dict[str, Any]) -> dict[str, Any]:
    """Keywords of seglab.train -> dotted config updates: data and train options by name
    (epochs=5 -> train.epochs), model= the model's name, any other name an option of a model
    (base_channels=32 -> model.base_channels), "section.name" as it is."""
    model_options = {f.name for name in list_models() for f in model_spec(name).option_fields()}
    known = set(_DATA_FIELDS) | set(_TRAIN_FIELDS) | model_options | {"model", "out"}
    updates = {}
    for key, value in overrides.items():
        value = os.fspath(value) if isinstance(value, os.PathLike) else value
        if "." in key:
            updates[key] = value
            continue
        refuse_unknown([key], known, "the keywords of seglab.train")
        if key == "out":
            updates["out"] = value
        elif key == "model":
            updates["model.name"] = value
        elif key in _DATA_FIELDS:
            updates[f"data.{key}"] = value
        elif key in _TRAIN_FIELDS:
            updates[f"train.{key}"] = value
        else:
            updates[f"model.{key}"] = value
    return updates


def base_config(config: RunConfig | str | os.PathLike | None) -> tuple[RunConfig, dict | None]:
    """(the config to start from, the dotted values it sets explicitly): the defaults and {}; a YAML
    file and the keys it sets; a RunConfig and None (a whole recipe, which no plan changes)."""
    if config is None:
        return RunConfig(), {}
    if isinstance(config, RunConfig):
        return config, None
    base = load_config(config)
    return base, flatten(read_yaml(config))


def resolve_config(data: str | os.PathLike | None = None, config: RunConfig | str | os.PathLike | None = None,
                   updates: dict[str, Any] | None = None) -> RunConfig:
    """The run's config without a plan: a RunConfig or YAML file (or the defaults), the data folder,
    then the dotted updates. Values are checked as each section is built."""
    return _with_data(base_config(config)[0], data, updates)


def _with_data(base: RunConfig, data: str | os.PathLike | None, updates: dict[str, Any] | None) -> RunConfig:
    updates = dict(updates or {})
    if data is not None:
        updates["data.root"] = os.fspath(data)
    resolved = override(base, updates)
    if not resolved.data.root:
        raise SeglabError("no data folder: seglab train DATA_DIR (or data.root in --config)")
    return resolved


def config_value(config: RunConfig, key: str) -> Any:
    """The value of a dotted key ("train.epochs", "model.base_channels", "out") in a config."""
    if key == "out":
        return config.out
    section, _, name = key.partition(".")
    if section == "model":
        return config.model.name if name == "name" else config.model.resolved().get(name)
    return getattr(getattr(config, section), name)


def check_training_data(config: RunConfig, log=print, files: DecodedFiles | None = None) -> Preflight:
    """The preflight `seglab check` runs, refusing folders that cannot train (DataError: the first
    problem, and how many more there are); warnings are logged. What it decodes stays in `files`."""
    report = run_preflight(config.data.root, **config.data.mask_rules().as_kwargs(), decoded=files,
                           label_map=config.data.label_map)
    if report.errors:
        more = len(report.errors) - 1
        raise DataError(report.errors[0] + (f" (and {more} more problems: run `seglab check {config.data.root}`)"
                                            if more else ""))
    for warning in report.warnings:
        log(f"warning: {warning}")
    return report


@with_run_options
def prepare(data: str | os.PathLike | Any = None, *, config: RunConfig | str | os.PathLike | None = None,
            val_data: Any = None, log=print, **overrides) -> Recipe:
    """The Recipe `seglab.train` would train, without training: the folder checked and split, the
    class map, the fingerprint and the plan's choices with their reasons. Arguments as
    `seglab.train`; `recipe.save(path)` writes it, `seglab.fit(recipe)` trains it.

    Raises SeglabError subclasses (one-line messages) for bad folders, options and files.
    """
    return prepare_updates(data, config, config_updates(overrides), log, val_data)


def prepare_updates(data, config: RunConfig | str | os.PathLike | None, updates: dict[str, Any],
                    log=print, val_data: Any = None) -> Recipe:
    """prepare() with dotted config updates ("train.epochs": 5), as the command's flags give them.
    A RunConfig given as `config` is a whole recipe: split, but not planned. Data in memory (and
    `val_data`) is written once into a cached folder (`data.in_memory`) and read from there."""
    if is_in_memory(data):
        data = materialise(data, val_data)
        log(f"data in memory: written to {data}")
    elif val_data is not None:
        raise SeglabError("val_data goes with data held in memory; for a folder, put the validation images in "
                          "its val/ subfolder or use val_files=")
    base, explicit = base_config(config)
    resolved = _with_data(base, data, updates)
    files = DecodedFiles()
    report = check_training_data(resolved, log, files)
    # The plan chooses no option that changes the split, so the split of `resolved` is the run's.
    split = split_data(resolved, files, report.layout)
    if explicit is None:
        return Recipe.from_split(resolved, split, None, files)
    # The values the user gave, as checked (crop=256 is [256]): what the plan must leave alone.
    given = {key: config_value(resolved, key) for key in {**explicit, **updates, "data.root": None}}
    plan = make_plan(given, split, files, log)
    for line in plan.lines():
        log(line)
    return Recipe.from_split(override(override(base, plan.updates()), given), split, plan.to_json(), files)
