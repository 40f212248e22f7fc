"""Fold ensembles: a JSON file naming checkpoints whose probabilities are averaged.

    {"format": "seglab-ensemble", "version": 1, "members": ["fold-1/best.pt", "fold-2/best.pt", ...]}

Member paths are relative to the file. Every member must exist, load, and share the class map and
the preprocessing (channels, scale, normalisation) and the border geometry (unpadded U-Nets'
margin); otherwise the file is refused in one line naming the member. `EnsembleModule` is an
nn.Module whose output, turned into probabilities the usual way, is the members' mean probability,
so a Predictor tiles, flips (TTA), streams and segments instances through it as through one model,
and the exporter traces it into one graph.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn

from seglab.data.classmap import ClassMap
from seglab.errors import CheckpointError
from seglab.models.outputs import input_multiple, logits_to_probabilities, min_input_size
from seglab.runtime.checkpoint import load_checkpoint, model_from_checkpoint, postprocess_of

FORMAT = "seglab-ensemble"
VERSION = 1
SHARED_PREPROCESS = ("channels", "scale", "normalization")


def is_ensemble_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".json"


def write_ensemble(path: Path, members: list[Path], extra: dict | None = None) -> Path:
    """An ensemble file at `path` naming `members` (relative to its folder)."""
    from seglab.data.writing import atomic_output

    record = {"format": FORMAT, "version": VERSION,
              "members": [str(Path(m).resolve().relative_to(path.parent.resolve())) for m in members], **(extra or {})}
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return path


def read_ensemble(path: str | Path) -> tuple[list[Path], dict]:
    """(member checkpoint paths, the file's record); CheckpointError for files that are not ensembles."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"ensemble '{path}' does not exist") from None
    except (OSError, ValueError, UnicodeDecodeError):
        raise CheckpointError(f"'{path}' is not an ensemble file (not JSON): give a .pt checkpoint or the "
                              "ensemble.json of `seglab train --folds`") from None
    members = record.get("members") if isinstance(record, dict) else None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(members, list) or not members:
        raise CheckpointError(f"'{path}' is not a seglab ensemble (no \"format\": \"{FORMAT}\" with members)")
    if record.get("version", 0) > VERSION:
        raise CheckpointError(f"ensemble '{path}' was written by a newer seglab: upgrade seglab to read it")
    return [path.parent / str(member) for member in members], record


def load_members(path: str | Path) -> tuple[list[nn.Module], ClassMap, dict, dict]:
    """The members' models, the class map and preprocessing they share, and the first one's postprocessing."""
    paths, _ = read_ensemble(path)
    models, first = [], None
    for member in paths:
        if not member.is_file():
            raise CheckpointError(f"ensemble '{path}' names '{member}', which does not exist: train that fold "
                                  "(seglab train --folds K --fold k) or remove it from the file")
        payload = load_checkpoint(member)
        if first is None:
            first = (member, payload)
        else:
            _check_compatible(path, first, (member, payload))
        models.append(model_from_checkpoint(payload, member).eval())
    margins = {getattr(m, "margin", 0) for m in models}
    if len(margins) > 1:
        raise CheckpointError(f"ensemble '{path}' mixes padded and unpadded networks (margins {sorted(margins)}): "
                              "use members of one architecture")
    return (models, ClassMap.from_dict(first[1]["class_map"]), dict(first[1]["preprocess"]),
            postprocess_of(first[1]))


def _check_compatible(path, first: tuple[Path, dict], other: tuple[Path, dict]) -> None:
    (first_path, a), (other_path, b) = first, other
    if a["class_map"] != b["class_map"]:
        theirs, ours = (ClassMap.from_dict(x["class_map"]).describe() for x in (b, a))
        raise CheckpointError(f"ensemble '{path}': '{other_path}' has classes {theirs} but '{first_path}' has {ours}")
    for key in SHARED_PREPROCESS:
        if a["preprocess"].get(key) != b["preprocess"].get(key):
            raise CheckpointError(f"ensemble '{path}': '{other_path}' was trained with {key} "
                                  f"{b['preprocess'].get(key)!r}, '{first_path}' with {a['preprocess'].get(key)!r}")


class EnsembleModule(nn.Module):
    """Members (N, C, H, W) -> log of their mean probabilities (N, K, H', W'); for one output
    channel, and for each label of `multilabel` members, the logit of the mean sigmoid.
    logits_to_probabilities of the output is the mean."""

    def __init__(self, members: list[nn.Module], multilabel: bool = False):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.multilabel = multilabel
        first = members[0]
        self.margin = getattr(first, "margin", 0)
        if self.margin:
            self.valid_input_size = first.valid_input_size
        self.input_multiple = math.lcm(*(input_multiple(m) for m in members))
        self.min_input_size = max(min_input_size(m) for m in members)
        # A format any member cannot be exported to, the ensemble cannot be either.
        self.export_refusals = {fmt: why for m in members for fmt, why in getattr(m, "export_refusals", {}).items()}
        self.base_channels = max(getattr(m, "base_channels", 64) or 64 for m in members)  # memory estimate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = sum(logits_to_probabilities(member(x).float(), self.multilabel)
                    for member in self.members) / len(self.members)
        probs = probs.clamp(1e-7, 1 - 1e-7)
        return torch.logit(probs) if probs.shape[1] == 1 or self.multilabel else probs.log()
