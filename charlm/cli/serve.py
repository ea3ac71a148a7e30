"""charlm serve: serve runs over HTTP (OpenAI-compatible API and the playground) with uvicorn."""

from __future__ import annotations

import signal
import socket
from typing import Optional

import click

from charlm.cli.console import Console
from charlm.cli.errors import one_process_only
from charlm.cli.options import CONTEXT, names_the_environment, require_threads
from charlm.config import DEVICES
from charlm.errors import CharlmError
from charlm.hardware import resolve_device, set_threads

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _missing_extra(exc: ImportError) -> CharlmError:
    return CharlmError(f"charlm serve needs the serve extra ({exc.name} is not installed): pip install 'charlm[serve]'")


@click.command(
    context_settings=CONTEXT,
    epilog="Every option can also be set in the environment as CHARLM_SERVE_<OPTION>, e.g. "
    "CHARLM_SERVE_API_KEY=... (better than --api-key, which other users of the machine can see).",
)
@click.argument("runs", nargs=-1, required=True, metavar="RUN_DIR|NAME=RUN_DIR...")
@click.option("--host", default="127.0.0.1", help="Interface to listen on; another than localhost needs --api-key.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, help="TCP port; 0 picks a free one.")
@click.option("--api-key", help="Require 'Authorization: Bearer KEY' on every API request.")
@click.option(
    "--max-concurrent", type=int, default=64, help="Streams generated at once, over all models; more get 429."
)
@click.option("--max-tokens", type=int, default=4096, help="The largest max_tokens a request may ask for.")
@click.option("--max-n", type=int, default=16, help="The most completions (n) a request may ask for per prompt.")
@click.option("--max-prompt-chars", type=int, default=32_768, help="The longest prompt, in characters.")
@click.option("--max-body-bytes", type=int, default=2 << 20, help="The largest request body; past it, 413.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", help="auto picks CUDA when present.")
@click.option("--threads", type=int, help="CPU threads. Default: one per available core.")
@click.option("--access-log", is_flag=True, help="Log every request on stderr.")
@names_the_environment
def serve(
    runs: tuple[str, ...],
    host: str,
    port: int,
    api_key: Optional[str],
    max_concurrent: int,
    max_tokens: int,
    max_n: int,
    max_prompt_chars: int,
    max_body_bytes: int,
    device: str,
    threads: Optional[int],
    access_log: bool,
) -> None:
    """Serve language-model runs over HTTP: an OpenAI-compatible completions API, scoring,
    and a web playground at the root URL. Each run is addressed by its folder's name (or
    NAME=RUN_DIR) as the request's model. Ctrl-C stops it; streams in flight end first."""
    one_process_only("serve")
    console = Console()
    try:
        import uvicorn

        from charlm.serve.app import create_app
        from charlm.serve.models import load_models, model_names
        from charlm.serve.settings import ServeSettings
    except ImportError as exc:
        raise _missing_extra(exc) from None
    require_threads(threads)
    settings = ServeSettings(
        api_key=api_key or None,
        max_concurrent=max_concurrent,
        max_tokens=max_tokens,
        max_n=max_n,
        max_prompt_chars=max_prompt_chars,
        max_body_bytes=max_body_bytes,
        default_max_tokens=min(ServeSettings.default_max_tokens, max(max_tokens, 1)),
    )
    settings.validate()
    named = model_names(list(runs))
    torch_device = resolve_device(device)
    listening = _listen(host, port)  # before loading: a taken port is said at once
    set_threads(threads)
    models = load_models(named, torch_device)
    if host not in LOCAL_HOSTS and settings.api_key is None:
        console.warn(f"serving on {host} without --api-key: anyone who can reach this machine can use the models")
    app = create_app(models, settings)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=access_log, timeout_graceful_shutdown=5,
        server_header=False,
    )  # fmt: skip
    server = _server(config, console, sorted(models), host)
    server.run(sockets=[listening])
    if not server.started:
        raise CharlmError(f"the server did not start on {host}:{port}; see the messages above")
    console.note("stopped")


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a taken port or a foreign address is one line."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listening = socket.socket(family, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, port))
    except OSError as exc:  # the port is taken, the address is not this machine's, the name is unknown
        raise CharlmError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or --host"
        ) from None
    return listening


def _server(config, console: Console, names: list[str], host: str):
    """uvicorn's Server (imported with the serve extra), saying where it listens once it does,
    and ending the streams in flight first on Ctrl-C or SIGTERM."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if not self.started:
                return
            port = self.servers[0].sockets[0].getsockname()[1]
            where = f"[{host}]" if ":" in host else host
            url = f"http://{where}:{port}"
            console.info(f"serving {', '.join(names)} on {url} (playground at {url}/); Ctrl-C stops")

        def handle_exit(self, sig, frame) -> None:
            # streams in flight end now (finish reason "abort"), so the graceful wait is short;
            # the signal is not raised again afterwards: a stopped server exits 0
            config.app.state.service.stop(wait=False)
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

    return Server(config)
