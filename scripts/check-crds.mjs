// Validates the Prometheus Operator objects of k8s/monitoring/ (written as a JSON array
// by scripts/check-k8s.py) against the schemas of the operator's own CRDs, as packaged
// by @kubernetes-models/prometheus-operator (pinned in package.json): field types,
// enums, formats and required fields, which the structural check does not know.
//
//   node scripts/check-crds.mjs FILE.json
//
// Before the real objects, each validator is shown a copy with one known mistake and
// must refuse it, so that a check that has stopped checking fails loudly.

import { readFileSync } from "node:fs";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const MODELS = { PodMonitor, PrometheusRule };

// One mistake per kind that the CRD schema refuses and a YAML author could make.
const BROKEN = {
  // `port` is a string (a named port); a number belongs in `targetPort`.
  PodMonitor: (doc) => { doc.spec.podMetricsEndpoints[0].port = 8080; },
  // `for` is a duration string, not a number of seconds.
  PrometheusRule: (doc) => { doc.spec.groups[0].rules.find((r) => r.alert).for = 300; },
};

function problems(doc) {
  const Model = MODELS[doc.kind];
  if (!Model) return [`no CRD schema for kind ${doc.kind}`];
  try {
    new Model(doc).validate();
    return [];
  } catch (err) {
    return [String(err.message ?? err)];
  }
}

const file = process.argv[2];
if (!file) {
  console.error("usage: node scripts/check-crds.mjs FILE.json");
  process.exit(2);
}
const docs = JSON.parse(readFileSync(file, "utf8"));
let failed = 0;
for (const doc of docs) {
  const where = `k8s/monitoring/ ${doc.kind}/${doc.metadata?.name ?? "?"}`;
  const broken = structuredClone(doc);
  BROKEN[doc.kind]?.(broken);
  if (problems(broken).length === 0) {
    console.error(`${where}: the CRD schema check accepted a known mistake; it is not checking`);
    failed++;
  }
  for (const p of problems(doc)) {
    console.error(`${where}: ${p}`);
    failed++;
  }
}
const kinds = docs.map((d) => d.kind).sort().join(", ");
if (failed) {
  console.error(`==> CRD schema check: ${failed} problem(s)`);
  process.exit(1);
}
console.log(`==> CRD schema check passed: ${kinds} (Prometheus Operator schemas)`);
