"""A real gateway process serving several models at once, for the page test.

``python ui_gateway.py PORT REF [REF…]`` loads each model reference with the serving room's
``load_predictor`` and serves ``create_app(predictors)`` with uvicorn on 127.0.0.1 — the same app
``eyeops serve --backend local`` runs, with more than one model so the page's model picker matters.
"""

from __future__ import annotations

import sys

import uvicorn

from eyeops.serve.gateway import create_app
from eyeops.serve.limits import configure_logging
from eyeops.serve.predictor import load_predictor
from eyeops.serve.settings import load_serve_settings


def main(port: int, refs: list[str]) -> None:
    configure_logging()
    settings = load_serve_settings()
    predictors = [load_predictor(ref, max_batch_size=settings.max_batch_size) for ref in refs]
    uvicorn.run(create_app(predictors, settings), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
