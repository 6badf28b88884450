"""``gsv serve``: upstream api_v2 and OpenAI speech over HTTP, on the serving engine."""

from __future__ import annotations

from typing import Any

from gsv_runtime.server.app import ServerSettings, create_app
from gsv_runtime.server.voices import VoiceCatalog, load_catalog

__all__ = ["ServerSettings", "VoiceCatalog", "create_app", "load_catalog", "make_server"]


def make_server(
    app: Any, host: str = "127.0.0.1", port: int = 9880, log_level: str = "info"
) -> Any:
    """A uvicorn server for ``app``; /control?command=exit stops it."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
    app.state.gsv.settings.shutdown = lambda: setattr(server, "should_exit", True)
    return server
