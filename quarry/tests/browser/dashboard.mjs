// The dashboard in a real browser: Debian's chromium driven by playwright-core, against a
// `quarry serve` that `quarry mine` is mining on regtest (quarry/tests/dashboard.rs starts
// both, then runs this). Every check throws on failure; the exit code says which way it went.
//
//   node dashboard.mjs <base url> <miner address> <worker> <artifact dir>
//
// Environment: CHROMIUM (default /usr/bin/chromium).

import { chromium } from "playwright-core";
import { createRequire } from "node:module";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const [base, address, worker, artifacts] = process.argv.slice(2);
if (!base || !address || !worker || !artifacts) {
  console.error("usage: node dashboard.mjs <base url> <miner address> <worker> <artifact dir>");
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });
const axePath = createRequire(import.meta.url).resolve("axe-core/axe.min.js");
/** The overview must stay under this many bytes on the wire (HTML, CSS, JS, icon). */
const PAGE_BUDGET = 300 * 1024;
const report = { pages: {} };

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // The machine's network is closed: Chromium's own background traffic would only fail.
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});

/** axe-core on the current page: serious and critical violations fail the run. */
async function accessibility(page, name) {
  await page.addScriptTag({ path: axePath });
  const result = await page.evaluate(async () =>
    // eslint-disable-next-line no-undef
    await axe.run(document, { resultTypes: ["violations"] }));
  const violations = result.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length,
    targets: v.nodes.slice(0, 3).map((n) => n.target.join(" ")),
  }));
  report.pages[name] = { ...(report.pages[name] || {}), violations };
  const serious = violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  check(serious.length === 0, `${name}: accessibility violations ${JSON.stringify(serious, null, 1)}`);
}

async function shot(page, name) {
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
}

try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const scriptErrors = [];
  page.on("pageerror", (e) => scriptErrors.push(e.message));

  // --- Overview: its weight on the wire, measured by the browser.
  const sizes = [];
  page.on("requestfinished", async (request) => {
    if (request.url().includes("/api/events")) return; // the live stream never ends
    const s = await request.sizes();
    sizes.push({ url: request.url(), bytes: s.responseBodySize + s.responseHeadersSize });
  });
  let navigations = 0;
  page.on("framenavigated", (frame) => { if (frame === page.mainFrame()) navigations += 1; });
  await page.goto(base + "/", { waitUntil: "load" });
  await page.waitForTimeout(500);
  const transferred = sizes.reduce((sum, s) => sum + s.bytes, 0);
  report.pages.overview = { transferred_bytes: transferred, requests: sizes.slice() };
  check(transferred > 0 && transferred < PAGE_BUDGET, `overview transferred ${transferred} B (budget ${PAGE_BUDGET})`);

  const hashrate = Number(await page.getAttribute('[data-testid="pool-hashrate"]', "data-value"));
  report.pages.overview.hashrate = hashrate;
  check(hashrate > 0, `overview hashrate is ${hashrate}`);
  const firstBlock = await page.getAttribute('[data-testid="overview-blocks"] tbody tr', "data-hash");
  check(firstBlock && firstBlock.length === 64, `overview lists a found block (got ${firstBlock})`);
  const v1 = await page.textContent('[data-testid="connect-v1"]');
  check(v1 && v1.startsWith("stratum+tcp://"), `overview shows the V1 URL (got ${v1})`);
  await shot(page, "overview");
  await accessibility(page, "overview");

  // --- Live: a new block appears without a reload.
  await page.waitForFunction(() => document.getElementById("live")?.textContent === "Live", null, { timeout: 15000 });
  await page.evaluate(() => { window.__sameDocument = true; });
  await page.waitForFunction(
    (before) => {
      const row = document.querySelector('[data-testid="overview-blocks"] tbody tr');
      return row && row.dataset.hash !== before;
    },
    firstBlock,
    { timeout: 60000, polling: 250 },
  );
  const newBlock = await page.getAttribute('[data-testid="overview-blocks"] tbody tr', "data-hash");
  check(await page.evaluate(() => window.__sameDocument === true), "the page was reloaded");
  check(navigations === 1, `the page navigated ${navigations} times`);
  report.pages.overview.live = { before: firstBlock, after: newBlock };
  await shot(page, "overview-live");

  // --- On a phone: nothing wider than the screen.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true });
  const small = await phone.newPage();
  await small.goto(base + "/", { waitUntil: "load" });
  const overflow = await small.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `overview is ${overflow} px wider than a phone`);
  await shot(small, "overview-phone");
  await phone.close();

  // --- The miner page lists the worker with its best share.
  await page.goto(`${base}/miners/${encodeURIComponent(address)}`, { waitUntil: "load" });
  const row = page.locator(`[data-testid="workers"] tr[data-worker="${worker}"]`);
  check(await row.count() === 1, `miner page lists ${worker}`);
  const best = Number(await row.locator('[data-testid="best-share"]').getAttribute("data-value"));
  report.pages.miner = { best_share: best };
  check(best > 0, `best share of ${worker} is ${best}`);
  check(Number(await page.getAttribute('[data-testid="miner-hashrate"]', "data-value")) > 0, "miner hashrate");
  await shot(page, "miner");
  await accessibility(page, "miner");

  // --- Blocks and payments.
  await page.goto(base + "/blocks", { waitUntil: "load" });
  check(await page.locator('[data-testid="blocks"] tbody tr').count() > 0, "blocks page lists blocks");
  await shot(page, "blocks");
  await accessibility(page, "blocks");
  await page.goto(base + "/payments", { waitUntil: "load" });
  check((await page.textContent("h1")) === "Payments", "payments page");
  await shot(page, "payments");
  await accessibility(page, "payments");

  // --- Without JavaScript the overview is whole (server-rendered).
  const plain = await browser.newContext({ javaScriptEnabled: false });
  const still = await plain.newPage();
  await still.goto(base + "/", { waitUntil: "load" });
  check(await still.locator('[data-testid="overview-blocks"] tbody tr').count() > 0, "no-JS overview lists blocks");
  check(await still.locator("figure.chart svg").count() === 1, "no-JS overview has its chart");
  await plain.close();

  check(scriptErrors.length === 0, `script errors: ${scriptErrors.join("; ")}`);
  report.ok = true;
} catch (error) {
  report.ok = false;
  report.error = String(error && error.stack || error);
} finally {
  writeFileSync(join(artifacts, "report.json"), JSON.stringify(report, null, 2));
  await browser.close();
}
console.log(JSON.stringify(report));
process.exit(report.ok ? 0 : 1);
