"""The options of `seglab serve` and of a /v1/predict request, declared once and checked by the same rules.

ServeOptions are the command's flags (and the keywords of `seglab.serve.server.serve`);
PredictQuery is the query string of one request. Its inference options (threshold, tile, overlap,
tta) carry the rules `seglab predict` checks its flags with.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass

from seglab.errors import ConfigError
from seglab.inference.options import InferenceOptions
from seglab.options import check_fields, option

OUTPUTS = ("mask", "overlay", "probability", "instances")
# Requests per forward pass by default where batched passes pay: GPUs, and CPUs computing in bf16
# (oneDNN's bf16 convolutions: 16 clients got 1.74x the requests/s batched; BENCHMARKS.md). A
# float32 CPU gains nothing from batches (0.6x-1.0x measured), so it runs each request alone.
BATCHED_MAX_BATCH = 8
FORMATS = ("png", "json")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: localhost, 127.0.0.0/8, ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


@dataclass(frozen=True)
class ServeOptions:
    host: str = option("127.0.0.1", "address to listen on; any but loopback needs --token or --no-auth")
    port: int = option(8000, "TCP port (0: a free one, printed at start)", min=0, max=65535)
    token: str | None = option(None, "bearer token that every API request must send (default: $SEGLAB_TOKEN)",
                               metavar="TOKEN")
    no_auth: bool = option(False, "serve without a token on an address other machines reach", cli=False)
    max_batch: int | None = option(None, "requests for same-size images that share one forward pass (default: "
                                   f"{BATCHED_MAX_BATCH} on a GPU and a CPU predicting in bf16; 1, no batching, "
                                   "on a float32 CPU, where batched passes measured slower)", min=1, max=256)
    max_wait_ms: float = option(5.0, "milliseconds the first request of a batch waits for others", min=0,
                                max=10_000, metavar="MS")
    max_upload_mb: float = option(64.0, "largest request body in megabytes (10^6 bytes)", above=0, max=100_000,
                                  metavar="MB")
    threads: int | None = option(None, "CPU threads of each forward pass (default: torch's, one per core; on a "
                                 "machine shared with other work 1 can be much faster)", min=1, max=1024, metavar="N")
    runs: str | None = option(None, "a folder of run folders, listed with their curves, metrics and reports "
                              "at /runs", metavar="DIR")
    shutdown_timeout: float = option(30.0, "seconds the requests in flight get to finish after SIGTERM or "
                                     "Ctrl-C; then they are stopped and the process ends", min=0, max=3600,
                                     metavar="S")
    request_timeout: float = option(60.0, "seconds one prediction may take, waiting for the model included; a "
                                    "request past it is stopped (between tiles) and answered 503", above=0,
                                    max=86_400, metavar="S")
    max_tiles: int = option(1024, "tiles one request may ask for (its tile and overlap over its image); "
                            "requests for more are refused with a 400", min=1, max=10**7, metavar="N")
    min_tile: int = option(64, "smallest tile side a request's tile= may ask for", min=8, max=65536, metavar="PX")
    upload_timeout: float = option(30.0, "seconds a request's body may take to arrive; slower uploads are refused "
                                   "with a 408 (and give back their place in --max-queue)", above=0, max=86_400,
                                   metavar="S")
    max_queue: int = option(32, "predictions held at once (uploading, waiting or running); more are answered 503 "
                            "before their body is read, which bounds the memory uploads can take", min=1,
                            max=100_000, metavar="N")

    def __post_init__(self):
        check_fields(self, "serve")
        if self.token is not None and not self.token.strip():
            raise ConfigError("invalid serve.token (--token): an empty token; give a secret string")
        if self.max_batch and self.max_queue < self.max_batch:
            raise ConfigError(f"--max-queue {self.max_queue} is below --max-batch {self.max_batch}: batches could "
                              "never fill; raise --max-queue")
        if self.token and self.no_auth:
            raise ConfigError("--token and --no-auth contradict each other: give one of them")
        if not is_loopback(self.host) and not self.token and not self.no_auth:
            raise ConfigError(f"refusing to serve on {self.host} without a token (anyone who reaches this machine "
                              "could use the model): pass --token TOKEN (clients send 'Authorization: Bearer "
                              "TOKEN') or --no-auth")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    def batch_limit(self, device_type: str, bf16: bool) -> int:
        """--max-batch, or its default for the model's device ("cuda", "cpu") and precision."""
        return self.max_batch or (BATCHED_MAX_BATCH if device_type == "cuda" or bf16 else 1)


def _inference_rule(name: str) -> dataclasses.Field:
    """A query field with the rules of InferenceOptions.<name>; None means the server's setting."""
    source = next(f for f in dataclasses.fields(InferenceOptions) if f.name == name)
    return dataclasses.field(default=None, metadata={**source.metadata, "cli": False, "flags": None})


@dataclass(frozen=True)
class PredictQuery:
    """The query string of POST /v1/predict; unset inference options keep the server's."""

    output: str = option("mask", "what comes back: the mask PNG (model's own values), the overlay PNG, the "
                         "probability map (16-bit PNG, 65535 = 1) or cell instances (16-bit label PNG)",
                         choices=OUTPUTS, cli=False)
    format: str = option("png", "json: the classes, their pixel counts and a run-length encoding of the "
                         "class map (output=mask only)", choices=FORMATS, cli=False)
    threshold: float | None = _inference_rule("threshold")
    tile: list[int] | None = _inference_rule("tile")
    overlap: float | None = _inference_rule("overlap")
    tta: str | None = _inference_rule("tta")
    scale: float | None = _inference_rule("scale")
    class_index: int | None = option(None, "output=probability: the class whose probability comes back "
                                     "(default: class 1 of binary models, the winning class's otherwise)",
                                     min=0, cli=False)
    opacity: float = option(0.45, "output=overlay: opacity of the class colours", min=0, max=1, cli=False)

    def __post_init__(self):
        check_fields(self, "query")
        if self.format == "json" and self.output != "mask":
            raise ConfigError(f"query format=json is for output=mask, not output={self.output}")

    def inference_changes(self) -> dict:
        """The inference options this request sets (threshold, tile, overlap, tta, scale), for
        Predictor.with_options."""
        names = ("threshold", "tile", "overlap", "tta", "scale")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    @classmethod
    def help(cls) -> dict[str, str]:
        """{name: help line} of every query parameter, for the API documentation."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
