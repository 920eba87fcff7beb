// Bundles the SDK with esbuild: ESM entries (core + DOM helper) and minified browser bundles
// (IIFE globals `Pushrec` and `PushrecDom`). Type declarations come from `tsc` (npm run build).
import { build } from "esbuild";

const common = { bundle: true, target: "es2020", logLevel: "warning", legalComments: "none" };

await Promise.all([
  build({ ...common, entryPoints: ["src/index.ts", "src/dom.ts"], outdir: "dist", format: "esm" }),
  build({
    ...common,
    entryPoints: ["src/index.ts"],
    outfile: "dist/pushrec.min.js",
    format: "iife",
    globalName: "Pushrec",
    minify: true,
  }),
  build({
    ...common,
    entryPoints: ["src/dom.ts"],
    outfile: "dist/pushrec-dom.min.js",
    format: "iife",
    globalName: "PushrecDom",
    minify: true,
  }),
]);
