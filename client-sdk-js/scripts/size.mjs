// Prints the min+gzip size of the core browser bundle; fails above the 8 KiB budget.
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

const BUDGET = 8192;
const file = new URL("../dist/pushrec.min.js", import.meta.url);
const min = readFileSync(file);
const gz = gzipSync(min, { level: 9 }).length;
console.log(`dist/pushrec.min.js: ${min.length} bytes min, ${gz} bytes min+gzip (budget ${BUDGET})`);
if (gz > BUDGET) {
  console.error(`core bundle is ${gz - BUDGET} bytes over budget`);
  process.exit(1);
}
