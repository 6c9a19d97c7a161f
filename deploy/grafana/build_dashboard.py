"""Generate the provisioned Grafana dashboard ``dashboards/saver-overview.json``.

The JSON is generated rather than hand-edited so that every panel gets the same datasource, template
variables, unit and description, and so that the queries live in one readable table. Re-run after an
edit (``python deploy/grafana/build_dashboard.py``); tests/deploy checks that the committed file is
up to date, that every query parses, and that it returns data from a real service.

The panels are built with Grafana's grafana-foundation-sdk (typed builders and enums generated from
Grafana's schema, checked by mypy; its grid layout replaces a hand-written one). It is pinned with ``==``
to a release of its `next` line, whose schemaVersion 41 is Grafana 12.1's. Two of its defaults are
overridden here: legends are hidden and rows get id 0.

Queries use Grafana's ``$job``, ``$endpoint`` and ``$__rate_interval``. Latency quantiles are always
``histogram_quantile`` over ``sum by (le, ...)`` of bucket rates: quantiles of the pooled distribution,
never sums or averages of per-pod quantiles.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common, dashboard, prometheus, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_model
from grafana_foundation_sdk.models import dashboard as dashboard_model
from grafana_foundation_sdk.models import prometheus as prometheus_model
from grafana_foundation_sdk.models.common import DataSourceRef

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "saver-overview.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'job=~"$job", endpoint=~"$endpoint"'  # label matchers every per-endpoint query starts with
RI = "$__rate_interval"


def _ratio(metric: str, numerator: str, by: str = "endpoint", where: str = "") -> str:
    """Share of ``metric`` increments matching ``numerator`` (among those matching ``where``); 0 (not
    absent) when none matched yet."""
    sel = f"{SEL}, {where}" if where else SEL
    total = f"sum by ({by}) (rate({metric}{{{sel}}}[{RI}]))"
    part = f"sum by ({by}) (rate({metric}{{{sel}, {numerator}}}[{RI}]))"
    return f"({part} or {total} * 0) / {total}"


def _quantile(q: float, metric: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{SEL}}}[{RI}])))"


# requests that left the decision to the gate: forced always/never traffic is not what calibration predicts
UNIT_ACTIVATION = _ratio("saver_gate_units_total", 'decision="activated"', where='mode="auto"')
CALIBRATED = f"max by (endpoint) (saver_gate_calibrated_coverage{{{SEL}}})"
DRIFT_FACTOR = 2  # SaverGateActivationDrift's `> 2` (deploy/prometheus/rules/saver-alerts.yaml)


@dataclass
class Panel:
    """One time-series (or table) panel; ``targets`` are (PromQL, legend) pairs."""

    title: str
    description: str
    unit: str
    targets: list[tuple[str, str]]
    width: int = 12
    kind: str = "timeseries"
    thresholds: list[float] = field(default_factory=list)  # drawn as dashed lines (SLOs, tolerances)
    max_value: float | None = None


ROWS: list[tuple[str, list[Panel]]] = [
    (
        "Gate: activation against calibration",
        [
            Panel(
                "Unit activation rate vs calibrated coverage",
                "Share of units (candidate spans / entity pairs) the gate sent to vision, next to the "
                "coverage measured on the calibration split. Under traffic like the calibration data the "
                "two agree; a lasting gap is drift (alert SaverGateActivationDrift). The axis scales to the "
                "data: a calibrated gate may activate well under 1 % of units.",
                "percentunit",
                [(UNIT_ACTIVATION, "{{endpoint}} live"), (CALIBRATED, "{{endpoint}} calibrated")],
                width=12,
            ),
            Panel(
                "Request activation rate",
                "Share of requests with at least one activated unit, i.e. requests that fetched images. "
                "The rest were answered from the text alone without any network or image work.",
                "percentunit",
                [
                    (
                        _ratio("saver_gate_requests_total", 'decision="activated"', where='mode="auto"'),
                        "{{endpoint}}",
                    )
                ],
                width=6,
                max_value=1.0,
            ),
            Panel(
                "Activation drift (live / calibrated)",
                "Unit activation rate divided by the calibrated rate: 1 = as calibrated, 2 = twice as many "
                "activations. A ratio, because calibrated rates are tiny (0.09% of spans for the shipped "
                "MNER model). The dashed lines are the alert's factor of 2 either way (0.5 and 2); the alert "
                "looks at 1 h and needs enough traffic, this panel at the rate interval, so it is noisier. "
                "A calibrated rate of 0 with any activation reads +Inf.",
                "none",
                [(f"{UNIT_ACTIVATION} / on (endpoint) {CALIBRATED}", "{{endpoint}}")],
                width=6,
                thresholds=[1 / DRIFT_FACTOR, DRIFT_FACTOR],
            ),
        ],
    ),
    (
        "Latency",
        [
            Panel(
                "Request latency P50 / P90 / P99",
                "Quantiles of the request duration (queueing and image fetching included) per endpoint, "
                "from the histogram pooled over all pods. Dashed: the 1 s P90 SLO.",
                "s",
                [
                    (_quantile(q, "saver_request_duration_seconds", "endpoint"), f"{{{{endpoint}}}} p{p}")
                    for q, p in ((0.5, 50), (0.9, 90), (0.99, 99))
                ],
                thresholds=[1.0],
            ),
            Panel(
                "P90 per stage",
                "90th percentile of each pipeline stage (queue, text_encode, gate, fetch, screen, select, "
                "detail, fuse, total). Vision stages only see activated requests.",
                "s",
                [
                    (
                        _quantile(0.9, "saver_stage_duration_seconds", "endpoint, stage"),
                        "{{endpoint}} {{stage}}",
                    )
                ],
            ),
        ],
    ),
    (
        "Traffic",
        [
            Panel(
                "Request rate by status",
                "Requests per second answered by each endpoint, by HTTP status.",
                "reqps",
                [
                    (
                        f"sum by (endpoint, status) (rate(saver_requests_total{{{SEL}}}[{RI}]))",
                        "{{endpoint}} {{status}}",
                    )
                ],
                width=8,
            ),
            Panel(
                "Error ratio (5xx)",
                "Share of requests answered with a 5xx status (alert SaverHighErrorRate above 5%). "
                "4xx (invalid input, 429 overload) are not counted as errors of the service.",
                "percentunit",
                [(_ratio("saver_requests_total", 'status=~"5.."'), "{{endpoint}}")],
                width=8,
                thresholds=[0.05],
            ),
            Panel(
                "In-flight requests",
                "Requests being served (queued or computing) per pod; the HorizontalPodAutoscaler keeps "
                "the average per pod near its target.",
                "short",
                [('sum by (instance) (saver_inflight_requests{job=~"$job"})', "{{instance}}")],
                width=8,
            ),
        ],
    ),
    (
        "Vision",
        [
            Panel(
                "Images per second: fetched / selected / cache hits",
                "Images downloaded, images detail-encoded for at least one unit, and images whose screen "
                "vector came from the URL-keyed cache, per second.",
                "ops",
                [
                    (
                        f"sum by (endpoint, outcome) (rate(saver_images_total{{{SEL}, "
                        f'outcome=~"fetched|selected|cache_hit"}}[{RI}]))',
                        "{{endpoint}} {{outcome}}",
                    )
                ],
                width=8,
            ),
            Panel(
                "Image failures and skips",
                "Images that failed to fetch or decode, and images skipped (over the budget or not needed).",
                "ops",
                [
                    (
                        f"sum by (endpoint, outcome) (rate(saver_images_total{{{SEL}, "
                        f'outcome=~"failed|skipped"}}[{RI}]))',
                        "{{endpoint}} {{outcome}}",
                    )
                ],
                width=8,
            ),
            Panel(
                "Vision fallbacks by reason",
                "Requests whose activated units answered text-only, by reason (budget_exceeded, "
                "fetch_failed:<reason>, no_images).",
                "reqps",
                [
                    (
                        f"sum by (endpoint, reason) (rate(saver_vision_fallbacks_total{{{SEL}}}[{RI}]))",
                        "{{endpoint}} {{reason}}",
                    )
                ],
                width=8,
            ),
        ],
    ),
    (
        "Model",
        [
            Panel(
                "Loaded models",
                "Identity of the served models: task, name, version, whether trained, gate threshold.",
                "none",
                [('max by (task, name, version, trained, threshold) (saver_model_info{job=~"$job"})', "")],
                width=24,
                kind="table",
            ),
        ],
    ),
]


def _timeseries(panel: Panel) -> timeseries.Panel:
    builder = (
        timeseries.Panel()
        .legend(
            common.VizLegendOptions()
            .show_legend(True)  # the SDK's default legend is hidden
            .display_mode(common_model.LegendDisplayMode.LIST)
            .placement(common_model.LegendPlacement.BOTTOM)
        )
        .tooltip(common.VizTooltipOptions().mode(common_model.TooltipDisplayMode.MULTI))
    )
    if not panel.thresholds or min(panel.thresholds) >= 0:
        builder.min(0)
    if panel.max_value is not None:
        builder.max(panel.max_value)
    if panel.thresholds:
        steps = [dashboard_model.Threshold(color="green", value=None)]
        steps += [dashboard_model.Threshold(color="red", value=t) for t in panel.thresholds]
        builder.thresholds_style(
            common.GraphThresholdsStyleConfig().mode(common_model.GraphThresholdsStyleMode.DASHED)
        )
        builder.thresholds(
            dashboard.ThresholdsConfig().mode(dashboard_model.ThresholdsMode.ABSOLUTE).steps(steps)
        )
    return builder


def _panel(panel: Panel, panel_id: int) -> timeseries.Panel | table.Panel:
    builder: timeseries.Panel | table.Panel = (
        table.Panel().show_header(True) if panel.kind == "table" else _timeseries(panel)
    )
    for i, (expr, legend) in enumerate(panel.targets):
        query = prometheus.Dataquery().datasource(DATASOURCE).ref_id(chr(ord("A") + i)).expr(expr)
        query.legend_format(legend or "__auto")
        if panel.kind == "table":
            query.format(prometheus_model.PromQueryFormat.TABLE).instant()  # range off too
        builder.with_target(query)
    return (
        builder.id(panel_id)
        .title(panel.title)
        .description(panel.description)
        .datasource(DATASOURCE)
        .unit(panel.unit)
        .height(8)
        .span(panel.width)
    )


def _variable(name: str, label: str, query: str) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(dashboard_model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .include_all(True)
        .all_value(".+")
        .multi(True)
        .current(dashboard_model.VariableOption(selected=True, text=["All"], value=["$__all"]))
        .sort(dashboard_model.VariableSort.ALPHABETICAL_ASC)
    )


def build_dashboard() -> dict[str, Any]:
    builder = (
        dashboard.Dashboard("SAVER service")
        .uid("saver-overview")
        .description("Selective vision evidence: gate activation vs calibration, latency, traffic, images.")
        .tags(["saver", "inference"])
        .timezone("browser")
        .readonly()
        .tooltip(dashboard_model.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .version(1)
        .time("now-1h", "now")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(_variable("job", "Job", "label_values(saver_requests_total, job)"))
        .with_variable(
            _variable("endpoint", "Endpoint", 'label_values(saver_requests_total{job=~"$job"}, endpoint)')
        )
    )
    next_id = 1
    for row_title, row_panels in ROWS:
        builder.with_row(dashboard.Row(row_title).id(next_id))  # the SDK gives every row id 0
        next_id += 1
        for panel in row_panels:
            builder.with_panel(_panel(panel, next_id))
            next_id += 1
    built: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    return built


def render() -> str:
    return json.dumps(build_dashboard(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    OUTPUT.write_text(render(), encoding="utf-8")
    sys.stderr.write(f"wrote {OUTPUT}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
