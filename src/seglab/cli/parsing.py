"""argparse for seglab: no abbreviations, the nearest flag for a typo, and flags made from declared options.

Options declared with `seglab.options.option` (config sections, model options, inference options)
become flags here with their help, default and choices, so `seglab train -h` shows what a YAML
file or `seglab.train` accepts, and all three are checked by the same rules.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
import typing
from typing import Any

from seglab.config import PLANNED
from seglab.data.limits import DEFAULT_MAX_PIXELS
from seglab.errors import SeglabError
from seglab.options import _is_union


def ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, not {text!r}") from None


def floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, not {text!r}") from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, not {value}")
    return value


def names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def key_values(text: str) -> dict[str, str]:
    """'gamma=2,alpha=0.3' -> {"gamma": "2", "alpha": "0.3"} (the option's declaration converts the values)."""
    values = {}
    for item in (v.strip() for v in text.split(",") if v.strip()):
        name, equals, value = item.partition("=")
        if not equals or not name.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE pairs separated by commas, not {text!r}")
        values[name.strip()] = value.strip()
    return values


def weights_or_keyword(text: str):
    return text if text in ("auto", "none") else floats(text)


class SeglabParser(argparse.ArgumentParser):
    """An ArgumentParser that refuses abbreviated flags (`--epoch 2` is not `--epochs 2`) and
    suggests the nearest flag for one it does not know."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.subcommands: dict[str, SeglabParser] = {}

    def error(self, message: str):
        """One line, not the usage block: which flag was wrong and where the options are listed."""
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} -h` lists the options)\n")

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self.subcommands.get(getattr(parsed, "command", None), self)
            parser.error(unknown_flags_message(parser, extras))
        return parsed


def unknown_flags_message(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """'unrecognized arguments: --epoch 2; did you mean --epochs?'"""
    message = f"unrecognized arguments: {' '.join(extras)}"
    known = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
    for token in extras:
        if token.startswith("--"):
            close = difflib.get_close_matches(token.split("=")[0], known, n=1, cutoff=0.6)
            if close:
                return f"{message}; did you mean {close[0]}?"
    return message


def _value_type(annotation):
    """The annotation without None: `int | None` -> int."""
    if _is_union(annotation):
        members = [m for m in typing.get_args(annotation) if m is not type(None)]
        return members[0] if len(members) == 1 else annotation
    return annotation


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def add_option(target, field: dataclasses.Field, annotation, dest: str, note: str = "",
               use_default: bool = False) -> None:
    """A flag for a declared option. With `use_default` argparse fills in the declared default;
    otherwise the flag defaults to None, so an option left out keeps the config file's value."""
    meta = field.metadata
    flags = meta.get("flags") or (f"--{field.name.replace('_', '-')}",)
    default = _default_of(field)
    kind = _value_type(annotation)
    help_text = (note + meta.get("help", "")).replace("%", "%%")  # argparse formats help with %
    if dest in PLANNED:  # the plan's value, not the declared default, is what a run without the flag gets
        help_text += " (default: planned from the data and the machine)"
    elif "default" not in help_text:  # an option whose help explains its default says it once
        help_text += f" (default: {_show(default)})"
    kwargs: dict[str, Any] = {"dest": dest, "default": default if use_default else None, "help": help_text}
    if kind is bool or annotation == (bool | None):
        kwargs["action"] = argparse.BooleanOptionalAction
    elif meta.get("choices"):
        kwargs["choices"] = list(meta["choices"])
        kwargs["type"] = type(meta["choices"][0])
    else:
        converters = {int: int, float: float, str: str, list[int]: ints, list[float]: floats, list[str]: names,
                      dict: key_values}
        kwargs["type"] = converters.get(kind, weights_or_keyword if "float" in str(kind) else str)
        kwargs["metavar"] = meta.get("metavar") or field.name.upper()
    target.add_argument(*flags, **kwargs)


def add_dataclass_options(target, cls, prefix: str, *, group: str | None = None, skip: tuple[str, ...] = (),
                          use_default: bool = False) -> None:
    """Flags for the fields of `cls` (those of `group`, when given); dest is "prefix.name", or just
    the name when prefix is empty."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip or not field.metadata.get("cli", True):
            continue
        if group is not None and (field.metadata.get("group") or "data") != group:
            continue
        add_option(target, field, hints[field.name], f"{prefix}.{field.name}" if prefix else field.name,
                   use_default=use_default)


def add_max_pixels(parser) -> None:
    parser.add_argument("--max-pixels", type=int, metavar="N",
                        help=f"decode images of at most N pixels; larger headers are refused as decompression "
                             f"bombs (default: {DEFAULT_MAX_PIXELS}, or $SEGLAB_MAX_PIXELS)")


def apply_max_pixels(args) -> None:
    """--max-pixels N: the limit of every image read in this process (data.io reads the variable)."""
    value = getattr(args, "max_pixels", None)
    if value is not None:
        if value < 1:
            raise SeglabError(f"invalid --max-pixels: {value}; expected an integer >= 1")
        os.environ["SEGLAB_MAX_PIXELS"] = str(value)


def print_error(message: str) -> None:
    print(f"seglab: error: {message}", file=sys.stderr)
