"""deploy/monitoring checked offline: every alert rule and dashboard query is parsed by a real
PromQL parser (promql-parser, the Rust parser's Python binding; ``promtool`` is not available
offline), and every metric, label and phase it names is one that ``/metrics`` really exports.

The exported names come from a real ``rotator serve`` daemon (in this process) that has run a
pass over the vendor emulator and refused one bad reload, scraped over HTTP.

kubernetes-validate knows no custom resources, so the PrometheusRule's structure is checked
here, and its groups must equal the plain rules file's.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

import httpx
import promql_parser
import pytest
import yaml

from rotator.engine.model import Phase
from rotator.engine.runner import Outcome
from rotator.sandbox.emulator import EmulatorServer
from rotator.scheduler import Daemon, serve_http
from rotator.spec import Settings
from tests.e2e_helpers import ADMIN_ENV, write_spec

REPO = Path(__file__).resolve().parent.parent
MONITORING = REPO / "deploy" / "monitoring"
RULES = MONITORING / "rotator-rules.yaml"
OPERATOR_RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"

# Metric names the rules use before the code exporting them has landed on this branch; a name
# here is allowed missing from /metrics (once exported, it is checked like any other).
PENDING = {"rotator_config_reload_failures_total"}
# Label values the code gives; checked against what the rules and dashboard match on.
LABEL_VALUES = {
    "phase": set(get_args(Phase)),
    "result": {"completed"} | set(get_args(Outcome)) - {"busy"},
}
# Grafana's own variables, replaced by a value of their kind before parsing.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$key": "payments"}
REQUIRED_ALERTS = {
    "RotatorKeyHeld",
    "RotatorKeyFailed",
    "RotatorKeyOverdue",
    "RotatorNoSuccessfulPass",
    "RotatorConfigReloadFailed",
}


# --------------------------------------------------------------------------- what /metrics exports


def exported_from(text: str) -> dict[str, set[str]]:
    """Sample (and declared) metric name -> the label names its samples carry."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            out.setdefault(name, set())
            if kind == "counter":  # the text format declares counters without their _total
                out.setdefault(f"{name}_total", set())
            continue
        if not line or line.startswith("#"):
            continue
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s", line)
        assert match, line
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(3) or ""))
        out.setdefault(match.group(1), set()).update(labels)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """What a `rotator serve` daemon's /metrics exports after one pass and one refused reload."""
    tmp = tmp_path_factory.mktemp("serve")
    with EmulatorServer() as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv(ADMIN_ENV, server.emulator.bootstrap_workspace_key())
        path = write_spec(tmp, server, targets=1)
        daemon = Daemon(path, settings=Settings(retry_initial=0.01, probe_timeout=5), tick=3600)
        http = serve_http(daemon, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{http.server_address[1]}/metrics"
        try:
            daemon.start()  # the first tick passes every key at once
            text = ""
            settled = re.compile(r'rotator_key_phase\{key="payments",phase="\w+"\} 1\.0')
            for _ in range(300):
                text = httpx.get(url, timeout=5).text
                if settled.search(text):
                    break
                time.sleep(0.1)
            assert settled.search(text), text
            good = path.read_text()
            path.write_text(good.replace("kind: agent", "kind: robot"))
            assert not daemon.reload()
            path.write_text(good)
            text = httpx.get(url, timeout=5).text
        finally:
            daemon.stop()
            http.shutdown()
            http.server_close()
    return exported_from(text)


# --------------------------------------------------------------------------- PromQL


def selectors(node: Any) -> Iterator[promql_parser.VectorSelector]:
    """Every vector selector in a parsed expression (fails on a node kind it does not know)."""
    if isinstance(node, promql_parser.VectorSelector):
        yield node
    elif isinstance(node, promql_parser.MatrixSelector):
        yield node.vector_selector
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from selectors(node.lhs)
        yield from selectors(node.rhs)
    elif isinstance(node, promql_parser.AggregateExpr):
        yield from selectors(node.expr)
        if node.param is not None:
            yield from selectors(node.param)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from selectors(arg)
    elif isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr):
        yield from selectors(node.expr)
    elif not isinstance(node, promql_parser.NumberLiteral | promql_parser.StringLiteral):
        raise AssertionError(f"unknown PromQL node {type(node).__name__}: {node}")


def problems(expr: str, exported: dict[str, set[str]]) -> list[str]:
    """What is wrong with ``expr``: a parse error, or a metric, label or value /metrics lacks."""
    try:
        tree = promql_parser.parse(expr)
    except Exception as exc:  # noqa: BLE001 - the binding raises plain exceptions
        return [f"does not parse: {exc}"]
    out = []
    found = list(selectors(tree))
    if not found:
        out.append("selects no metric")
    for sel in found:
        name = sel.name
        if name is None or not name.startswith("rotator_"):
            out.append(f"selects {name!r}, not a rotator metric")
            continue
        if name not in exported:
            if name not in PENDING:
                out.append(f"{name} is not exported by /metrics")
            continue
        for m in sel.matchers.matchers:
            if m.name == "__name__":
                continue
            if m.name not in exported[name]:
                out.append(f"{name} has no label {m.name!r} (it has {sorted(exported[name])})")
            known = LABEL_VALUES.get(m.name)
            values = m.value.split("|") if "Re" in str(m.op) else [m.value]
            if known is not None and not set(values) <= known:
                out.append(f"{name}{{{m.name}}} never takes {sorted(set(values) - known)}")
    return out


def rule_groups(path: Path) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(path.read_text())["groups"]
    return groups


def test_the_checker_catches_bad_expressions(exported: dict[str, set[str]]) -> None:
    """Control: a syntax error, an unknown metric, label and phase, a type error are each caught."""
    assert problems('max by (key) (rotator_key_phase{phase="held"}) == 1', exported) == []
    assert problems("max by (key) (rotator_key_phase{phase=", exported)[0].startswith("does not parse")
    assert problems("rotator_key_phase_typo == 1", exported) == [
        "rotator_key_phase_typo is not exported by /metrics"
    ]
    assert "has no label 'colour'" in problems('rotator_key_phase{colour="red"}', exported)[0]
    assert "never takes ['stuck']" in problems('rotator_key_phase{phase=~"held|stuck"}', exported)[0]
    assert problems("rate(rotator_key_age_seconds)", exported)[0].startswith("does not parse")


def test_exported_names_cover_the_metrics_module(exported: dict[str, set[str]]) -> None:
    """The scrape saw every metric of rotator/metrics.py with its labels (the test's own check)."""
    assert exported["rotator_key_phase"] == {"key", "phase"}
    assert exported["rotator_key_max_age_seconds"] == {"key"}
    assert exported["rotator_key_age_seconds"] == {"key"}
    assert "le" in exported["rotator_pass_duration_seconds_bucket"]
    assert {"key", "result"} <= exported["rotator_rotations_total"]


def test_alert_rules_parse_and_use_only_exported_metrics(exported: dict[str, set[str]]) -> None:
    """Every alert's expr parses and names metrics, labels and values /metrics really has."""
    groups = rule_groups(RULES)
    alerts = {}
    for group in groups:
        assert set(group) <= {"name", "interval", "rules", "limit"}, group.keys()
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
            assert rule["alert"] not in alerts, f"duplicate alert {rule['alert']}"
            alerts[rule["alert"]] = rule
            assert problems(rule["expr"], exported) == [], rule["alert"]
            if "for" in rule:
                assert promql_parser.parse_duration(rule["for"]) > timedelta(0)
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert set(alerts) == REQUIRED_ALERTS
    stale = re.search(r"> (\d+)", alerts["RotatorNoSuccessfulPass"]["expr"])
    assert stale is not None and int(stale.group(1)) == 2 * 3600


def test_prometheusrule_matches_the_rules_file() -> None:
    """The PrometheusRule (a CRD kubernetes-validate cannot check) has the operator's shape
    and exactly the plain file's groups."""
    docs = list(yaml.safe_load_all(OPERATOR_RULE.read_text()))
    assert len(docs) == 1
    rule = docs[0]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    assert rule["metadata"]["name"] == "rotator"
    namespace = yaml.safe_load((REPO / "deploy/k8s/namespace.yaml").read_text())["metadata"]["name"]
    assert rule["metadata"]["namespace"] == namespace
    assert all(isinstance(v, str) for v in rule["metadata"]["labels"].values())
    assert set(rule["spec"]) == {"groups"}
    groups = rule["spec"]["groups"]
    assert groups == rule_groups(RULES)
    # what the operator's admission checks: unique group names, string labels and annotations,
    # one of alert/record with an expr, Prometheus durations
    assert len({g["name"] for g in groups}) == len(groups)
    duration = re.compile(r"0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?")
    for group in groups:
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r) and isinstance(r["expr"], str)
            assert duration.fullmatch(r.get("for", "0")), r
            for section in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in r.get(section, {}).values()), (r, section)


def _exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_dashboard_queries_parse_and_use_only_exported_metrics(exported: dict[str, set[str]]) -> None:
    """Every panel query parses (Grafana's variables replaced) and uses exported metrics."""
    dashboard = json.loads(DASHBOARD.read_text())
    checked = 0
    for title, expr in _exprs(dashboard):
        concrete = expr
        for var, value in GRAFANA_VARS.items():
            concrete = concrete.replace(var, value)
        assert "$" not in concrete, f"{title}: unknown variable in {expr}"
        assert problems(concrete, exported) == [], f"{title}: {expr}"
        checked += 1
    assert checked >= 10
    key_var = next(v for v in dashboard["templating"]["list"] if v["name"] == "key")
    metric = re.fullmatch(r"label_values\((\w+), key\)", key_var["definition"])
    assert metric is not None and "key" in exported[metric.group(1)]


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    """Age against max_age, phase per key, rotations per day, pass duration, held and failed keys."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [e for _, e in _exprs(dashboard)]

    def some(*needles: str) -> bool:
        return any(all(n in e for n in needles) for e in exprs)

    assert some("rotator_key_age_seconds", "/", "rotator_key_max_age_seconds")
    assert some("max by (key, phase) (rotator_key_phase", "== 1")
    assert some("increase(rotator_rotations_total", 'result="completed"', "[1d]")
    assert some("histogram_quantile(0.95", "rotator_pass_duration_seconds_bucket")
    assert some('phase=~"held|failed"')


def test_dashboard_is_importable_as_is() -> None:
    """One data source variable used by every panel and query; unique ids; panels on the
    24-column grid without overlapping."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert "datasource" in names
    ds = {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], int] = {}
    for p in dashboard["panels"]:
        assert p["datasource"] == ds and all(t["datasource"] == ds for t in p["targets"]), p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]
