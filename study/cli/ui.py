"""`flowctl ui`: a live, read-only web dashboard of the runs under the checkpoint root.

Imports neither torch nor wandb to start or to draw the runs table (study.ui); a run page
imports torch once, to summarise that run's checkpoint.
"""

from __future__ import annotations

import errno
import json
import signal
import socket
from pathlib import Path

import typer

from study.cli.common import fail, warn
from study.runs.paths import checkpoint_root


def ui(
    ckpt_dir: Path | None = typer.Option(
        None, "--ckpt-dir", help="Checkpoint root (default: $FLOWCTL_CKPT_DIR, else study/checkpoints)."
    ),
    port: int = typer.Option(8765, "--port", help="TCP port; 0 picks a free one."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on. Anything but loopback shares your runs "
        "with whoever can reach this machine (printed as a warning)."
    ),
    json_output: bool = typer.Option(
        False, "--json", help="Print {url, host, port, root} as one JSON line (for scripts), then serve."
    ),
) -> None:
    """Serve a live dashboard of the runs: a table of every run (status, progress, losses, ETA), and per run its loss and learning-rate curves, eval metrics, pictures, config and resume command. Pages refresh every 2 s; JSON at /api/runs. Read-only: it never writes to the run folders.

    Example: flowctl ui --port 8765
    """
    from study.ui.api import DashboardApi
    from study.ui.server import DashboardServer, is_loopback

    if not 0 <= port <= 65535:
        raise fail(f"--port must be between 0 and 65535, got {port}; 0 picks a free port")
    root = checkpoint_root(ckpt_dir)
    if root.exists() and not root.is_dir():
        raise fail(f"checkpoint root {root} is not a folder; pass --ckpt-dir FOLDER")
    try:
        server = DashboardServer(DashboardApi(root), host, port)
    except socket.gaierror as err:
        raise fail(f"cannot listen on host {host!r} ({err.strerror}); pass --host 127.0.0.1") from None
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise fail(f"port {port} on {host} is in use (another flowctl ui?); pass --port N, "
                       "or --port 0 for any free port") from None
        raise fail(f"cannot listen on {host}:{port}: {err.strerror or err}; pass another "
                   "--host or --port") from None
    url = f"http://{url_host(host)}:{server.port}/"
    if not is_loopback(host):
        warn(f"listening on {host}:{server.port}, not loopback: anyone who can reach this "
             "machine can read these runs (read-only, no login)")
    if json_output:
        typer.echo(json.dumps({"url": url, "host": host, "port": server.port, "root": str(root)}))
    else:
        typer.echo(f"flowctl ui: runs under {root} at {url}  (read-only; Ctrl-C to stop)")

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def url_host(host: str) -> str:
    """How `host` goes into a URL: IPv6 in brackets; a wildcard address as this machine's name."""
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host
