// Validates KEDA objects (JSON lines on stdin) against KEDA's CRD schemas as packaged by
// @kubernetes-models/keda (deploy/install-k8s-tools.sh puts it in .cache/k8s); prints one line per
// object, "ok <kind> <name>" or "invalid <kind> <name>: <why>", and exits 1 if any is invalid.
const { ScaledObject, TriggerAuthentication } = require("@kubernetes-models/keda/keda.sh/v1alpha1");
const kinds = { ScaledObject, TriggerAuthentication };
let failed = false;
const lines = require("fs").readFileSync(0, "utf8").split("\n").filter(Boolean);
for (const line of lines) {
  const doc = JSON.parse(line);
  const name = `${doc.kind} ${doc.metadata && doc.metadata.name}`;
  try {
    new kinds[doc.kind](doc).validate();
    console.log(`ok ${name}`);
  } catch (error) {
    failed = true;
    console.log(`invalid ${name}: ${error.message.replace(/\n/g, " ")}`);
  }
}
process.exit(failed ? 1 : 0);
