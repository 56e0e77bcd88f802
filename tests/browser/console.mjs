// Headless Chromium (Debian's) against a running unbrick console:
//   node console.mjs BASE_URL TOKEN MAC OUT_DIR BOOT_BASE_URL
// BASE_URL is the console over HTTPS (its certificate is the server's own, not trusted here);
// BOOT_BASE_URL the plain-HTTP listener firmware uses.
// Logs in, watches MAC's row change state live (no reload) while this script makes the host
// network-boot (it fetches the host's iPXE script, as iPXE would), runs a bulk action on it, and
// downloads the CSV export. Prints what it saw; exits non-zero on the first failed check.
import { check, launch, watch } from "./common.mjs";
import { readFileSync, writeFileSync } from "node:fs";

const [base, token, mac, out, bootBase] = process.argv.slice(2);
const browser = await launch();
try {
  const ctx = await browser.newContext({ acceptDownloads: true, ignoreHTTPSErrors: true });
  const page = await ctx.newPage();
  const { external, errors } = watch(page, base);

  // Login.
  await page.goto(base + "/");
  check(page.url().endsWith("/login"), "the console sends an anonymous visitor to the login page");
  await page.fill("#token", "ubk_wrongwrongwrongwrongwrongwrong12");
  await page.click("button[type=submit]");
  check((await page.textContent(".error")).includes("unknown or revoked"), "a wrong token is refused with a reason");
  await page.fill("#token", token);
  await page.click("button[type=submit]");
  await page.waitForSelector("#hosts");
  check(page.url() === base + "/", "logged in with the token");
  const cookies = await ctx.cookies();
  const session = cookies.find((c) => c.name === "__Host-unbrick_session");
  check(session && session.secure && session.httpOnly && session.sameSite === "Strict" && session.path === "/",
    "the session cookie is __Host-, Secure, HttpOnly, SameSite=Strict: " + JSON.stringify(cookies.map((c) => c.name)));
  // The first-run panel: hosts are imported, no campaign exists yet, so it names that step.
  const firstRun = await page.textContent("#first-run");
  check(firstRun.includes("Start a campaign, canaries first") && !firstRun.includes("Make the machines network-boot"),
    "the first-run panel names the step left (a campaign), not the ones done (hosts)");
  await page.screenshot({ path: `${out}/console-first-run.png`, fullPage: true });
  await page.waitForFunction(() => document.querySelector("#live").textContent === "live", null, { timeout: 10000 });
  check(true, "the live event stream is connected");

  const row = `tr[data-mac="${mac}"]`;
  const before = await page.textContent(`${row} [data-state]`);
  const doneBefore = await page.textContent("#total-count");
  check(before === "unknown", `host ${mac} is listed as unknown (imported, never booted): ${before}`);
  // A marker that a reload would wipe.
  await page.evaluate(() => { window.__noReload = 1; });

  // The machine network-boots: iPXE fetches its script.
  const t0 = Date.now();
  const r = await fetch(`${bootBase}/boot/${mac}.ipxe`);
  check(r.ok, `the boot script was served (${r.status})`);
  await page.waitForFunction(
    (sel) => { const s = document.querySelector(sel); return s && s.textContent !== "unknown"; },
    `${row} [data-state]`, { timeout: 10000 });
  const after = await page.textContent(`${row} [data-state]`);
  const ms = Date.now() - t0;
  check(["seen", "booting"].includes(after), `the row changed to ${after} live, ${ms} ms after the boot`);
  check(await page.evaluate(() => window.__noReload === 1), "without reloading the page");
  await page.waitForFunction((n) => document.querySelector("#total-count").textContent === n, doneBefore);
  // The counts follow live too: no host is left "unknown".
  await page.waitForFunction(() => document.querySelector('[data-count="unknown"]').textContent === "0", null, { timeout: 5000 });
  check(true, "the counts by state updated live");
  await page.screenshot({ path: `${out}/console-live.png`, fullPage: true });

  // Bulk action: select the host and skip it.
  await page.check(`${row} input[name=mac]`);
  check((await page.textContent("#selected-count")) === "1", "one host selected");
  await page.selectOption("#bulk-action", "skip");
  await Promise.all([page.waitForNavigation(), page.click("#bulk-run")]);
  const summary = await page.textContent("#result-summary");
  check(summary.includes("skip: 1 done, 0 refused"), `bulk action ran: ${summary}`);
  await page.screenshot({ path: `${out}/console-bulk.png`, fullPage: true });

  // Host page: the timeline shows the boot and the admin action.
  await page.goto(`${base}/hosts/${mac}`);
  const timeline = await page.textContent("#timeline");
  check(timeline.includes("skipped") && (timeline.includes("iPXE script") || timeline.includes("payload")),
        "the host page's timeline has the boot and the skip");

  // Export.
  await page.goto(base + "/");
  const [dl] = await Promise.all([page.waitForEvent("download"), page.click("#export-csv")]);
  const path = `${out}/export.csv`;
  await dl.saveAs(path);
  const csv = readFileSync(path, "utf8");
  check(csv.startsWith("mac,hostname,site,tags,state") && csv.includes(mac), `the CSV export downloaded (${csv.length} bytes) and lists ${mac}`);
  check(external.length === 0, `no request left the server (offline-safe): ${external.join(" ")}`);
  check(errors.length === 0, `no script errors: ${errors.join("; ")}`);
  writeFileSync(`${out}/browser-ok`, "ok\n");
} finally {
  await browser.close();
}
