"""The server's state: the model loads in the background, then its engine serves every request.

Until then (or if the load failed) the routes answer 503, with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fingpt.checkpoint import LoadedModel, load_model
from fingpt.devices import dtype_of, resolve_device, resolve_dtype
from fingpt.quantize import to_dtype
from serving.completions import Completions
from serving.engine import Engine
from serving.errors import APIError
from serving.metrics import Metrics
from serving.protocol import Served
from serving.settings import Settings

log = logging.getLogger("fingpt.serve")


def log_failure(e: Exception) -> None:
    log.error("could not load the model: %s", e, exc_info=not isinstance(e, OSError | ValueError))


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

    def load(self, loaded: LoadedModel | None, on_failure: Callable[[Exception], None] = log_failure) -> None:
        """Load the model (unless given), move it to its device and dtype, start the engine."""
        settings = self.settings
        try:
            device = resolve_device("cpu" if settings.backend == "llama.cpp" else settings.device)
            model = loaded or load_model(settings.model, device=device)
            dtype = resolve_dtype(settings.dtype, device, own=dtype_of(model.model))
            if settings.backend == "llama.cpp":  # the same sampler and API, llama.cpp's arithmetic
                from serving.llama_backend import LlamaCppModel  # and its GGUF writer: only here

                model = LoadedModel(LlamaCppModel.of(model, dtype), model.tokenizer, model.card)
            else:
                to_dtype(model.model.to(device), dtype)  # int8: weight-only, on a CPU
            engine = Engine(model, settings.max_batch_size, settings.max_queue, self.metrics)
            engine.start()
        except Exception as e:  # noqa: BLE001 - /health and every request say why
            self.error = str(e)
            return on_failure(e)
        self.model_id = model.card.name or Path(settings.model).resolve().name
        self.loaded, self.engine = model, engine
        self.completions = Completions(  # ready
            model, engine, self.model_id, settings.timeout, settings.limits.max_score_positions, self.metrics
        )
        log.info("serving %s on %s (%s)", settings.model, device, settings.backend)

    def served(self) -> Served | None:
        """What the spec says of the model, once it is loaded."""
        if (loaded := self.loaded) is None:
            return None
        return Served(context=loaded.model.config.block_size, vocab_size=loaded.tokenizer.vocab_size)

    def ready(self) -> Completions:
        if self.error is not None:
            message = f"the model could not be loaded: {self.error}"
            raise APIError(503, message, type="server_error", code="model_not_loaded")
        if self.completions is None:
            raise APIError(
                503, "the model is still loading: retry shortly", type="server_error", code="loading"
            )
        return self.completions
