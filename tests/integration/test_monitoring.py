"""deploy/monitoring: the Grafana dashboard, the Prometheus alert rules, and how the
compose stack and Kubernetes ship them.

* every metric name that a panel, a dashboard variable or an alert expression reads is
  one that Easel exports: checked against live scrapes of a real web, worker and
  webhook sender (the GPU series, absent on this CPU worker, against the worker's GPU
  collector fed fake devices); Prometheus' own ``up`` is the one other name allowed;
* the rules pass ``promtool check rules``, and so do the dashboard's queries (as
  recording rules, Grafana's variables substituted), where promtool is installed
  (Debian's ``prometheus`` package; required in CI); a structure check runs regardless;
* the compose services mount the files where their configs say, and Kubernetes gets
  the same files as ConfigMaps and the rules as a PrometheusRule (rendered offline by
  ``kubectl kustomize`` and validated like tests/integration/test_k8s.py does).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bench.processes import ROOT, Stack, easel, free_port, wait_for
from easel.worker import gpu_metrics
from tests.factories import make_stack, parse_metrics, value
from tests.webhook_receiver import Receiver

MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "easel-dashboard.json"
RULES = MONITORING / "easel-rules.yml"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
K8S = ROOT / "deploy" / "k8s"
PROMETHEUS_OWN = {"up"}  # series Prometheus itself writes for every target
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")

# -- PromQL metric names ---------------------------------------------------------------------

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_TOKEN = re.compile(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?[a-zA-Z]*|\.\d+|([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_KEYWORDS |= {"and", "or", "unless", "inf", "nan", "atan2", "start", "end"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what remains once label values,
    matchers, ranges, grouping label lists, numbers and durations, keywords, and
    functions or aggregations (a name before ``(``) are taken out."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for token in _TOKEN.finditer(text):
        name, call = token.group(1), token.group(2)
        if name and not call and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("easel_queue_depth", {"easel_queue_depth"}),
        ('sum by (le) (rate(a_bucket{x="b{c}", y=~"$model"}[$__rate_interval])) offset 1h', {"a_bucket"}),
        ("max(x) by (model) / on (model) group_left (gpu) y > bool 0.5", {"x", "y"}),
        ("histogram_quantile(0.95, sum without (instance) (rate(z[5m:30s])))", {"z"}),
        ('absent(up{job=~"easel-web.*"}) or vector(1e3) and ns:rec:rate5m', {"up", "ns:rec:rate5m"}),
        ("deriv(q[10m]) >= 0 unless on (model) (w == 0) and sum(rate(x[1m])) * 900 > .5", {"q", "w", "x"}),
        ('{__name__="odd"}', set()),  # a selector by __name__ alone: not used by Easel's files
    ],
)
def test_metric_names_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


# -- the files -------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def rules() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return data


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target."""
    return [
        (f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"])
        for panel in panels(dashboard())
        for target in panel.get("targets", [])
    ]


def variable_metrics() -> list[tuple[str, str]]:
    """(where, metric) of each dashboard variable's ``label_values(metric, label)``."""
    found = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*(\w+)\s*\)", query)
        assert match, f"variable {variable['name']}: {query!r} is not label_values(metric, label)"
        found.append((f"variable {variable['name']}", match[1]))
    return found


def alert_queries() -> list[tuple[str, str]]:
    return [
        (f"alert {rule['alert']}", rule["expr"]) for group in rules()["groups"] for rule in group["rules"]
    ]


def every_name_used() -> dict[str, set[str]]:
    """metric name -> where it is used (panels, variables, alerts)."""
    used: dict[str, set[str]] = {}
    for where, expr in [*dashboard_queries(), *alert_queries()]:
        names = metric_names(expr)
        assert names, f"{where}: reads no metric: {expr}"
        for name in names:
            used.setdefault(name, set()).add(where)
    for where, name in variable_metrics():
        used.setdefault(name, set()).add(where)
    return used


def test_the_dashboard_covers_what_operators_watch() -> None:
    board = dashboard()
    assert board["uid"] == "easel-fleet" and board["title"] == "Easel fleet"
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid) and grid["x"] + grid["w"] <= 24, panel["title"]
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    used = every_name_used()
    # The list: queue depth and wait per model, images/s, job latency percentiles,
    # batch sizes, failures by code, workers alive, model loads, GPU memory and utilisation
    # per worker, webhook delivery outcomes.
    for name in (
        "easel_queue_depth",
        "easel_job_queue_wait_seconds_bucket",
        "easel_worker_batch_size_sum",
        "easel_job_run_seconds_bucket",
        "easel_worker_batch_jobs_sum",
        "easel_worker_jobs_failed_total",
        "easel_workers",
        "easel_worker_model_loads_total",
        gpu_metrics.ALLOCATED,
        gpu_metrics.RESERVED,
        gpu_metrics.TOTAL,
        gpu_metrics.UTILIZATION,
        "easel_webhook_deliveries_total",
    ):
        assert any(where.startswith("panel") for where in used.get(name, ())), f"no panel shows {name}"
    titles = [panel["title"] for panel in panels(board)]
    assert any("p50, p95, p99" in title for title in titles)


def test_the_alert_rules_cover_the_failures_that_need_a_person() -> None:
    """The structure promtool would check, and what each alert reads; runs everywhere."""
    groups = rules()["groups"]
    assert [group["name"] for group in groups] == ["easel"]
    alerts = {rule["alert"]: rule for group in groups for rule in group["rules"]}
    for name, rule in alerts.items():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), name
    reads = {name: metric_names(rule["expr"]) for name, rule in alerts.items()}
    assert {"easel_queue_depth", "easel_workers"} <= reads["EaselQueueWithoutWorker"]
    assert reads["EaselJobsFailing"] == {"easel_jobs_finished_total"}
    assert reads["EaselWorkersLost"] == {"easel_workers_lost"}
    assert reads["EaselWebhooksFailing"] == {"easel_webhook_deliveries_total"}
    assert reads["EaselDependencyUnready"] == {"easel_ready"}
    assert reads["EaselDatabaseUnready"] == {"easel_worker_database_ready"}
    assert reads["EaselWebDown"] == {"up"}


def promtool() -> str:
    """The promtool binary; without it the test skips on a laptop and fails in CI."""
    found = shutil.which("promtool")
    if found is None:
        message = "promtool (Debian's `prometheus` package) is needed to check the rules"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def run_promtool(*args: str) -> str:
    done = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_promtool_checks_the_rules() -> None:
    out = run_promtool("check", "rules", str(RULES))
    count = sum(len(group["rules"]) for group in rules()["groups"])
    assert f"SUCCESS: {count} rules found" in out


def grafana_to_promql(expr: str) -> str:
    """A panel's query as Prometheus gets it: Grafana's interval variables become a
    duration, other variables (inside label values) a match-everything regex."""
    expr = re.sub(r"\$__(?:rate_interval|interval|range)\b", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    recorded = [
        {"record": f"easel_dashboard:query_{index}", "expr": grafana_to_promql(expr)}
        for index, (_, expr) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    assert f"SUCCESS: {len(recorded)} rules found" in run_promtool("check", "rules", str(path))


def test_promtool_checks_the_compose_prometheus_config(tmp_path: Path) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/easel-rules.yml"]
    config["rule_files"] = [str(RULES)]  # where compose mounts it, here
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    run_promtool("check", "config", str(path))


# -- compose -------------------------------------------------------------------------------


def test_compose_provisions_grafana_and_prometheus() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]

    def mounts(service: str) -> dict[str, Path]:
        """container path -> host file, each of which exists."""
        found = {}
        for volume in services[service]["volumes"]:
            source, target, *_ = volume.split(":")
            if source.startswith("./"):
                assert (ROOT / source).is_file(), source
                found[target] = ROOT / source
            else:
                assert source in compose["volumes"], source
        return found

    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == ["monitoring"] and grafana["profiles"] == ["monitoring"]
    assert prometheus["ports"] == ["127.0.0.1:9090:9090"] and grafana["ports"] == ["127.0.0.1:3000:3000"]
    prom_files = mounts("prometheus")
    config_path = next(
        arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file=")
    )
    assert prom_files[config_path] == PROMETHEUS_CONFIG
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert [prom_files[path] for path in config["rule_files"]] == [RULES]

    # Prometheus scrapes each Easel service on the port it serves metrics on.
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["easel-web"]["static_configs"][0]["targets"] == ["web:8000"]
    assert services["web"]["environment"]["EASEL_PORT"] == "8000"
    worker_sd = jobs["easel-worker"]["dns_sd_configs"][0]
    assert worker_sd["names"] == ["worker"] and worker_sd["type"] == "A"  # every replica
    assert str(worker_sd["port"]) == services["worker"]["environment"]["EASEL_METRICS_PORT"]
    assert services["worker"]["expose"] == ["9100"]
    assert jobs["easel-webhooks"]["static_configs"][0]["targets"] == ["webhooks:9100"]
    assert services["webhooks"]["environment"]["EASEL_METRICS_PORT"] == "9100"
    assert services["webhooks"]["expose"] == ["9100"]
    # The alert rules match the job names (up{job=~"easel-web.*"}, ...).
    for rule in rules()["groups"][0]["rules"]:
        for job in re.findall(r'job=~"([^"]+)"', rule["expr"]):
            assert any(re.fullmatch(job, name) for name in jobs), (rule["alert"], job)

    files = mounts("grafana")
    datasources = yaml.safe_load(files["/etc/grafana/provisioning/datasources/easel.yaml"].read_text())
    source = datasources["datasources"][0]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090" and "prometheus" in grafana["depends_on"]
    providers = yaml.safe_load(files["/etc/grafana/provisioning/dashboards/easel.yaml"].read_text())
    folder = providers["providers"][0]["options"]["path"]
    assert files[f"{folder}/easel-dashboard.json"] == DASHBOARD
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert files[home] == DASHBOARD


# -- Kubernetes ------------------------------------------------------------------------------


def kustomize(folder: Path) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        message = "kubectl (with its built-in kustomize) is needed to render deploy/k8s"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def test_kubernetes_gets_the_dashboard_and_rules_as_configmaps() -> None:
    objects = kustomize(K8S / "monitoring")
    maps = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "ConfigMap"}
    assert set(maps) == {"easel-grafana-dashboard", "easel-prometheus-rules"} and len(objects) == 2
    for obj in objects:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    board = maps["easel-grafana-dashboard"]
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"  # Grafana's sidecar picks it up
    assert board["data"] == {"easel-dashboard.json": DASHBOARD.read_text()}
    assert maps["easel-prometheus-rules"]["data"] == {"easel-rules.yml": RULES.read_text()}


def test_the_prometheus_rule_holds_the_same_rules() -> None:
    objects = kustomize(K8S / "monitoring-operator")
    assert sorted(obj["kind"] for obj in objects) == ["ConfigMap", "ConfigMap", "PrometheusRule"]
    rule = next(obj for obj in objects if obj["kind"] == "PrometheusRule")
    # The operator's CRD: monitoring.coreos.com/v1 PrometheusRule, spec.groups[].rules[].
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"} and set(rule["spec"]) == {"groups"}
    assert rule["metadata"]["name"] == "easel" and "release" in rule["metadata"]["labels"]
    assert rule["spec"] == rules()


# -- live: every name read is exported -------------------------------------------------------


def exported_names(text: str) -> set[str]:
    """The series names an exposition offers, from its families' types (so a labelled
    family with no sample yet counts) and its samples."""
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_count", "_sum"],
            "summary": ["", "_count", "_sum"],
        }.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
        names |= {sample.name for sample in family.samples}
    return names


class FakeCuda:
    """One GPU, for the GPU collector's exposition."""

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return 1

    def memory_allocated(self, device: int) -> int:
        return 1

    def memory_reserved(self, device: int) -> int:
        return 2

    def get_device_properties(self, device: int) -> Any:
        return type("Props", (), {"name": "GPU", "total_memory": 3})()


class FakeNvml:
    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return type("Rates", (), {"gpu": 50})()

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return type("Memory", (), {"used": 2})()


def gpu_exposition() -> str:
    registry = CollectorRegistry()
    registry.register(gpu_metrics.GpuCollector(FakeCuda(), FakeNvml()))
    return generate_latest(registry).decode()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def live_stack(
    tmp_path: Path,
    tiny_model: Path,
    service_env: dict[str, str],
    fresh_postgres_url: str,
    own_redis_url: str,
) -> Iterator[tuple[Stack, int, int]]:
    """web, one worker and the webhook sender, the last two serving metrics on the
    ports given, on a database and broker of this test alone."""
    env = {
        **service_env,
        "EASEL_DATABASE_URL": fresh_postgres_url,
        "EASEL_BROKER_URL": own_redis_url,
        "EASEL_STORAGE_URL": service_env["EASEL_STORAGE_URL"] + "-monitoring",
        "EASEL_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on this machine
    }
    stack = make_stack(tmp_path / "home", tiny_model, env)
    stack.create_key("monitoring")
    worker_port, hooks_port = free_port(), free_port()
    try:
        stack.start_web()
        stack.start_worker(extra_env={"EASEL_METRICS_PORT": str(worker_port)})
        hooks = stack.start("webhooks", easel("webhooks"), {"EASEL_METRICS_PORT": str(hooks_port)})
        wait_for(lambda: " ready." in hooks.log(), 60, "the webhook sender")
        yield stack, worker_port, hooks_port
    finally:
        stack.stop()


@pytest.mark.slow
def test_every_metric_the_dashboard_and_alerts_read_is_exported(
    live_stack: tuple[Stack, int, int], receiver: Receiver
) -> None:
    stack, worker_port, hooks_port = live_stack
    job = stack.submit(prompt="dash", width=64, height=64, steps=2, webhook_url=receiver.url + "/dash")
    assert stack.wait(job["id"])["status"] == "succeeded", stack.logs()
    wait_for(lambda: receiver.on("/dash"), 30, "the webhook")

    def scrape(url: str) -> str:
        response = requests.get(url, timeout=10)
        assert response.status_code == 200, response.text
        return response.text

    web = scrape(stack.base_url + "/metrics")
    worker = scrape(f"http://127.0.0.1:{worker_port}/metrics")
    hooks_url = f"http://127.0.0.1:{hooks_port}/metrics"
    delivered = 'easel_webhook_deliveries_total{event="completed",outcome="delivered"} 1.0'
    hooks = wait_for(
        lambda: (text := scrape(hooks_url)) and delivered in text and text, 10, "the delivery count"
    )

    # This worker runs on the CPU: its GPU series are absent, not zero.
    assert not any(name.startswith("easel_worker_gpu_") for name in exported_names(worker))
    gpu = exported_names(gpu_exposition())
    assert gpu == set(gpu_metrics.NAMES)

    exported = exported_names(web) | exported_names(worker) | exported_names(hooks) | gpu
    used = every_name_used()
    missing = {name: sorted(where) for name, where in used.items() if name not in exported | PROMETHEUS_OWN}
    assert not missing, f"read but not exported: {missing}"

    # And the series the alerts turn on hold what they say.
    s = parse_metrics(web)
    assert value(s, "easel_ready", dependency="database") == 1
    assert value(s, "easel_ready", dependency="broker") == 1
    assert value(s, "easel_ready", dependency="storage") == 1
    assert value(s, "easel_workers_lost") == 0
    assert value(parse_metrics(worker), "easel_worker_database_ready") == 1
    assert "easel_worker_database_ready" not in hooks  # no heartbeat there: absent, not 0
    assert value(parse_metrics(worker), "easel_worker_batch_size_sum", model="tiny-sd") == 1
