"""Recipe: what one run trains, worked out once: the config, the split, the class map and the plan.

`seglab.prepare` (or `seglab plan`) makes one from a data folder; the trainer takes it and never
looks for the data again. `save` writes it as one YAML file a person can read and edit (the config
sections as config.yaml has them, then the classes, the split and the plan's choices with their
reasons); `load` reads it back with the checks configs get, one line naming the key. A run folder
keeps the recipe it trained (recipe.yaml).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from seglab.config import DataConfig, RunConfig, config_from_dict, config_to_dict, override
from seglab.data.classmap import ClassMap
from seglab.data.decoded import DecodedFiles
from seglab.data.discover import DataLayout, Pair
from seglab.data.writing import atomic_output
from seglab.engine.split import Split, split_data
from seglab.errors import ConfigError, DataError
from seglab.options import refuse_unknown, shown
from seglab.yaml_files import read_yaml

RECIPE_FILE = "recipe.yaml"
CONFIG_KEYS = ("seglab_version", "data", "model", "train", "out")
RECIPE_KEYS = CONFIG_KEYS + ("classes", "split", "plan")
# Options that decide which files train and how masks map to classes. A recipe lists the outcome,
# so beside --recipe they would change nothing: they are refused (plan again) instead of ignored.
SPLIT_OPTIONS = ("data.root", "data.val_dir", "data.validation", "data.val_files", "data.in_channels",
                 "data.mask_values", "data.num_classes", "data.class_names", "data.ignore_index", "data.mask_colors",
                 "data.multilabel", "data.folds")
HEADER = """\
# seglab recipe: what `seglab train --recipe THIS_FILE` trains, exactly (written by `seglab plan`).
# data/model/train: the config, as config.yaml holds it; flags beside --recipe override it.
# classes: mask value -> class (values in class order), image channels, pixels per class.
# split: the files that train and validate (--folds K: each pair with its fold), used as listed;
#   the data folder is not searched again. To split anew, run `seglab plan` again.
# plan: what the training plan chose, and why ("given": your own value, kept).
"""


@dataclass
class Recipe:
    """A run's config, split (train/val pairs), class map, input channels and plan, made once.

    `folded` (with --folds K): every pair with its fold 1..K, in the split's order; then
    `train_pairs`/`val_pairs` are those of fold `config.data.fold` (or 1). `files` holds what
    preparing the recipe decoded, for the training to use (not saved).
    """

    config: RunConfig
    train_pairs: list[Pair]
    val_pairs: list[Pair]
    class_map: ClassMap
    channels: int
    class_counts: list[int] | None = None  # pixels per class in the surveyed masks (--class-weights auto)
    folded: list[tuple[Pair, int]] | None = None
    plan: dict | None = None  # the plan's choices with reasons, the fingerprint, the device (plan.json)
    files: DecodedFiles = field(default_factory=DecodedFiles, repr=False, compare=False)

    @classmethod
    def from_data(cls, config: RunConfig, plan: dict | None = None, files: DecodedFiles | None = None,
                  layout: DataLayout | None = None) -> "Recipe":
        """The recipe of `config` as given (no plan): its data folder split, its masks surveyed."""
        files = files if files is not None else DecodedFiles()
        return cls.from_split(config, split_data(config, files, layout), plan, files)

    @classmethod
    def from_split(cls, config: RunConfig, split: Split, plan: dict | None = None,
                   files: DecodedFiles | None = None) -> "Recipe":
        return cls(config, split.train_pairs, split.val_pairs, split.class_map, split.channels, split.class_counts,
                   split.folded, plan, files if files is not None else DecodedFiles())

    def for_fold(self, fold: int) -> "Recipe":
        """The recipe of fold `fold` of a --folds recipe: that fold validates, the others train."""
        if not self.folded:
            raise ConfigError("--fold needs a recipe made with --folds K")
        folds = self.config.data.folds
        if not 1 <= fold <= folds:
            raise ConfigError(f"invalid data.fold (--fold): {fold}; expected 1..{folds} with --folds {folds}")
        return replace(self, config=override(self.config, {"data.fold": fold}),
                       train_pairs=[p for p, k in self.folded if k != fold],
                       val_pairs=[p for p, k in self.folded if k == fold])

    def with_updates(self, updates: dict[str, Any]) -> "Recipe":
        """The recipe with dotted config updates (flags or keywords beside it), as `override` applies
        them to a config; options that would change the listed split are refused in one line."""
        refused = [key for key in SPLIT_OPTIONS if updates.get(key) is not None]
        if refused:
            flag = _flag(refused[0])
            raise ConfigError(f"{flag} changes which files train or how masks map, which a recipe lists: plan again "
                              f"with it (seglab plan DATA {flag} ... -o recipe.yaml)")
        recipe = replace(self, config=override(self.config, {k: v for k, v in updates.items() if k != "data.fold"}))
        fold = updates.get("data.fold")
        return recipe.for_fold(fold) if fold is not None else recipe

    # ---- the file ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain values, as recipe.yaml holds them (absolute paths)."""
        values = config_to_dict(self.config)
        values["classes"] = {**self.class_map.to_dict(), "channels": self.channels, "pixels": self.class_counts}
        if self.folded:
            values["split"] = {"pairs": [[*pair.absolute(), fold] for pair, fold in self.folded]}
        else:
            values["split"] = {"train": [p.absolute() for p in self.train_pairs],
                               "val": [p.absolute() for p in self.val_pairs]}
        # json turns numpy numbers and tuples into the plain values YAML writes
        values["plan"] = json.loads(json.dumps(self.plan)) if self.plan else None
        return values

    def save(self, path: str | Path) -> Path:
        """Write the recipe as YAML (atomically); returns the path."""
        import yaml

        path = Path(path)
        values = self.to_dict()
        config = {key: values.pop(key) for key in CONFIG_KEYS}
        # the config as config.yaml writes it; then short lists ([image, mask] pairs) on one line each,
        # by libyaml's emitter where PyYAML has it (30,000 pairs: 0.4 s instead of 4 s)
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        text = (HEADER + yaml.dump(config, Dumper=dumper, sort_keys=False)
                + yaml.dump(values, Dumper=dumper, sort_keys=False, default_flow_style=None, width=120))
        with atomic_output(path) as tmp:
            tmp.write_text(text)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        """Read a recipe file, checked as a config file is (ConfigError/DataError: one line naming the
        key, or the listed file that does not exist)."""
        path = Path(path)
        values = read_yaml(path)
        try:
            refuse_unknown(values, RECIPE_KEYS, "the recipe")
            config = config_from_dict({key: values[key] for key in CONFIG_KEYS if key in values})
            class_map, channels, counts = _classes(values.get("classes"))
            split = values.get("split")
            if not isinstance(split, dict):
                raise ConfigError("the recipe's 'split' must be a mapping: train and val lists (or pairs)")
            refuse_unknown(split, ("train", "val") if "pairs" not in split else ("pairs",), "the recipe's split")
            plan = values.get("plan")
            if plan is not None and not isinstance(plan, dict):
                raise ConfigError(f"invalid plan: {shown(plan)}; expected the plan's mapping (or nothing)")
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
        recipe = cls(config, [], [], class_map, channels, counts, None, plan)
        if "pairs" in split:
            recipe.folded = _folded(split["pairs"], config, path)
            fold = config.data.fold or 1  # without --fold every fold trains, the first one first
            recipe.train_pairs = [p for p, k in recipe.folded if k != fold]
            recipe.val_pairs = [p for p, k in recipe.folded if k == fold]
            return recipe
        recipe.train_pairs = _pairs(split.get("train"), "split.train", path)
        recipe.val_pairs = _pairs(split.get("val") or [], "split.val", path)
        if not recipe.train_pairs:
            raise ConfigError(f"{path}: split.train lists no files: plan again (seglab plan DATA -o {path})")
        return recipe


def _flag(key: str) -> str:
    """The command's flag of a data option: "data.ignore_index" -> "--ignore-index"."""
    name = key.split(".", 1)[1]
    declared = next(f for f in fields(DataConfig) if f.name == name).metadata.get("flags") or ()
    return next((flag for flag in declared if flag.startswith("--")), "--" + name.replace("_", "-"))


def _classes(values) -> tuple[ClassMap, int, list[int] | None]:
    """(class map, channels, pixels per class) of the recipe's `classes` mapping."""
    if not isinstance(values, dict):
        raise ConfigError("the recipe's 'classes' must be a mapping: values, names, ignore_value, rgb, channels")
    refuse_unknown(values, ("values", "names", "ignore_value", "rgb", "colors", "multilabel", "channels", "pixels"),
                   "the recipe's classes")
    try:
        class_map = ClassMap.from_dict(values)
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"invalid classes: {error}; expected values and names, one per class") from None
    channels = values.get("channels")
    if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= 64:
        raise ConfigError(f"invalid classes.channels: {shown(channels)}; expected the images' channels, 1..64")
    pixels = values.get("pixels")
    if pixels is not None and (not isinstance(pixels, list) or len(pixels) != class_map.num_classes
                               or not all(isinstance(n, int) and n >= 0 for n in pixels)):
        raise ConfigError(f"invalid classes.pixels: {shown(pixels)}; expected a pixel count per class (or nothing)")
    return class_map, channels, pixels


def _pair(entry, key: str, path: Path, length: int = 2) -> Pair:
    """One [image, mask] entry of the split, whose files must exist."""
    if not isinstance(entry, list) or len(entry) != length or not all(isinstance(p, str) for p in entry[:2]):
        shape = "[image, mask, fold]" if length == 3 else "[image, mask]"
        raise ConfigError(f"{path}: invalid {key} entry {shown(entry)}; expected {shape}")
    pair = Pair(Path(entry[0]), Path(entry[1]))
    for file in (pair.image, pair.mask):
        if not file.is_file():
            raise DataError(f"{path}: {key} lists '{file}', which does not exist: fix the path, or plan again "
                            f"(seglab plan DATA -o {path})")
    return pair


def _pairs(entries, key: str, path: Path) -> list[Pair]:
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: invalid {key}: {shown(entries)}; expected a list of [image, mask]")
    return [_pair(entry, key, path) for entry in entries]


def _folded(entries, config: RunConfig, path: Path) -> list[tuple[Pair, int]]:
    """split.pairs of a --folds recipe: [image, mask, fold] entries, folds 1..data.folds, none empty."""
    folds = config.data.folds
    if not folds:
        raise ConfigError(f"{path}: split.pairs (pairs with their folds) needs data.folds")
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: invalid split.pairs: {shown(entries)}; expected [image, mask, fold] entries")
    folded = []
    for entry in entries:
        pair = _pair(entry, "split.pairs", path, length=3)
        if isinstance(entry[2], bool) or not isinstance(entry[2], int) or not 1 <= entry[2] <= folds:
            raise ConfigError(f"{path}: invalid fold {shown(entry[2])} in split.pairs; expected 1..{folds}")
        folded.append((pair, entry[2]))
    empty = sorted(set(range(1, folds + 1)) - {k for _, k in folded})
    if empty:
        raise ConfigError(f"{path}: fold {empty[0]} of data.folds {folds} has no pairs in split.pairs")
    return folded
