"""Loss registry: each loss term registers a builder and the dataclass of its options under a name.

A loss is a sum of registered terms joined by "+" ("ce+dice", "focal+lovasz"): each term is built
with the options it declares (`seglab.options.option`), taken from one mapping shared by the sum
(`train.loss_options`, `--loss-options gamma=2,alpha=0.3`), so an option several terms declare
(focal's and focal-tversky's gamma) is given once. An option no term of the sum declares is refused
in one line, as a model's unknown option is. Registering costs no torch: builders are named
"package.module:Class" and imported when a loss is built (`seglab.losses.builtin`).
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Callable

from seglab.errors import ConfigError
from seglab.options import check_fields, refuse_unknown, shown

# Terms registered under two names: the cross-entropy is sigmoid for one output channel and softmax
# for more, whichever name the user wrote (seglab 0.2 accepted both for both kinds of masks).
ALIASES = {"bce": "ce"}


@dataclass(frozen=True)
class NoLossOptions:
    """A loss term without options."""


@dataclass(frozen=True)
class LossSpec:
    """A registered loss term: how to build it and which options it takes."""

    name: str
    builder: Callable | str  # a callable, or "package.module:Class" imported on first build
    options: type = NoLossOptions
    summary: str = ""

    def build(self, **kwargs):
        builder = self.builder
        if isinstance(builder, str):
            module_name, attribute = builder.split(":")
            builder = getattr(importlib.import_module(module_name), attribute)
        return builder(**kwargs)

    def option_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.options)]


_SPECS: dict[str, LossSpec] = {}
_BUILTIN = {"loaded": False}


def register_loss(spec: LossSpec, replace: bool = False) -> None:
    """Add a loss term (its options a frozen dataclass of `options.option` fields)."""
    if not dataclasses.is_dataclass(spec.options):
        raise TypeError(f"options of loss {spec.name!r} must be a dataclass, not {spec.options!r}")
    if "+" in spec.name or spec.name in ("auto", *ALIASES):
        raise ValueError(f"{spec.name!r} cannot name a loss term")
    if spec.name in _SPECS and not replace:
        raise ValueError(f"loss {spec.name!r} is registered twice")
    _SPECS[spec.name] = spec


def unregister_loss(name: str) -> None:
    """Remove a registration (plugins and tests that registered a loss for a while)."""
    _SPECS.pop(name, None)


def list_losses() -> list[str]:
    """The registered terms' names (aliases not included), sorted."""
    _builtin()
    return sorted(_SPECS)


def loss_spec(name: str) -> LossSpec:
    _builtin()
    try:
        return _SPECS[ALIASES.get(name, name)]
    except KeyError:
        raise ConfigError(f"invalid train.loss (--loss): unknown loss term {shown(name)}; choose terms from: "
                          f"{', '.join(list_losses())}, joined by + (e.g. ce+lovasz)") from None


def loss_terms(name: str) -> list[str]:
    """"focal+lovasz" -> ["focal", "lovasz"]; "bce+dice" -> ["ce", "dice"]. ConfigError for an empty
    term, an unknown one or a repeated one."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"invalid train.loss (--loss): {shown(name)}; expected auto or loss terms joined by +")
    terms = [ALIASES.get(t.strip(), t.strip()) for t in name.split("+")]
    for term in terms:
        if not term:
            raise ConfigError(f"invalid train.loss (--loss): {shown(name)} has an empty term; join names by one + "
                              "(e.g. ce+lovasz)")
        loss_spec(term)
    if len(set(terms)) != len(terms):
        raise ConfigError(f"invalid train.loss (--loss): {shown(name)} names a term twice")
    return terms


def resolve_loss_options(name: str, given: dict) -> dict[str, dict]:
    """{term: its options, checked and with defaults} for the loss `name` ("auto" is ce+dice's terms),
    taking each term's options from the shared mapping `given`. ConfigError names an option no term
    declares (with the nearest name) and an invalid value."""
    if not isinstance(given, dict):
        raise ConfigError(f"invalid train.loss_options (--loss-options): {shown(given)}; expected NAME=VALUE pairs "
                          "such as gamma=2,alpha=0.3")
    terms = loss_terms("ce+dice" if name == "auto" else name)
    known = [option for term in terms for option in loss_spec(term).option_names()]
    if given and not known:
        raise ConfigError(f"invalid train.loss_options (--loss-options): loss {shown(name)} takes no options; "
                          "give none, or a loss whose terms take them (focal, tversky, focal-tversky)")
    refuse_unknown(given, known, f"train.loss_options of loss {shown(name)} (its terms take: "
                                 f"{', '.join(sorted(set(known)))})")
    resolved = {}
    for term in terms:
        spec = loss_spec(term)
        instance = spec.options(**{k: v for k, v in given.items() if k in spec.option_names()})
        check_fields(instance, "train.loss_options")
        resolved[term] = dataclasses.asdict(instance)
    return resolved


def _builtin() -> None:
    """The built-in terms register on first use (their module imports this one)."""
    if not _BUILTIN["loaded"]:
        _BUILTIN["loaded"] = True
        importlib.import_module("seglab.losses.builtin")


def checked_loss_options(name: str, given: dict) -> dict:
    """The given options converted to their declared types ({"gamma": "2"} -> {"gamma": 2.0}),
    as config.yaml keeps them; ConfigError as `resolve_loss_options`."""
    resolved = resolve_loss_options(name, given)
    return {key: next(options[key] for options in resolved.values() if key in options) for key in given}
