// Copy the chart library from node_modules into the Python package, so the daemon
// serves it itself (no CDN at run time). Run after `npm ci`: `npm run vendor`.
// The copied files are committed; their license travels with them.
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const src = join(here, "node_modules", "uplot");
const dest = join(here, "..", "costwatch", "daemon", "static", "vendor");
const files = {
  "dist/uPlot.iife.min.js": "uPlot.iife.min.js",
  "dist/uPlot.min.css": "uPlot.min.css",
  "LICENSE": "uPlot.LICENSE.txt",
};

mkdirSync(dest, { recursive: true });
for (const [from, to] of Object.entries(files)) {
  copyFileSync(join(src, from), join(dest, to));
  console.log(`vendored ${from} -> costwatch/daemon/static/vendor/${to}`);
}
const { version, license } = JSON.parse(readFileSync(join(src, "package.json"), "utf8"));
console.log(`uPlot ${version} (${license})`);
