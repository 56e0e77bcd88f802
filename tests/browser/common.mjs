// What the browser tests share: the check that ends the run on the first failure, Debian's
// Chromium launched headless and offline, and the watch for requests leaving the server and
// script errors on a page.
import { chromium } from "playwright-core";

export const check = (ok, what) => {
  if (!ok) {
    console.error("FAILED: " + what);
    process.exit(1);
  }
  console.log("ok: " + what);
};

export const launch = () => chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--ignore-certificate-errors",
  ],
});

// Collects, for `page`, every request to somewhere other than `base` and every script error.
export const watch = (page, base) => {
  const seen = { external: [], errors: [] };
  page.on("request", (r) => { if (!r.url().startsWith(base)) seen.external.push(r.url()); });
  page.on("pageerror", (e) => seen.errors.push(String(e)));
  return seen;
};
