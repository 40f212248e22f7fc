"""seglab serve: a trained model behind an HTTP API and a web page (FastAPI + uvicorn, the `serve` extra).

    from seglab.serve.server import serve
    serve("runs/isbi/best.pt", port=8000)          # what `seglab serve -m runs/isbi/best.pt` runs

Importing this package needs no FastAPI: the command's flags (`ServeOptions`) are declared here
and FastAPI is imported only when a server starts.
"""
from seglab.serve.options import PredictQuery, ServeOptions

__all__ = ["PredictQuery", "ServeOptions"]
