// Validates KEDA ScaledObjects (JSON, one file each, named on the command line) against KEDA's
// CRD schema, as compiled by the npm package @kubernetes-models/keda; resolved from the folder
// FRONTDESK_NODE_MODULES (a node_modules folder). Prints "ok" per valid file; exits 1 at the first
// invalid one, with the schema's complaint.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import path from "node:path";

const modules = process.env.FRONTDESK_NODE_MODULES;
const entry = path.join(modules, "@kubernetes-models", "keda", "keda.sh", "v1alpha1", "ScaledObject.js");
const { ScaledObject } = await import(pathToFileURL(entry).href);
for (const file of process.argv.slice(2)) {
  try {
    new ScaledObject(JSON.parse(readFileSync(file, "utf8"))).validate();
    console.log("ok");
  } catch (error) {
    console.log(`invalid: ${error.message}`);
    process.exit(1);
  }
}
