// Builds dist/, which the API serves at /try/ and /console/ (api/pages.py): each page's
// script bundled with socket.io-client into one ES module, the stylesheet, and each page's
// HTML: for the apps, the shell both share (src/page.html) around the page's own app
// (src/<page>-app.html); the operators' console has a page of its own (src/console.html).
// Nothing in dist/ loads anything from elsewhere at run time.
import { copyFileSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as esbuild from "esbuild";

const PAGES = ["customer", "driver"];

rmSync("dist", { recursive: true, force: true });
await esbuild.build({
  entryPoints: [...PAGES.map((page) => `src/${page}.js`), "src/console.js", "src/style.css"],
  bundle: true,
  format: "esm",
  target: "es2020",
  outdir: "dist",
  sourcemap: true,
  minify: true,
  logLevel: "warning",
});
const shell = readFileSync("src/page.html", "utf8");
for (const page of PAGES) {
  const app = readFileSync(`src/${page}-app.html`, "utf8").trimEnd();
  writeFileSync(`dist/${page}.html`, shell.replaceAll("{{page}}", page).replace("{{app}}", app));
}
copyFileSync("src/console.html", "dist/console.html");
