// Builds the dashboard into dist/: one ES module (the app with MapLibre GL JS and uPlot), one
// stylesheet, the page, and MapLibre's worker, which the app loads from beside itself. The API
// binary embeds dist/ when it is compiled.
import * as esbuild from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";

const out = "dist";
rmSync(out, { recursive: true, force: true });
mkdirSync(out);
await esbuild.build({
  entryPoints: ["src/app.js", "src/app.css"],
  bundle: true,
  format: "esm",
  minify: true,
  target: "es2022",
  outdir: out,
  legalComments: "linked",
  logLevel: "warning",
});
copyFileSync("src/index.html", `${out}/index.html`);
copyFileSync("node_modules/maplibre-gl/dist/maplibre-gl-worker.mjs", `${out}/maplibre-gl-worker.mjs`);
