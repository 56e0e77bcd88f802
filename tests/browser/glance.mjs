// Headless Chromium (Debian's) against a console after a simulated campaign:
//   node glance.mjs BASE_URL TOKEN OUT_DIR WAVES
// Logs in and checks the pages an admin reads at a glance, taking a screenshot of each: the
// dashboard's chart of hosts per state over time (it must have data points) with the rate and
// the finish, the campaign page's bar per wave (WAVES of them, the first full), and a host's
// stage strip (DHCP to report reached, each with its time). Exits non-zero on the first failed
// check.
import { check, launch, watch } from "./common.mjs";
import { writeFileSync } from "node:fs";

const [base, token, out, waves] = process.argv.slice(2);
const browser = await launch();
try {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  const { external, errors } = watch(page, base);

  await page.goto(base + "/login");
  await page.fill("#token", token);
  await page.click("button[type=submit]");
  await page.waitForSelector("#hosts");

  // The chart: sampled while the campaign ran.
  const chart = await page.waitForSelector("#progress-chart", { timeout: 15000 });
  const points = Number(await chart.getAttribute("data-points"));
  check(points >= 3, `the chart of hosts per state has ${points} data points`);
  const bands = await page.$$eval("#progress-chart path.band", (ps) => ps.map((p) => p.getAttribute("d").length));
  check(bands.length === 4 && bands.every((n) => n > 10), `the chart draws 4 bands (done, in progress, waiting, attention)`);
  const box = await chart.boundingBox();
  check(box && box.width > 300 && box.height > 50, `the chart is visible (${box && Math.round(box.width)}x${box && Math.round(box.height)})`);
  const headline = await page.textContent("#progress-headline");
  check(/hosts a minute/.test(headline), `the rate and the finish are said: "${headline}"`);
  await page.screenshot({ path: `${out}/dashboard-chart.png`, fullPage: true });

  // The campaign page: a bar per wave.
  await page.goto(base + "/campaigns");
  const href = await page.getAttribute('table a[href^="/campaigns/"]', "href");
  await page.goto(base + href);
  const bars = await page.$$eval("#wave-bars .wavebar", (bs) => bs.map((b) => [
    b.querySelector(".track").getAttribute("aria-valuenow"), b.querySelector(".label").textContent]));
  check(bars.length === Number(waves), `the campaign page has a bar per wave: ${bars.length}`);
  check(bars[0][0] === "100" && /succeeded/.test(bars[0][1]), `the canary wave's bar is full: ${bars[0][1]}`);
  await page.screenshot({ path: `${out}/campaign-waves.png`, fullPage: true });

  // A host's stage strip.
  await page.goto(base + "/?state=recovered,remediated,rebooted");
  const hostHref = await page.getAttribute("#hosts tbody tr td.mono a", "href");
  await page.goto(base + hostHref);
  const stages = await page.$$eval("#stages .stage", (ss) => ss.map((s) => [
    s.querySelector(".name").textContent, s.className, s.querySelector(".took").textContent]));
  check(stages.length === 8, `the host page has the 8 stages: ${stages.map((s) => s[0]).join(", ")}`);
  const reached = stages.filter((s) => !s[1].includes("not-reached")).map((s) => s[0]);
  for (const want of ["DHCP", "boot loader", "kernel", "agent", "report"]) {
    check(reached.includes(want), `stage ${want} reached (${stages.find((s) => s[0] === want)[2]})`);
  }
  check(stages.filter((s) => s[1].includes(" reached")).every((s) => /s$|min$/.test(s[2])),
    "each stage passed shows how long it took");
  await page.screenshot({ path: `${out}/host-stages.png`, fullPage: true });

  check(external.length === 0, `no request left the server: ${external.join(" ")}`);
  check(errors.length === 0, `no script errors: ${errors.join("; ")}`);
  writeFileSync(`${out}/glance-ok`, "ok\n");
} finally {
  await browser.close();
}
