"""``lazyedit serve``: argument parser and entry point (uvicorn)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from pydantic import ValidationError


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="lazyedit serve", description="Run the lazyedit editing service.")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1; others need --token)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860; 0 = any free port)")
    p.add_argument("--model", default=None, help='"demo" (default), "tiny" or a model folder')
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="default auto")
    p.add_argument("--data-dir", type=Path, default=None, help="sessions database and images (default ./data)")
    p.add_argument("--database-url", default=None, help="SQLAlchemy URL (default sqlite in --data-dir; postgresql://... works)")
    p.add_argument("--image-store", default=None, metavar="FOLDER|s3://BUCKET/PREFIX",
                   help="where images are kept (default <data-dir>/images; s3:// needs boto3, endpoint from AWS_ENDPOINT_URL)")
    p.add_argument("--token", default=None, help="required on REST (Bearer) and /ws (?token=)")
    p.add_argument("--frontend-dir", type=Path, default=None, help="built frontend to serve at / (default frontend/dist)")
    p.add_argument("--allow-origin", dest="allowed_origins", action="append", default=None, metavar="ORIGIN",
                   help="extra Origin allowed on /ws, e.g. http://localhost:5173 (repeatable)")
    p.add_argument("--trusted-proxy", dest="trusted_proxies", action="append", default=None, metavar="ADDR",
                   help="proxy address or CIDR whose X-Forwarded-For gives the client address (repeatable)")
    p.add_argument("--max-pixels", type=int, default=None, help="largest canvas (default 4194304 = 2048x2048)")
    p.add_argument("--context-window", type=int, default=None, metavar="PX",
                   help="an edit reads at most PX x PX pixels of the canvas around its mask (0 = the whole canvas; "
                        "default 1024 on a CPU, 0 on a GPU)")
    p.add_argument("--max-image-bytes", type=int, default=None)
    p.add_argument("--max-message-bytes", type=int, default=None)
    p.add_argument("--max-prompt-chars", type=int, default=None)
    p.add_argument("--max-sessions-per-client", type=int, default=None)
    p.add_argument("--max-stored-sessions", type=int, default=None)
    p.add_argument("--max-queue", type=int, default=None, help="edits waiting across all sessions")
    p.add_argument("--max-batch", type=int, default=None, help="edits per forward pass (1 = no batching)")
    p.add_argument("--preview-every", type=int, default=None, help="send a preview every N steps")
    p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    return p


def settings_from_args(args: argparse.Namespace):
    from .settings import ServiceSettings

    fields = set(ServiceSettings.model_fields)
    overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return ServiceSettings(**overrides)


def open_storage(settings):
    """The database and the image store, opened before serving (the app then uses them), so a wrong URL or a
    missing bucket is one line naming it (exit 2) rather than a start-up traceback."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from .storage import Storage

    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return Storage(settings.resolved_database_url, settings.resolved_image_store)
    except SQLAlchemyError as exc:
        try:
            shown = make_url(settings.resolved_database_url).render_as_string(hide_password=True)
        except SQLAlchemyError:
            shown = "--database-url"   # unparsable: do not echo what may hold a password
        raise ValueError(f"database {shown!r}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise ValueError(f"data folder {str(settings.data_dir)!r}: {exc}") from None


def serve_main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        storage = open_storage(settings)
    except ValidationError as exc:
        msgs = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        print(f"lazyedit serve: {msgs}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"lazyedit serve: {exc}", file=sys.stderr)
        return 2
    return run(settings, storage)


def run(settings, storage=None) -> int:
    """Serve until stopped; ``storage``: opened by open_storage (else the app opens it at start-up)."""
    import uvicorn

    from .app import create_app

    level = settings.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings, storage=storage)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                ws_max_size=settings.max_message_bytes * 2 + 4096, ws_ping_interval=20, ws_ping_timeout=60,
                proxy_headers=bool(settings.trusted_proxies),
                forwarded_allow_ips=",".join(settings.trusted_proxies) or None)
    return 0


if __name__ == "__main__":
    raise SystemExit(serve_main())
