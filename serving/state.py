"""The server's state: the model loads in the background, then its engine serves every request.

Until then the routes answer 503.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fingpt.checkpoint import LoadedModel, load_model
from serving.completions import Completions
from serving.engine import Engine
from serving.errors import APIError
from serving.metrics import Metrics
from serving.settings import Settings

log = logging.getLogger("fingpt.serve")


@dataclass
class ServerState:
    """What the routes share: the model and its engine once loaded, or why they could not be."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    loaded: LoadedModel | None = None
    engine: Engine | None = None
    completions: Completions | None = None
    model_id: str = ""
    error: str | None = None

    def load(self, loaded: LoadedModel | None) -> None:
        """Load the model (unless given), move it to its device and dtype, start the engine."""
        settings = self.settings
        try:
            device = settings.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            model = loaded or load_model(settings.model, device=device)
            dtype = settings.dtype
            if dtype == "auto":
                dtype = "bfloat16" if device.startswith("cuda") else str(model.model.wte.weight.dtype)[6:]
            model.model.to(device=device, dtype=getattr(torch, dtype))
            engine = Engine(model, settings.max_batch_size, settings.max_queue, self.metrics)
            engine.start()
        except Exception as e:  # noqa: BLE001 - reported by /health
            log.exception("could not load %s", settings.model)
            self.error = str(e)
            return
        self.model_id = (model.info or {}).get("name") or Path(settings.model).resolve().name
        self.loaded, self.engine = model, engine
        self.completions = Completions(model, engine, self.model_id, settings.timeout, self.metrics)  # ready
        log.info("serving %s on %s", settings.model, device)

    def ready(self) -> Completions:
        if self.completions is None:
            raise APIError(
                503, "the model is still loading: retry shortly", type="server_error", code="loading"
            )
        return self.completions
