// The Khronos glTF-Validator over GLB files: node validate.cjs NODE_MODULES FILE... prints one JSON
// report per file (one line each: {"file", "numErrors", "numWarnings", "messages"}). Exit 0 when
// every file has no error, 1 otherwise, 2 on a usage error. Used by tests/ and bench/.
"use strict";
const fs = require("fs");
const path = require("path");
const [modules, ...files] = process.argv.slice(2);
if (!modules || !files.length) {
  console.error("usage: node validate.cjs NODE_MODULES FILE...");
  process.exit(2);
}
const validator = require(path.join(modules, "gltf-validator"));

(async () => {
  let failed = false;
  for (const file of files) {
    const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(file)), {
      uri: path.basename(file),
      maxIssues: 200,
    });
    const issues = report.issues;
    failed = failed || issues.numErrors > 0;
    console.log(
      JSON.stringify({
        file,
        numErrors: issues.numErrors,
        numWarnings: issues.numWarnings,
        messages: issues.messages,
        extensionsUsed: (report.info && report.info.extensionsUsed) || [],
      })
    );
  }
  process.exit(failed ? 1 : 0);
})().catch((error) => {
  console.error(String(error && error.stack ? error.stack : error));
  process.exit(2);
});
