"""Run the app under uvicorn: a socket bound first (so --port 0 prints the real port), graceful stops.

SIGTERM and Ctrl-C stop accepting connections, let the requests in flight finish (up to
--shutdown-timeout seconds, then they are answered 503 and their tiled predictions stop), stop the
batcher, and end the process with exit code 0. A forward pass that is still running then (one
whole image cannot be stopped halfway) does not hold the process: it ends without waiting for it.
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import signal
import socket
import sys
from contextlib import contextmanager

from seglab.errors import SeglabError
from seglab.inference.predictor import Predictor
from seglab.options import refuse_unknown
from seglab.serve.options import ServeOptions

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or one line saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on connections whose socket says TCP,
    # and accepted sockets copy this one's. Without it every response waited ~40 ms for the client's
    # delayed ACK (Nagle: headers and body are two writes): 44 ms for GET /healthz on loopback.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError as error:
        sock.close()
        reason = {errno.EADDRINUSE: "the port is in use", errno.EACCES: "permission denied (ports below 1024 "
                  "need root)", errno.EADDRNOTAVAIL: "no such address on this machine"}.get(error.errno,
                                                                                              error.strerror)
        raise SeglabError(f"cannot listen on {host}:{port} ({reason}): choose another --port or --host") from None
    sock.set_inheritable(True)
    return sock


@contextmanager
def stop_requests():
    """While uvicorn runs it owns SIGINT/SIGTERM; afterwards it re-raises the signal that stopped it
    into the handlers that were there before. These handlers only note which one it was, so the
    command ends with a line and exit code 0 rather than a KeyboardInterrupt or a killed process."""
    received: list[str] = []
    previous = {sig: signal.signal(sig, lambda number, frame: received.append(signal.Signals(number).name))
                for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(model: Predictor | str | os.PathLike, options: ServeOptions | None = None, *, scale: float | None = None,
          log=print, **option_values) -> int:
    """Serve a Predictor (or a checkpoint / export path, loaded with defaults) until SIGTERM or Ctrl-C.
    `scale` resizes the images as `Predictor.with_options(scale=...)` does (default: the model's).

    `options` is a ServeOptions, or its fields as keywords (host=, port=, token=, max_batch=, ...).
    Returns how many predictions were answered.
    """
    try:
        import uvicorn

        from seglab.serve.app import create_app
    except ImportError as error:
        raise SeglabError(f"seglab serve needs FastAPI and uvicorn ({error.name} is missing): "
                          "pip install 'seglab[serve]'") from None
    refuse_unknown(option_values, [f.name for f in dataclasses.fields(ServeOptions)], "the options of seglab.serve")
    options = options or ServeOptions(**option_values)
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    if not isinstance(model, Predictor):
        from seglab.api.predicting import load

        model = load(model, log=log)
    if scale is not None:
        model = model.with_options(scale=scale)
    logging.getLogger("tifffile").setLevel(logging.ERROR)  # not a line per odd upload in the server's log
    app = create_app(model, options)
    sock = bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=options.shutdown_timeout)
    server = impatient_server(uvicorn, config, app.state.seglab, log)
    auth = "token required" if options.token else "no token"
    log(f"serving {model.info.get('source', 'the model')} ({model.runtime} on {model.device}) "
        f"at http://{shown}:{port}/ ({auth}; API docs at /docs); Ctrl-C stops")
    sys.stdout.flush()  # whoever started the server reads the address from this line
    with stop_requests() as received:
        server.run(sockets=[sock])
    state = app.state.seglab
    why = f" ({received[0]})" if received else ""
    log(f"stopped{why}: {state.answered} predictions answered, {state.refused} requests refused")
    if state.model_left_running or state.batcher.model_busy:
        end_now(log)
    return state.answered


def impatient_server(uvicorn, config, state, log):
    """A uvicorn.Server that ends the process at a second stop signal (Ctrl-C twice), counting what it
    answered, instead of uvicorn's forced exit (which skips the shutdown and prints a traceback)."""

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if self.should_exit:
                log(f"stopped at once ({signal.Signals(sig).name} again): {state.answered} predictions answered, "
                    f"{state.in_flight} requests in flight dropped")
                end_now(log, quiet=True)
            super().handle_exit(sig, frame)

    return Server(config)


def end_now(log, quiet: bool = False) -> None:
    """End the process at once: the model's thread is inside PyTorch, and Python's own exit would
    either wait for it or abort ("terminate called without an active exception")."""
    if not quiet:
        log("the model was inside a forward pass; the process ends without waiting for it")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
