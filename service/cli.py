"""``saver serve``: parse a few overrides, set up logging and the metrics directory once, run uvicorn."""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import shutil
import tempfile
from pathlib import Path

from service.logs import logging_config
from service.settings import Settings

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client itself


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="saver serve",
        description="Run the SAVER HTTP service. Every setting is also read from SAVER_<NAME> variables.",
    )
    p.add_argument("--host", help="interface to bind (SAVER_HOST)")
    p.add_argument("--port", type=int, help="TCP port (SAVER_PORT)")
    p.add_argument("--workers", type=int, help="worker processes (SAVER_WORKERS)")
    p.add_argument("--mner-artifacts", type=Path, help="MNER artifacts directory (SAVER_MNER_ARTIFACTS)")
    p.add_argument("--mre-artifacts", type=Path, help="MRE artifacts directory (SAVER_MRE_ARTIFACTS)")
    p.add_argument("--log-level", help="log level (SAVER_LOG_LEVEL)")
    return p


def serve(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = Settings(**overrides)
    # Workers are separate processes that build their settings from the environment: pass overrides on.
    for key, value in overrides.items():
        os.environ[f"SAVER_{key.upper()}"] = str(value)

    config = logging_config(settings.log_level, settings.log_json)
    logging.config.dictConfig(config)
    made_dir = _prepare_metrics_dir(settings)

    import uvicorn  # after the metrics directory is set: prometheus_client reads it at import

    log.info(
        "starting",
        extra={"host": settings.host, "port": settings.port, "workers": settings.workers},
    )
    try:
        uvicorn.run(
            "service.app:app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_config=config,
            access_log=False,
            timeout_graceful_shutdown=int(settings.shutdown_grace_s),
            proxy_headers=True,
            server_header=False,
        )
    finally:
        if made_dir is not None:
            shutil.rmtree(made_dir, ignore_errors=True)


def _prepare_metrics_dir(settings: Settings) -> Path | None:
    """Several workers need a shared, empty multiprocess directory, made before any worker starts.

    Returns the directory if it made a temporary one. Must run before ``prometheus_client`` is first
    imported in this process, which picks its value storage from the environment at import time (so this
    module never imports it at the top).
    """
    configured = settings.metrics_multiproc_dir or (
        Path(os.environ[MULTIPROC_ENV]) if os.environ.get(MULTIPROC_ENV) else None
    )
    made = None
    if configured is None and settings.workers > 1:
        configured = made = Path(tempfile.mkdtemp(prefix="saver-metrics-"))
    if configured is not None:
        if configured.exists():
            shutil.rmtree(configured)  # values left by a previous run would be added to this one's
        configured.mkdir(parents=True)
        os.environ[MULTIPROC_ENV] = str(configured)
        log.info("multiprocess metrics", extra={"dir": str(configured)})
    return made  # a temporary directory to remove at exit
