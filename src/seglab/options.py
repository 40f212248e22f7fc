"""Declared options: a default, a help line and the values allowed, for config sections and model options.

One check serves every way a value arrives (a command-line flag, a YAML file, a keyword of
`seglab.train`), so each gets the same one-line error naming the option, its value and what is
allowed:

    invalid train.batch_size (--batch-size): 0; expected an integer >= 1
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import reprlib
import types
import typing
from typing import Any, Union

from seglab.errors import ConfigError


def option(default: Any, help: str, *, min: float | None = None, max: float | None = None,
           above: float | None = None, below: float | None = None, choices: tuple | None = None,
           length: tuple[int, ...] | None = None, flags: tuple[str, ...] | None = None,
           group: str | None = None, metavar: str | None = None, cli: bool = True,
           stored: bool = True) -> Any:
    """A dataclass field with its rules in `metadata`.

    min/max bound numbers inclusively, above/below exclusively (for lists: every item); `choices`
    lists the allowed values; `length` the allowed list lengths. `flags` are the command-line
    spellings (default `--name-with-dashes`), `group` the help section, `cli=False` keeps it off
    the command line. For model options, `stored=False` marks an argument that only matters when
    the model is built (e.g. downloading pretrained weights) and is not kept in checkpoints.
    """
    metadata = {"help": help, "min": min, "max": max, "above": above, "below": below, "choices": choices,
                "length": length, "flags": flags, "group": group, "metavar": metavar, "cli": cli, "stored": stored}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxtuple, _SHOWN.maxdict, _SHOWN.maxset = 2, 6, 6, 4, 4
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 80, 80, 40


def shown(value: Any) -> str:
    """repr(value) cut to a few dozen characters: an error message names a value, it never prints
    a whole one (a YAML value can hold millions)."""
    return _SHOWN.repr(value)


class _Mismatch(Exception):
    """The value does not have the declared type."""


def _is_union(annotation) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType)


def _coerce(value: Any, annotation) -> Any:
    """`value` as `annotation` (int, float, bool, str, dict, list[...], unions with None), converting
    only what is unambiguous: 2.0 -> 2, "1e-3" -> 0.001, a single number -> [number] for lists."""
    if annotation is Any:
        return value
    if _is_union(annotation):
        members = typing.get_args(annotation)
        if value is None:
            if type(None) in members:
                return None
            raise _Mismatch
        for member in sorted((m for m in members if m is not type(None)), key=lambda m: m is str):
            try:
                return _coerce(value, member)
            except _Mismatch:
                continue
        raise _Mismatch
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (str, dict)) and item is not str:
            raise _Mismatch
        return [_coerce(v, item) for v in items]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if annotation is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise _Mismatch
    if annotation is float:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if annotation is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch
    raise TypeError(f"unsupported option type {annotation!r}")


def _type_words(annotation) -> str:
    """'an integer', 'a number or none', 'a list of integers', ..."""
    if _is_union(annotation):
        members = typing.get_args(annotation)
        return " or ".join(_type_words(m) for m in members if m is not type(None))
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return "a list of " + {int: "integers", float: "numbers", str: "names"}.get(item, "values")
    return {int: "an integer", float: "a number", bool: "true or false", str: "a name", dict: "a mapping"}.get(
        annotation, "a value")


def _number(value: float) -> str:
    """10000000 as '10000000', 0.5 as '0.5' (no exponent for whole numbers)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _bounds(meta: dict) -> str:
    parts = []
    for key, sign in (("min", ">="), ("above", ">"), ("below", "<"), ("max", "<=")):
        if meta.get(key) is not None:
            parts.append(f"{sign} {_number(meta[key])}")
    return " and ".join(parts)


def _expected(annotation, meta: dict) -> str:
    if meta.get("choices"):
        return "one of: " + ", ".join(str(c) for c in meta["choices"])
    words = _type_words(annotation)
    if meta.get("length"):
        words += " (" + " or ".join(str(n) for n in meta["length"]) + " of them)"
    bounds = _bounds(meta)
    if not bounds:
        return words
    return f"{words}, each {bounds}" if words.startswith("a list") else f"{words} {bounds}"


def _in_range(number: float, meta: dict) -> bool:
    if isinstance(number, float) and not math.isfinite(number):
        return False
    return not ((meta.get("min") is not None and number < meta["min"])
                or (meta.get("max") is not None and number > meta["max"])
                or (meta.get("above") is not None and number <= meta["above"])
                or (meta.get("below") is not None and number >= meta["below"]))


def check_value(label: str, value: Any, annotation, meta: dict) -> Any:
    """The value converted to its declared type, or ConfigError naming `label`, the value and the rule."""
    def refuse() -> ConfigError:
        form = f"{meta['metavar']}, " if meta.get("metavar") and not meta.get("choices") else ""
        return ConfigError(f"invalid {label}: {shown(value)}; expected {form}{_expected(annotation, meta)}")

    try:
        converted = _coerce(value, annotation)
    except _Mismatch:
        raise refuse() from None
    if converted is None:
        return None
    choices = meta.get("choices")
    if choices and isinstance(converted, (str, int, float)) and converted not in choices:
        raise refuse()
    items = converted if isinstance(converted, list) else [converted]
    if isinstance(converted, list) and meta.get("length") and len(converted) not in meta["length"]:
        raise refuse()
    for item in items:
        if isinstance(item, (int, float)) and not isinstance(item, bool) and not _in_range(item, meta):
            raise refuse()
    return converted


def option_label(owner: str, field: dataclasses.Field) -> str:
    """'train.batch_size (--batch-size)': the YAML key and the flag of an option."""
    flags = field.metadata.get("flags") or (f"--{field.name.replace('_', '-')}",)
    long_flag = next((f for f in flags if f.startswith("--")), flags[0])
    return f"{owner}.{field.name} ({long_flag})" if field.metadata.get("cli", True) else f"{owner}.{field.name}"


def check_fields(instance: Any, owner: str) -> None:
    """Check and convert every field of a (frozen) dataclass instance in place; `owner` prefixes
    the names in messages ("train", "model unet")."""
    hints = typing.get_type_hints(type(instance))
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        checked = check_value(option_label(owner, field), value, hints[field.name], field.metadata)
        object.__setattr__(instance, field.name, checked)


# Names other tools (PyTorch scripts, Lightning, segmentation_models_pytorch, Ultralytics) give
# options seglab spells otherwise: a misspelt keyword that is one of these is pointed to seglab's name.
OTHER_SPELLINGS = {"lr": "learning_rate", "bs": "batch_size", "batch": "batch_size", "num_epochs": "epochs",
                   "max_epochs": "epochs", "n_epochs": "epochs", "classes": "num_classes",
                   "n_classes": "num_classes", "encoder_name": "encoder", "in_chans": "in_channels",
                   "n_channels": "in_channels", "time_limit": "time_budget", "max_time": "time_budget",
                   "imgsz": "crop",
                   "ignore_value": "ignore_index", "weights": "encoder_weights", "multi_label": "multilabel"}
LISTED_AT_MOST = 16  # known names an error lists in full; beyond, it points to the help instead


def declared_keywords(cls) -> list[tuple[str, Any, Any, str]]:
    """(name, annotation, default, help) of each field of the options dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name], f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default,
             f.metadata.get("help", "")) for f in dataclasses.fields(cls)]


def with_keywords(func, keywords: list[tuple[str, Any, Any, str]], heading: str = "Options") -> None:
    """Give `func(..., **kwargs)` the signature of its explicit parameters plus `keywords` ((name,
    annotation, default, help), keyword-only) and list them with their help in its docstring, so
    help(), inspect.signature, Jupyter's `?` and IDEs show them. Safe to call again (a registry that
    grows): the docstring is rebuilt from the function's own."""
    import inspect

    signature = inspect.signature(func, follow_wrapped=False) if not hasattr(func, "__seglab_doc__") else \
        func.__seglab_signature__
    explicit = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
    taken = {p.name for p in explicit}
    keywords = [keyword for keyword in keywords if keyword[0] not in taken]
    if not hasattr(func, "__seglab_doc__"):
        func.__seglab_doc__, func.__seglab_signature__ = func.__doc__ or "", signature
    func.__signature__ = signature.replace(parameters=explicit + [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        for name, annotation, default, _ in keywords])
    lines = "\n".join(f"        {name}: {text}" for name, _, _, text in keywords)
    func.__doc__ = func.__seglab_doc__.rstrip() + f"\n\n    {heading}:\n{lines}\n"


def refuse_unknown(given, known, where: str) -> None:
    """ConfigError for names in `given` that are not in `known`, suggesting the nearest one."""
    unknown = sorted(set(given) - set(known), key=str)
    if not unknown:
        return
    name = unknown[0]
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1) if isinstance(name, str) else []
    if isinstance(name, str) and OTHER_SPELLINGS.get(name.lower()) in known:
        close = [OTHER_SPELLINGS[name.lower()]]
    if close:
        hint = f"; did you mean {close[0]!r}?"
    elif len(known) <= LISTED_AT_MOST:
        hint = f"; known: {', '.join(sorted(known))}"
    else:
        hint = f"; {len(known)} are known (help() or the command's -h lists them)"
    more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
    raise ConfigError(f"unknown option {shown(name)} in {where}{more}{hint}")
