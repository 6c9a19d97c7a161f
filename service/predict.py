"""``saver predict``: a JSONL file of posts through the service's own code path, offline.

    saver predict --task mner --input posts.jsonl --out results.jsonl
    saver predict --task mre --input pairs.jsonl --out results.jsonl --batch-size 32

Each input line is one ``/mner`` (or ``/mre``) request body. The app is built and started exactly as
``saver serve`` does it (artifacts, settings from ``SAVER_*``, warm-up), and the lines go, in chunks,
through the predictor's batch method, the one behind ``POST /v1/<task>:batch``: same validation, same
model methods, same answers. Nothing listens on a port. Each output line is ``{"line", "status",
"result"}`` or ``{"line", "status", "error"}``, in input order; a bad line (not JSON, invalid, failed)
gets its error record and never stops the run. Blank lines are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import logging.config
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from service.logs import logging_config
from service.settings import Settings

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="saver predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--task", choices=("mner", "mre"), required=True)
    p.add_argument("--input", type=Path, required=True, help="JSONL: one request body per line")
    p.add_argument("--out", type=Path, required=True, help="JSONL: one result or error record per input line")
    p.add_argument("--batch-size", type=int, default=32, help="lines per batch call (default 32)")
    p.add_argument("--mner-artifacts", type=Path, help="MNER artifacts directory (SAVER_MNER_ARTIFACTS)")
    p.add_argument("--mre-artifacts", type=Path, help="MRE artifacts directory (SAVER_MRE_ARTIFACTS)")
    p.add_argument("--allow-loopback", action="store_true", help="allow image URLs on loopback (local files)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _chunks(path: Path, size: int) -> Iterator[list[tuple[int, str]]]:
    chunk: list[tuple[int, str]] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                chunk.append((number, line))
            if len(chunk) >= size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


async def _run(args: argparse.Namespace, settings: Settings) -> dict[str, int]:
    from service.app import create_app
    from service.batch_schemas import MnerBatchRequest, MreBatchRequest

    app = create_app(settings)
    counts = {"lines": 0, "ok": 0, "errors": 0}
    async with app.router.lifespan_context(app):
        predictor = getattr(app.state, "predictor", None)
        if predictor is None:
            raise SystemExit(getattr(app.state, "load_error", "models failed to load"))
        run = predictor.mner_batch if args.task == "mner" else predictor.mre_batch
        request = MnerBatchRequest if args.task == "mner" else MreBatchRequest
        total = sum(1 for line in args.input.open(encoding="utf-8", errors="replace") if line.strip())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with (
            args.out.open("w", encoding="utf-8") as out,
            tqdm(total=total, unit="post", disable=args.no_progress) as bar,
        ):
            for chunk in _chunks(args.input, args.batch_size):
                records: dict[int, dict[str, Any]] = {}
                items: list[tuple[int, Any]] = []
                for number, line in chunk:
                    try:
                        items.append((number, json.loads(line)))
                    except ValueError as exc:
                        error = {
                            "code": "invalid_json",
                            "message": f"line is not valid JSON: {exc}",
                            "details": [],
                        }
                        records[number] = {"line": number, "status": 422, "error": error}
                if items:
                    # each line is a single body: its errors name its own fields, not ``items.<i>.…``
                    answer = await run(request(items=[body for _, body in items]), name_items=False)
                    for (number, _), item in zip(items, answer.items, strict=True):
                        record: dict[str, Any] = {"line": number, "status": item.status}
                        if item.result is not None:
                            record["result"] = item.result.model_dump()
                        if item.error is not None:
                            record["error"] = item.error.model_dump(exclude_none=True)
                        records[number] = record
                for number, _ in chunk:
                    record = records[number]
                    counts["ok" if record["status"] == 200 else "errors"] += 1
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                counts["lines"] += len(chunk)
                bar.update(len(chunk))
    return counts


def predict(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    overrides: dict[str, Any] = {k: v for k in ("mner_artifacts", "mre_artifacts") if (v := getattr(args, k))}
    if args.allow_loopback:
        overrides["allow_loopback"] = True
    # Offline: a chunk may take long (many images); no client is waiting on the deadline.
    overrides.setdefault("request_timeout_s", 3600.0)
    settings = Settings(**overrides)
    if args.batch_size < 1 or args.batch_size > settings.batch_max_items:
        raise SystemExit(f"--batch-size must be within 1..{settings.batch_max_items} (SAVER_BATCH_MAX_ITEMS)")
    logging.config.dictConfig(logging_config(settings.log_level, json_lines=False))
    counts = asyncio.run(_run(args, settings))
    log.info(
        "%d lines: %d answered, %d error records; written to %s",
        counts["lines"],
        counts["ok"],
        counts["errors"],
        args.out,
    )
