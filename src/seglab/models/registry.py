"""Model registry: each model registers a builder and the dataclass of its options under a name.

    @register_model("my-net", options=MyNetOptions)
    class MyNet(nn.Module): ...

or, costing no import of the network's module (and of torch) until a model is built, as the
built-in models register (`seglab.models.builtin`):

    register(ModelSpec("unet", "seglab.models.unet:UNet", UNetOptions, "the U-Net of ..."))

`build_model(name, in_channels=1, num_classes=1, **options)` checks the options against that
dataclass (types, ranges, unknown names) and builds the model; the same keyword arguments are
stored in checkpoints, so a checkpoint rebuilds its model by name. The command line, YAML
configs and `seglab.train` learn a model's options, defaults and help from here, so adding a
model is one new file and one registration.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from seglab.errors import ConfigError, SeglabError
from seglab.options import check_fields, refuse_unknown, shown, with_keywords

if TYPE_CHECKING:  # the registry itself needs no torch: `seglab -h` lists the models without importing it
    import torch.nn as nn

# Arguments every builder takes, filled from the data (not options a user sets).
DATA_ARGUMENTS = ("in_channels", "num_classes")


@dataclass(frozen=True)
class NoOptions:
    """A model without options beyond in_channels and num_classes."""


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to build it and which options it takes."""

    name: str
    builder: Callable[..., nn.Module] | str  # a callable, or "package.module:Builder" imported on first build
    options: type                           # frozen dataclass of option fields (seglab.options.option)
    summary: str = ""

    def build(self, **kwargs) -> nn.Module:
        builder = self.builder
        if isinstance(builder, str):
            module_name, attribute = builder.split(":")
            builder = getattr(importlib.import_module(module_name), attribute)
        return builder(**kwargs)

    def option_fields(self) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(self.options)

    def stored(self, options: dict) -> dict:
        """The options a checkpoint keeps (all but those marked stored=False)."""
        keep = {f.name for f in self.option_fields() if f.metadata.get("stored", True)}
        return {k: v for k, v in options.items() if k in keep}


_SPECS: dict[str, ModelSpec] = {}


def register_model(name: str, options: type = NoOptions, *, summary: str = "", replace: bool = False):
    """Decorator registering a class or function that returns an nn.Module under `name`.

    `options` is a frozen dataclass whose fields are the builder's keyword arguments beyond
    in_channels and num_classes, with defaults and help (`seglab.options.option`).
    """
    def decorator(builder):
        register(ModelSpec(name, builder, options, summary or _first_line(builder.__doc__)), replace=replace)
        return builder

    return decorator


def register(spec: ModelSpec, replace: bool = False) -> None:
    """Add a ModelSpec (a lazy one names its builder "package.module:Builder")."""
    if not dataclasses.is_dataclass(spec.options):
        raise TypeError(f"options of model {spec.name!r} must be a dataclass, not {spec.options!r}")
    if spec.name in _SPECS and not replace:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _SPECS[spec.name] = spec
    _describe_build_model()


def unregister_model(name: str) -> None:
    """Remove a registration (plugins and tests that registered a model for a while)."""
    _SPECS.pop(name, None)
    _describe_build_model()


def _describe_build_model() -> None:
    """Keep build_model's signature and help listing the registered models' options (their declared
    types as written; no annotation is evaluated, so registering stays cheap)."""
    owners: dict[str, list[str]] = {}
    first: dict[str, dataclasses.Field] = {}
    for spec in _SPECS.values():
        for field in spec.option_fields():
            owners.setdefault(field.name, []).append(spec.name)
            first.setdefault(field.name, field)
    keywords = [("in_channels", "int | None", None, "input channels (1: gray, 3: RGB; default: the model's)"),
                ("num_classes", "int | None", None, "classes the masks hold (2: binary; default: the model's)")]
    keywords += [(name, f"{first[name].type} | None", None,
                  f"[{', '.join(models)}] {first[name].metadata.get('help', '')}") for name, models in owners.items()]
    with_keywords(build_model, keywords, "Arguments (a model's option left out takes its default)")


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""


def list_models() -> list[str]:
    """Names accepted by `build_model`, sorted."""
    return sorted(_SPECS)


def model_spec(name: str) -> ModelSpec:
    try:
        return _SPECS[name]
    except KeyError:
        raise ConfigError(f"unknown model {shown(name)}; choose one of: {', '.join(list_models())}") from None


def resolve_model_options(name: str, given: dict, defaults: bool = True) -> dict:
    """The model's options checked and converted: the given ones, plus every default unless
    `defaults` is False. Raises ConfigError naming an unknown or invalid option."""
    spec = model_spec(name)
    known = [f.name for f in spec.option_fields()]
    refuse_unknown(given, known, f"the options of model {shown(name)}")
    instance = spec.options(**given)
    check_fields(instance, "model")  # errors name model.OPTION, as the flags and YAML keys are named
    values = dataclasses.asdict(instance)
    return values if defaults else {k: values[k] for k in given}


# segmentation_models_pytorch's keyword names, taken for the smp-* architectures (smp.Unet(encoder_name=...,
# encoder_weights=..., in_channels=..., classes=...)).
SMP_KEYWORDS = {"encoder_name": "encoder", "classes": "num_classes"}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model from plain keyword arguments: in_channels, num_classes and its
    options (the same arguments a checkpoint stores). The smp-* models also take SMP's own names
    (encoder_name=, classes=)."""
    spec = model_spec(name)
    if name.startswith("smp-"):
        kwargs = {SMP_KEYWORDS.get(key, key): value for key, value in kwargs.items()}
    refuse_unknown(kwargs, [*DATA_ARGUMENTS, *(f.name for f in spec.option_fields())],
                   f"the arguments of model {shown(name)}")
    data_args = {k: kwargs.pop(k) for k in DATA_ARGUMENTS if k in kwargs}
    options = resolve_model_options(name, kwargs)
    try:
        return spec.build(**data_args, **options)
    except (ValueError, TypeError) as error:
        raise SeglabError(f"cannot build model {name!r} with {kwargs}: {error}") from None
