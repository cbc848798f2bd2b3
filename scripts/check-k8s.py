#!/usr/bin/env python3
"""Offline checks of the deployment files: k8s/, k8s/monitoring/ and docker-compose.yml.

Run by scripts/check-k8s.sh, which provisions the pinned kubernetes-validate in a venv.

- The base (k8s/) and the monitoring kustomization are rendered with `kubectl
  kustomize` when kubectl exists; otherwise every file they list is checked on its
  own, and the script says that rendering was skipped.
- Every built-in object, rendered or loose (the migration Job, the example Secret, the
  prometheus-adapter ConfigMap), is validated in strict mode (unknown fields are
  errors) against the Kubernetes schemas of kubernetes-validate, for each version in
  KUBE_VERSIONS. Every object must have a metadata.name: `kubectl apply` needs one.
- PodMonitor and PrometheusRule are Prometheus Operator CRDs, which kubernetes-validate
  has no schemas for: they get the structural check below (known fields, required
  fields, types, durations, balanced PromQL), and are written as JSON to the file
  named by $SURGE_CRD_DUMP, which scripts/check-crds.mjs validates against the CRDs'
  own schemas (CRD schemas allow unknown fields; the known-field check here does not).
- Cross-checks: selectors match the pod labels, the HPA's Pods metric is one the
  adapter serves, ConfigMap/Secret references point at objects that exist (or at the
  Secret the README has the operator create), the PodMonitor scrapes a named port.
- docker-compose.yml: structure (services, ports, environment, dependencies), and
  `nginx -t` of its nginx.conf when nginx is installed; scripts/check-k8s.sh runs
  `docker compose config` too where Docker has the compose plugin.
- The Dockerfile builds with --locked, copies everything cargo needs into its build
  stage (cargo loads the workspace from exactly those files), and runs as a numeric
  non-root user.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import yaml
from kubernetes_validate import utils as kv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Oldest Kubernetes still commonly run, the kubectl of the development machines, and
# the newest the validator knows (catches APIs that were removed).
KUBE_VERSIONS = ["1.29", "1.32", kv.latest_version()]
NAMESPACE = "surge"
# Created by hand (k8s/README.md, "Create the secret"), so never rendered.
EXTERNAL_SECRETS = {"surge-secrets"}

errors = []


def fail(where, msg):
    errors.append(f"{where}: {msg}")


def load_all(text, where):
    try:
        return [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as e:
        fail(where, f"not YAML: {e}")
        return []


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def render(directory):
    """The objects of a kustomization: rendered by kubectl, or its files one by one."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run(
            [kubectl, "kustomize", os.path.join(ROOT, directory)],
            capture_output=True, text=True, check=False)
        if out.returncode != 0:
            fail(directory, f"kubectl kustomize failed: {out.stderr.strip()}")
            return [], True
        return load_all(out.stdout, f"{directory} (rendered)"), True
    print(f"==> kubectl is not installed: rendering of {directory}/ skipped; "
          "validating each of its files on its own", file=sys.stderr)
    kust = yaml.safe_load(read(f"{directory}/kustomization.yaml"))
    docs = []
    for res in kust.get("resources", []):
        docs += load_all(read(f"{directory}/{res}"), f"{directory}/{res}")
    return docs, False


def name_of(doc):
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name', '?')}"


def validate_builtin(doc, where):
    meta = doc.get("metadata") or {}
    if not meta.get("name"):
        fail(where, f"{doc.get('kind')} has no metadata.name (generateName alone "
                    "cannot be applied)")
        return
    for version in KUBE_VERSIONS:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            fail(where, f"{name_of(doc)} against Kubernetes {version}: {path}: {e.message}")
            return
        except kv.SchemaNotFoundError as e:
            fail(where, f"{name_of(doc)}: {e.message}")
            return


# ---- Prometheus Operator objects: structural checks ---------------------------------

DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def check_keys(obj, where, required, optional):
    if not isinstance(obj, dict):
        fail(where, f"expected a mapping, got {type(obj).__name__}")
        return False
    for k in required:
        if k not in obj:
            fail(where, f"missing `{k}`")
    for k in obj:
        if k not in required and k not in optional:
            fail(where, f"unknown field `{k}`")
    return True


def check_promql(expr, where):
    if not isinstance(expr, str) or not expr.strip():
        fail(where, "empty expression")
        return
    stack, quote = [], None
    pairs = {")": "(", "]": "[", "}": "{"}
    for c in expr:
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            stack.append(c)
        elif c in ")]}":
            if not stack or stack.pop() != pairs[c]:
                fail(where, f"unbalanced `{c}` in {expr!r}")
                return
    if stack or quote:
        fail(where, f"unclosed brackets or string in {expr!r}")


def check_podmonitor(doc, where, pod_labels, port_names):
    check_keys(doc, where, ["apiVersion", "kind", "metadata", "spec"], [])
    spec = doc.get("spec") or {}
    check_keys(spec, f"{where} spec", ["selector", "podMetricsEndpoints"],
               ["namespaceSelector", "jobLabel", "podTargetLabels", "sampleLimit"])
    match = (spec.get("selector") or {}).get("matchLabels") or {}
    if not match or any(pod_labels.get(k) != v for k, v in match.items()):
        fail(where, f"selector {match} does not select the server pods {pod_labels}")
    for i, ep in enumerate(spec.get("podMetricsEndpoints") or []):
        w = f"{where} podMetricsEndpoints[{i}]"
        check_keys(ep, w, ["port", "path"],
                   ["interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings",
                    "metricRelabelings"])
        if ep.get("port") not in port_names:
            fail(w, f"port {ep.get('port')!r} is not a named container port {port_names}")
        if ep.get("path") != "/metrics":
            fail(w, "path is not /metrics")
        for key in ("interval", "scrapeTimeout"):
            if key in ep and not DURATION.match(str(ep[key])):
                fail(w, f"{key} {ep[key]!r} is not a duration")
    if not spec.get("podMetricsEndpoints"):
        fail(where, "no podMetricsEndpoints")


def check_prometheusrule(doc, where):
    check_keys(doc, where, ["apiVersion", "kind", "metadata", "spec"], [])
    groups = (doc.get("spec") or {}).get("groups")
    if not groups:
        fail(where, "no rule groups")
        return set()
    alerts = set()
    for g in groups:
        gw = f"{where} group {g.get('name')!r}"
        check_keys(g, gw, ["name", "rules"], ["interval", "limit"])
        for r in g.get("rules") or []:
            rw = f"{gw} rule {r.get('alert') or r.get('record')!r}"
            if "alert" in r:
                check_keys(r, rw, ["alert", "expr", "labels", "annotations"],
                           ["for", "keep_firing_for"])
                if r.get("alert") in alerts:
                    fail(rw, "duplicate alert name")
                alerts.add(r.get("alert"))
                if (r.get("labels") or {}).get("severity") not in ("critical", "warning", "info"):
                    fail(rw, "labels.severity must be critical, warning or info")
                ann = r.get("annotations") or {}
                for key in ("summary", "description"):
                    if not isinstance(ann.get(key), str) or not ann[key].strip():
                        fail(rw, f"annotations.{key} is missing")
            else:
                check_keys(r, rw, ["record", "expr"], ["labels"])
            for key in ("for", "keep_firing_for"):
                if key in r and not DURATION.match(str(r[key])):
                    fail(rw, f"`{key}` {r[key]!r} is not a duration")
            check_promql(r.get("expr"), rw)
    return alerts


def check_adapter(doc, where):
    """The prometheus-adapter rules; returns the custom metric names they serve."""
    config = (doc.get("data") or {}).get("config.yaml")
    if not isinstance(config, str):
        fail(where, "no data.config.yaml")
        return set()
    rules = (yaml.safe_load(config) or {}).get("rules") or []
    names = set()
    for i, rule in enumerate(rules):
        rw = f"{where} rules[{i}]"
        check_keys(rule, rw, ["seriesQuery", "resources", "name", "metricsQuery"],
                   ["seriesFilters"])
        check_promql(rule.get("seriesQuery"), rw)
        overrides = (rule.get("resources") or {}).get("overrides") or {}
        for label in ("namespace", "pod"):
            if (overrides.get(label) or {}).get("resource") != label:
                fail(rw, f"resources.overrides must map the `{label}` label to {label}s")
        mq = rule.get("metricsQuery") or ""
        for part in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            if part not in mq:
                fail(rw, f"metricsQuery lacks {part}")
        name = rule.get("name") or {}
        series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule.get("seriesQuery") or "")
        if not name.get("as") or not series or not re.search(name.get("matches") or "$^",
                                                             series.group(0)):
            fail(rw, "name.matches must match the series' metric and name.as must be set")
        names.add(name.get("as"))
    return names


# ---- the base --------------------------------------------------------------------------

def pod_specs(doc):
    spec = doc.get("spec") or {}
    if doc.get("kind") in ("Deployment", "Job"):
        yield spec.get("template", {}).get("spec", {})
    elif doc.get("kind") == "CronJob":
        yield spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})


def check_references(docs, where, targets=None):
    """Checks the pods of `targets` (default: `docs`) against the objects of `docs`."""
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), {})[(d.get("metadata") or {}).get("name")] = d
    configmaps = set(by_kind.get("ConfigMap", {}))
    secrets = set(by_kind.get("Secret", {})) | EXTERNAL_SECRETS
    for d in docs if targets is None else targets:
        for ps in pod_specs(d):
            for c in ps.get("containers", []):
                w = f"{where} {name_of(d)} container {c.get('name')}"
                image = c.get("image", "")
                if not image.startswith("surge:") and "/surge:" not in image:
                    fail(w, f"image {image!r} is not the surge image")
                for ef in c.get("envFrom", []):
                    if "configMapRef" in ef and ef["configMapRef"]["name"] not in configmaps:
                        fail(w, f"envFrom ConfigMap {ef['configMapRef']['name']} does not exist")
                for e in c.get("env", []):
                    src = e.get("valueFrom") or {}
                    if "configMapKeyRef" in src:
                        ref = src["configMapKeyRef"]
                        cm = by_kind.get("ConfigMap", {}).get(ref["name"])
                        if cm is None or ref["key"] not in (cm.get("data") or {}):
                            fail(w, f"env {e['name']}: ConfigMap key {ref['name']}/{ref['key']} "
                                    "does not exist")
                    if "secretKeyRef" in src and src["secretKeyRef"]["name"] not in secrets:
                        fail(w, f"env {e['name']}: Secret {src['secretKeyRef']['name']} is unknown")
                sc = c.get("securityContext") or {}
                if sc.get("allowPrivilegeEscalation") is not False or not sc.get("runAsNonRoot"):
                    fail(w, "must run as non-root without privilege escalation")
    return by_kind


def check_base(docs, rendered):
    by_kind = check_references(docs, "k8s/")
    deploy = by_kind.get("Deployment", {}).get("surge")
    if deploy is None:
        fail("k8s/", "no Deployment surge")
        return {}, set()
    tmpl = deploy["spec"]["template"]
    pod_labels = tmpl["metadata"]["labels"]
    ports = {p.get("name") for c in tmpl["spec"]["containers"] for p in c.get("ports", [])}
    if deploy["spec"]["selector"]["matchLabels"] != {
            k: pod_labels[k] for k in deploy["spec"]["selector"]["matchLabels"]
            if k in pod_labels}:
        fail("k8s/ Deployment/surge", "selector does not match the pod template")
    for kind in ("Service", "PodDisruptionBudget"):
        for name, d in by_kind.get(kind, {}).items():
            sel = d["spec"]["selector"]
            sel = sel.get("matchLabels", sel) if kind != "Service" else sel
            if any(pod_labels.get(k) != v for k, v in sel.items()):
                fail(f"k8s/ {kind}/{name}", f"selector {sel} misses the server pods")
    hpa = by_kind.get("HorizontalPodAutoscaler", {}).get("surge")
    if hpa is None or hpa["spec"]["scaleTargetRef"]["name"] != "surge":
        fail("k8s/ HorizontalPodAutoscaler/surge", "missing, or not scaling Deployment surge")
    if rendered:
        for d in docs:
            ns = (d.get("metadata") or {}).get("namespace")
            if d.get("kind") != "Namespace" and ns != NAMESPACE:
                fail("k8s/ (rendered)", f"{name_of(d)} is in namespace {ns!r}, not {NAMESPACE}")
    return {"labels": pod_labels, "hpa": hpa}, ports


def hpa_pod_metrics(hpa):
    return {m["pods"]["metric"]["name"] for m in (hpa or {}).get("spec", {}).get("metrics", [])
            if m.get("type") == "Pods"}


# ---- docker-compose.yml -----------------------------------------------------------------

def check_compose():
    where = "docker-compose.yml"
    doc = yaml.safe_load(read(where)) or {}
    services = doc.get("services") or {}
    expected = {"postgres", "redis", "migrate", "surge-1", "surge-2", "surge-3", "nginx"}
    missing = expected - set(services)
    if missing:
        fail(where, f"services missing: {sorted(missing)}")
        return
    nodes = ["surge-1", "surge-2", "surge-3"]
    keys = set()
    for n in nodes:
        s = services[n]
        env = s.get("environment") or {}
        if not isinstance(env, dict):
            fail(where, f"{n}: environment must be a mapping")
            continue
        for var in ("DATABASE_URL", "REDIS_URL", "SURGE_SESSION_KEY", "SURGE_NODE_ID",
                    "SURGE_BIND"):
            if var not in env:
                fail(where, f"{n}: environment lacks {var}")
        keys.add(env.get("SURGE_SESSION_KEY"))
        if env.get("SURGE_NODE_ID") != n:
            fail(where, f"{n}: SURGE_NODE_ID must be unique (the service name)")
        dep = s.get("depends_on") or {}
        if (dep.get("migrate") or {}).get("condition") != "service_completed_successfully":
            fail(where, f"{n}: must start after migrate completed")
        if "ports" in s:
            fail(where, f"{n}: nodes are reached through nginx only; no published ports")
        if "healthcheck" not in s:
            fail(where, f"{n}: no healthcheck (nginx waits for healthy nodes)")
    if len(keys) != 1:
        fail(where, "every node must share one SURGE_SESSION_KEY")
    migrate = services["migrate"]
    if migrate.get("command") not in (["migrate"], "migrate"):
        fail(where, "migrate: command must be `migrate`")
    if migrate.get("restart", "no") != "no":
        fail(where, "migrate is one-shot: restart must be \"no\"")
    ng = services["nginx"]
    ports = [str(p) for p in ng.get("ports") or []]
    if not any(p.endswith(":80") for p in ports):
        fail(where, f"nginx publishes no port to its :80 ({ports})")
    ng_deps = ng.get("depends_on") or {}
    for n in nodes:
        if (ng_deps.get(n) or {}).get("condition") != "service_healthy":
            fail(where, f"nginx must wait for {n} to be healthy")
    conf_mounts = [v for v in ng.get("volumes") or [] if "nginx.conf" in str(v)]
    if not conf_mounts:
        fail(where, "nginx mounts no nginx.conf")
    else:
        src = str(conf_mounts[0]).split(":")[0]
        conf = read(os.path.normpath(src))
        for n in nodes:
            if f"server {n}:8080" not in conf:
                fail(src, f"upstream lacks {n}:8080")
        for needed in ("proxy_set_header Upgrade", "hash $cookie_surge_session consistent"):
            if needed not in conf:
                fail(src, f"lacks `{needed}`")
        nginx_test(src, conf, nodes)
    for name in ("postgres", "redis"):
        if "healthcheck" not in services[name]:
            fail(where, f"{name}: no healthcheck")


def nginx_test(src, conf, nodes):
    """`nginx -t` on the compose nginx.conf, when nginx is installed (make test installs
    it). nginx resolves upstream names as it loads, so the nodes become loopback."""
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/bin/nginx") if os.access(p, os.X_OK)), None)
    if not nginx:
        print(f"==> nginx is not installed: `nginx -t` of {src} skipped", file=sys.stderr)
        return
    for n in nodes:
        conf = conf.replace(f"server {n}:8080", "server 127.0.0.1:8080")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "nginx.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write(conf)
        out = subprocess.run([nginx, "-t", "-q", "-p", tmp, "-c", path],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            fail(src, f"nginx -t: {out.stderr.strip()}")


def check_dockerfile():
    where = "k8s/Dockerfile"
    text = read(where)
    # The builder stage's build context: what its COPY lines bring in.
    builder = text.split("\nFROM ")[1] if "\nFROM " in text else text
    copied = set()
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", builder, re.M):
        copied |= {os.path.normpath(p) for p in line.split()[:-1]}
    # Everything cargo reads to build the binary: the root manifest, lock and build
    # script, every workspace member, the declared benches, and what the binary embeds.
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        manifest = tomllib.load(f)
    needed = {"Cargo.toml", "Cargo.lock", "build.rs", "src", "migrations", "static"}
    needed |= {os.path.normpath(m) for m in manifest["workspace"]["members"] if m != "."}
    if manifest.get("bench"):
        needed.add("benches")
    for path in sorted(needed - copied):
        fail(where, f"the build stage does not COPY {path}")
    cargo = shutil.which("cargo")
    if cargo and not needed - copied:
        with tempfile.TemporaryDirectory() as tmp:
            for path in copied:
                src = os.path.join(ROOT, path)
                dst = os.path.join(tmp, path)
                if os.path.isdir(src):
                    shutil.copytree(src, dst)
                elif os.path.exists(src):
                    shutil.copy(src, dst)
                else:
                    fail(where, f"COPY {path}: no such file")
            out = subprocess.run([cargo, "metadata", "--no-deps", "--format-version", "1"],
                                 cwd=tmp, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                fail(where, "cargo cannot load the workspace from what the Dockerfile "
                            f"copies: {out.stderr.strip()}")
    if not re.search(r"cargo build [^\n]*--locked", text):
        fail(where, "cargo build without --locked")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not users or users[-1].split(":")[0] in ("0", "root") or not users[-1].split(":")[0].isdigit():
        fail(where, f"the final USER must be numeric and not root (found {users})")


def main():
    base, base_rendered = render("k8s")
    mon, mon_rendered = render("k8s/monitoring")
    loose = {
        "k8s/migrate-job.yaml": load_all(read("k8s/migrate-job.yaml"), "k8s/migrate-job.yaml"),
        "k8s/secret.example.yaml": load_all(read("k8s/secret.example.yaml"),
                                            "k8s/secret.example.yaml"),
        "k8s/monitoring/prometheus-adapter.yaml": load_all(
            read("k8s/monitoring/prometheus-adapter.yaml"),
            "k8s/monitoring/prometheus-adapter.yaml"),
    }
    builtin = [("k8s/", d) for d in base] + [
        ("k8s/monitoring/", d) for d in mon if d.get("apiVersion") == "v1"]
    for path, docs in loose.items():
        builtin += [(path, d) for d in docs]
    for where, doc in builtin:
        validate_builtin(doc, where)

    info, ports = check_base(base, base_rendered)
    # The migration Job must fit the rendered base: same references, same namespace.
    check_references(base, "k8s/migrate-job.yaml", loose["k8s/migrate-job.yaml"])

    crds = [d for d in mon if d.get("apiVersion", "").startswith("monitoring.coreos.com/")]
    kinds = sorted(d.get("kind") for d in crds)
    if kinds != ["PodMonitor", "PrometheusRule"]:
        fail("k8s/monitoring/", f"expected one PodMonitor and one PrometheusRule, got {kinds}")
    alerts = set()
    for d in crds:
        where = f"k8s/monitoring/ {name_of(d)}"
        if d.get("apiVersion") != "monitoring.coreos.com/v1":
            fail(where, "apiVersion must be monitoring.coreos.com/v1")
        if d.get("kind") == "PodMonitor":
            check_podmonitor(d, where, info.get("labels") or {}, ports)
        elif d.get("kind") == "PrometheusRule":
            alerts |= check_prometheusrule(d, where)
    dump = os.environ.get("SURGE_CRD_DUMP")
    if dump:
        with open(dump, "w", encoding="utf-8") as f:
            json.dump(crds, f)
    for needed in ("SurgeStockCheckFailed", "SurgeJournalCommitSlow", "SurgeShardShedding",
                   "SurgeBusDisconnected", "SurgeDbPoolSaturated"):
        if needed not in alerts:
            fail("k8s/monitoring/prometheusrule.yaml", f"alert {needed} is missing")
    cronjobs = [d for d in base if d.get("kind") == "CronJob"]
    if not any("check" in str(c["spec"]["jobTemplate"]["spec"]["template"]["spec"]
                              ["containers"][0].get("args")) for c in cronjobs):
        fail("k8s/", "no CronJob runs `surge check`")

    dashboard = json.loads(read("k8s/monitoring/grafana-dashboard.json"))
    if mon_rendered:
        cms = [d for d in mon if d.get("kind") == "ConfigMap"]
        if not cms or json.loads(cms[0]["data"]["surge.json"]) != dashboard:
            fail("k8s/monitoring/", "the dashboard ConfigMap does not hold grafana-dashboard.json")
    if not dashboard.get("uid") or not dashboard.get("panels"):
        fail("k8s/monitoring/grafana-dashboard.json", "needs a uid and panels")

    served = set()
    for d in loose["k8s/monitoring/prometheus-adapter.yaml"]:
        served |= check_adapter(d, "k8s/monitoring/prometheus-adapter.yaml")
    wanted = hpa_pod_metrics(info.get("hpa"))
    if not wanted:
        fail("k8s/hpa.yaml", "no Pods metric (WebSockets per pod)")
    for m in sorted(wanted - served):
        fail("k8s/hpa.yaml", f"Pods metric {m} is not served by the prometheus-adapter rule")

    check_compose()
    check_dockerfile()

    counted = len(builtin)
    if errors:
        for e in errors:
            print(f"==> k8s check: {e}", file=sys.stderr)
        print(f"==> k8s check: {len(errors)} problem(s)", file=sys.stderr)
        return 1
    print(f"==> k8s check: {counted} objects valid (strict, Kubernetes "
          f"{', '.join(KUBE_VERSIONS)}), {len(crds)} Prometheus Operator objects structurally "
          f"sound ({len(alerts)} alerts), HPA metrics {sorted(wanted)} served by the adapter "
          "rule, docker-compose.yml and the Dockerfile as expected"
          + ("" if base_rendered and mon_rendered else " (kustomize rendering skipped)"),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
