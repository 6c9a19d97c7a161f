"""The service holds the knowledge index (issue 11 groundwork): loaded at start, its identity on
/v1/models, and a missing or corrupt one leaves the service up and answering."""

from __future__ import annotations

import json
from pathlib import Path

from knowledge import KnowledgeIndex, build_index
from tests.service.apphelpers import app_settings, running_app

PLAIN = "Obama visited Paris with Angela Merkel"


def _index(tmp_path: Path) -> Path:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        json.dumps({"id": "p", "title": "Paris", "text": "Paris is in France.", "source": "geo"}) + "\n"
    )
    build_index([corpus], tmp_path / "index")
    return tmp_path / "index"


async def test_models_show_the_loaded_index(tmp_path: Path) -> None:
    folder = _index(tmp_path)
    async with running_app(app_settings(knowledge_index=folder)) as (client, app):
        body = (await client.get("/v1/models")).json()
        assert app.state.knowledge.search("Paris", 1)[0].passage.id == "p"
    identity = KnowledgeIndex.load(folder).identity
    assert body["knowledge"]["state"] == "ready" and body["knowledge"]["identity"] == identity
    assert body["knowledge"]["sources"]["geo"]["passages"] == 1 and body["models"]


async def test_knowledge_off_by_default() -> None:
    async with running_app() as (client, _):
        knowledge = (await client.get("/v1/models")).json()["knowledge"]
    assert knowledge["state"] == "disabled" and knowledge["identity"] is None


async def test_missing_or_corrupt_index_leaves_the_service_up(tmp_path: Path) -> None:
    corrupt = _index(tmp_path)
    (corrupt / "manifest.json").write_text("{")
    for folder, state in ((tmp_path / "absent", "missing"), (corrupt, "corrupt")):
        async with running_app(app_settings(knowledge_index=folder)) as (client, _):
            ready = await client.get("/readyz")
            knowledge = (await client.get("/v1/models")).json()["knowledge"]
            answer = await client.post("/mner", json={"text": PLAIN})
        assert ready.status_code == 200 and answer.status_code == 200
        assert knowledge["state"] == state and knowledge["identity"] is None and knowledge["error"]
