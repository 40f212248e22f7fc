"""The API's keywords, declared once: real signatures made from the options, and misspelt keywords
refused in one line that names the nearest one.

`seglab.train(**overrides)` takes every data, train and model option by name. Its signature (and
`help()`, `inspect.signature`, Jupyter's `?`, IDE completion) lists them keyword-only, with their
defaults, types and help, from the same dataclass fields the command's flags are made from.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Any, Callable

from seglab.config import PLANNED, DataConfig, TrainConfig
from seglab.models.registry import list_models, model_spec
from seglab.options import refuse_unknown, with_keywords

# Keywords a run takes besides the data and train options: the model and its run folder.
RUN_KEYWORDS = {
    "model": (str, "unet", "the model: a registered name (seglab models lists them)"),
    "out": (str | None, None, "the run folder (default: runs/<data>-<model>-<time>)"),
}


@functools.lru_cache(maxsize=1)
def run_options() -> tuple[tuple[str, Any, Any, str], ...]:
    """(name, annotation, default, help) of every keyword seglab.train takes by name: the data options
    (but root), the train options, the run's keywords, then each model's options (default None:
    the chosen model's own default)."""
    found: dict[str, tuple[str, Any, Any, str]] = {}
    for section in (DataConfig, TrainConfig):
        hints = typing.get_type_hints(section)
        for field in dataclasses.fields(section):
            if field.name != "root":
                default = field.default_factory() if field.default_factory is not dataclasses.MISSING \
                    else field.default
                found[field.name] = (field.name, hints[field.name], default, field.metadata.get("help", ""))
    for name, (annotation, default, help_text) in RUN_KEYWORDS.items():
        found[name] = (name, annotation, default, help_text)
    for model in list_models():
        spec = model_spec(model)
        hints = typing.get_type_hints(spec.options)
        for field in spec.option_fields():
            if field.name not in found:
                found[field.name] = (field.name, hints[field.name] | None, None,
                                     f"model option ({', '.join(_models_with(field.name))}): "
                                     f"{field.metadata.get('help', '')}")
    return tuple(found.values())


def _models_with(option: str) -> list[str]:
    return [name for name in list_models() if option in {f.name for f in model_spec(name).option_fields()}]


def with_run_options(func: Callable) -> Callable:
    """Give `func(..., **overrides)` the signature of its explicit parameters plus every run option
    (keyword-only, with defaults, types and help appended to its docstring; the plan's marked)."""
    with_keywords(func, [(name, annotation, default, text + (" [planned when not given]" if _planned(name) else ""))
                         for name, annotation, default, text in run_options()],
                  "Options (the command's flags, by name; `section.name` keys of config.yaml work too)")
    return func


def _planned(name: str) -> bool:
    return any(key.split(".", 1)[1] == name for key in PLANNED)


def checked_keywords(where: str) -> Callable[[Callable], Callable]:
    """A decorator: a call with a keyword `func` does not take raises one ConfigError (a
    SeglabError) naming the nearest one, where Python would raise a bare TypeError."""

    def decorate(func: Callable) -> Callable:
        signature = inspect.signature(func)
        known = [name for name, p in signature.parameters.items()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

        @functools.wraps(func)
        def checked(*args, **kwargs):
            refuse_unknown(kwargs, known, where)
            return func(*args, **kwargs)

        return checked

    return decorate
