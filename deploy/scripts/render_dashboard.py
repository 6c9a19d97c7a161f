"""Render the Grafana dashboard's queries, evaluated by a real Prometheus, into one PNG.

Grafana cannot run everywhere (not in CI, not here), so this draws the *same* PromQL of the provisioned
dashboard (``deploy/grafana/dashboards/saver-overview.json``) with matplotlib, laid out on the
dashboard's own grid. It also holds the helpers that tests/deploy uses to pull the expressions out of
the dashboard and the rule files and to query Prometheus's HTTP API.

    python deploy/scripts/render_dashboard.py --prometheus http://127.0.0.1:9090 --out docs/img/dashboard.png
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

DEPLOY = Path(__file__).resolve().parents[1]
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "saver-overview.json"
RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yaml"))

# Grafana's template variables, as the tests and the renderer fill them in.
DEFAULT_VARIABLES = {
    "job": "saver",
    "endpoint": "mner|mre",
    "__rate_interval": "1m",
    "datasource": "prometheus",
}
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_COMPARISON = re.compile(r"^(?P<signal>.*?)\s*(?:>|<|>=|<=|==|!=)\s*-?[0-9.]+\s*$", re.S)


@dataclass(frozen=True)
class DashboardQuery:
    """One target of one panel."""

    panel: str  # panel title
    ref_id: str  # target id within the panel (A, B, ...)
    expr: str  # PromQL with Grafana variables
    legend: str  # legendFormat ({{label}} placeholders)
    unit: str  # the panel's unit
    kind: str  # panel type (timeseries, table)


@dataclass(frozen=True)
class RuleExpression:
    """A recording or alerting rule."""

    name: str  # recorded series or alert name
    expr: str
    kind: str  # "record" or "alert"

    @property
    def signal(self) -> str:
        """The expression without its final threshold comparison (the whole expression if it has none)."""
        match = _COMPARISON.match(self.expr.strip())
        return match.group("signal") if match and self.kind == "alert" else self.expr


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return dashboard


def data_panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data (rows excluded), nested row panels included."""
    panels: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    return panels


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[DashboardQuery]:
    return [
        DashboardQuery(
            panel=panel["title"],
            ref_id=target["refId"],
            expr=target["expr"],
            legend=target.get("legendFormat", ""),
            unit=panel.get("fieldConfig", {}).get("defaults", {}).get("unit", ""),
            kind=panel["type"],
        )
        for panel in data_panels(dashboard)
        for target in panel.get("targets", [])
    ]


def rule_expressions(paths: Iterable[Path] = RULE_FILES) -> list[RuleExpression]:
    rules: list[RuleExpression] = []
    for path in paths:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                kind = "record" if "record" in rule else "alert"
                rules.append(RuleExpression(rule[kind], rule["expr"], kind))
    return rules


def substitute(expr: str, variables: Mapping[str, str] = DEFAULT_VARIABLES) -> str:
    """Fill in Grafana's ``$name`` / ``${name}`` variables; an unknown variable is an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return variables[name]

    return _VARIABLE.sub(replace, expr)


class Prometheus:
    """The few calls of Prometheus's HTTP API that the tests and the renderer need."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self._client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def _get(self, path: str, params: Mapping[str, str | float] | None = None) -> Any:
        response = self._client.get(path, params=params)
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, str | float] = {"query": expr}
        if at is not None:
            params["time"] = at
        result: list[dict[str, Any]] = self._get("/api/v1/query", params)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        params: dict[str, str | float] = {"query": expr, "start": start, "end": end, "step": step}
        result: list[dict[str, Any]] = self._get("/api/v1/query_range", params)["result"]
        return result

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self._get("/api/v1/rules")["groups"] for rule in group["rules"]]

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self._get("/api/v1/targets")["activeTargets"]
        return active


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    """The finite sample values of an instant-query result."""
    values = [float(series["value"][1]) for series in result]
    return [v for v in values if math.isfinite(v)]


def _legend(template: str, labels: Mapping[str, str]) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
    return text if text and text != "__auto" else ",".join(f"{k}={v}" for k, v in labels.items())


def _format_axis(ax: Any, unit: str) -> None:
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    if unit == "percentunit":
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    elif unit == "s":
        ax.yaxis.set_major_formatter(
            FuncFormatter(lambda v, _: f"{v * 1e3:.0f} ms" if v < 1 else f"{v:.2g} s")
        )
    elif unit in ("reqps", "ops"):
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}/s"))


def render(
    prometheus: Prometheus, out: Path, variables: Mapping[str, str], window_s: float, step_s: float
) -> Path:
    """Draw every data panel of the dashboard over the last ``window_s`` seconds into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    dashboard = load_dashboard()
    end = time.time()
    start = end - window_s
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    fig = plt.figure(figsize=(22, height * 0.42), layout="constrained")
    grid = GridSpec(height, 24, figure=fig)
    fig.suptitle(f"{dashboard['title']} (rendered from Prometheus, {variables.get('job')})", fontsize=14)
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        ax = fig.add_subplot(grid[pos["y"] : pos["y"] + pos["h"], pos["x"] : pos["x"] + pos["w"]])
        if panel["type"] == "row":
            ax.axis("off")
            ax.text(0, 0.5, panel["title"], fontsize=13, fontweight="bold", va="center")
            continue
        ax.set_title(panel["title"], fontsize=10, loc="left")
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        if panel["type"] == "table":
            _draw_table(ax, prometheus, panel, variables)
            continue
        for target in panel["targets"]:
            series = prometheus.query_range(substitute(target["expr"], variables), start, end, step_s)
            for s in series:
                xs = [float(t) - end for t, _ in s["values"]]
                ys = [float(v) for _, v in s["values"]]
                ax.plot(xs, ys, label=_legend(target.get("legendFormat", ""), s["metric"]), linewidth=1.2)
        for step in panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", []):
            if step.get("value") is not None:
                ax.axhline(step["value"], color="red", linestyle="--", linewidth=0.8)
        _format_axis(ax, unit)
        ax.set_xlim(-window_s, 0)
        ax.set_xlabel("seconds before now", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", ncols=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def _draw_table(
    ax: Any, prometheus: Prometheus, panel: Mapping[str, Any], variables: Mapping[str, str]
) -> None:
    ax.axis("off")
    rows: list[list[str]] = []
    columns: list[str] = []
    for target in panel["targets"]:
        for series in prometheus.query(substitute(target["expr"], variables)):
            labels = {k: v for k, v in series["metric"].items() if k != "__name__"}
            columns = columns or sorted(labels)
            rows.append([labels.get(c, "") for c in columns])
    if rows:
        table = ax.table(cellText=rows, colLabels=columns, loc="center", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    parser.add_argument("--out", type=Path, default=Path("docs/img/dashboard.png"), help="PNG to write")
    parser.add_argument("--job", default=DEFAULT_VARIABLES["job"], help="value of $job (a regex)")
    parser.add_argument("--endpoint", default=DEFAULT_VARIABLES["endpoint"], help="value of $endpoint")
    parser.add_argument(
        "--rate-interval", default=DEFAULT_VARIABLES["__rate_interval"], help="$__rate_interval"
    )
    parser.add_argument("--window", type=float, default=600.0, help="seconds of history to draw")
    parser.add_argument("--step", type=float, default=5.0, help="query step in seconds")
    args = parser.parse_args(argv)
    variables = {
        **DEFAULT_VARIABLES,
        "job": args.job,
        "endpoint": args.endpoint,
        "__rate_interval": args.rate_interval,
    }
    prometheus = Prometheus(args.prometheus)
    try:
        render(prometheus, args.out, variables, args.window, args.step)
    finally:
        prometheus.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
