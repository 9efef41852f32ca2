// Runs the Khronos glTF Validator on each file given; prints one JSON line per file:
// {"file", "errors", "warnings", "infos", "hints", "messages": [...]}. Exit 0 when all ran.
// Needs the npm package gltf-validator (`make validators` installs it into .tools/).
const fs = require("fs");
const validator = require("gltf-validator");

async function main(files) {
  for (const file of files) {
    const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(file)), { maxIssues: 100 });
    const issues = report.issues;
    const line = {
      file,
      errors: issues.numErrors,
      warnings: issues.numWarnings,
      infos: issues.numInfos,
      hints: issues.numHints,
      messages: issues.messages.map((m) => `${m.code} ${m.pointer || ""}: ${m.message}`),
    };
    console.log(JSON.stringify(line));
  }
}

main(process.argv.slice(2)).catch((error) => {
  console.error(`validate_gltf: ${error}`);
  process.exit(1);
});
