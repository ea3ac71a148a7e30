"""A real charlm server for tests: uvicorn on 127.0.0.1, on a free port, in a thread.

    with running_server({"tiny": run_path}, ServeSettings(api_key="k")) as server:
        httpx.get(server.url + "/v1/models")
        server.service      # the app's Service: its models, workers and stream slots

The app is the one `charlm serve` runs (create_app), with its lifespan: the workers start
with the server and stop when the block ends.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

import torch
import uvicorn

from charlm.serve.app import Service, create_app
from charlm.serve.models import load_models
from charlm.serve.settings import ServeSettings


@dataclass
class RunningServer:
    url: str
    service: Service
    server: uvicorn.Server


@contextlib.contextmanager
def running_server(
    runs: dict[str, Union[str, Path]], settings: ServeSettings = ServeSettings()
) -> Iterator[RunningServer]:
    app = create_app(load_models(runs, torch.device("cpu")), settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", app.state.service, server)
    finally:
        app.state.service.stop(wait=False)  # streams still open end now, as on Ctrl-C
        server.should_exit = True
        thread.join(30)
