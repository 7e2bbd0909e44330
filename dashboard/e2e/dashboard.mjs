// The dashboard in headless Chromium against a running Tidemark (started by the Rust test
// `dashboard::the_dashboard_follows_a_storm_surge_in_a_real_browser`, which also runs the storm-surge
// simulator once this script prints READY). Every step asserts; any failure exits non-zero.
//
// Environment: TIDEMARK_URL (the server), TIDEMARK_KEY (a municipality key of Aabenraa, 0580),
// TIDEMARK_SCREENSHOTS (a folder for the screenshots), TIDEMARK_CHROMIUM (default /usr/bin/chromium).

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const base = process.env.TIDEMARK_URL;
const key = process.env.TIDEMARK_KEY;
const shots = process.env.TIDEMARK_SCREENSHOTS;
assert.ok(base && key && shots, "TIDEMARK_URL, TIDEMARK_KEY and TIDEMARK_SCREENSHOTS are needed");
mkdirSync(shots, { recursive: true });
const origin = new URL(base).origin;
const AREA = "aabenraa-havn";
const STATION = "aabenraa-havn";
/** How long after a warning is recorded the map may take to show it. */
const LIVE_WITHIN_MS = 5000;

const log = (line) => console.log(`e2e: ${line}`);
const browser = await chromium.launch({
  executablePath: process.env.TIDEMARK_CHROMIUM || "/usr/bin/chromium",
  // Nothing of Chromium's own: no component updates, no background calls home.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
  ],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, locale: "en-GB" });

// Every request any page makes is checked; one to another host is refused and remembered.
const elsewhere = [];
const requested = [];
await context.route("**/*", (route) => {
  const url = route.request().url();
  requested.push(url);
  if (new URL(url).origin !== origin) {
    elsewhere.push(url);
    return route.abort("blockedbyclient");
  }
  return route.continue();
});
const errors = [];
function watch(page) {
  page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`console: ${m.text()}`);
  });
  page.on("response", (r) => {
    if (r.status() >= 400 && !r.url().endsWith("/ack")) errors.push(`${r.status()} ${r.url()}`);
  });
}

async function shot(page, name) {
  await page.waitForTimeout(400);
  await page.screenshot({ path: `${shots}/${name}.png` });
  log(`screenshot ${name}.png`);
}

// Scrolls to what `selector` finds. Live updates draw parts of the page afresh; when one does so
// while the element is being scrolled to, the element found is gone: find it again and scroll.
async function scrollTo(page, selector) {
  for (let attempt = 1; ; attempt++) {
    try {
      await page.locator(selector).scrollIntoViewIfNeeded({ timeout: 5000 });
      return;
    } catch (error) {
      if (attempt === 3 || !/not attached/.test(String(error))) throw error;
    }
  }
}

/** The severity the map draws the area with (0 without a warning), read off the rendered layer. */
function renderedSeverity(page, area) {
  return page.evaluate((area) => {
    const map = window.tidemark.map;
    const found = map.queryRenderedFeatures({ layers: ["areas-fill"] }).find((f) => f.properties.key === area);
    return found ? found.properties.severity : null;
  }, area);
}

const page = await context.newPage();
watch(page);
await page.goto(`${base}/`);
await page.waitForSelector("body[data-ready=true]", { timeout: 30000 });
await page.evaluate(() => (window.__loadedOnce = true));
await page.waitForFunction(() => document.getElementById("live").dataset.state === "open", null, { timeout: 15000 });
// The area in view, close enough for its polygon to be drawn.
await page.evaluate(() => window.tidemark.map.jumpTo({ center: [9.44, 55.06], zoom: 10 }));
await page.waitForFunction(
  (area) => window.tidemark.map.queryRenderedFeatures({ layers: ["areas-fill"] }).some((f) => f.properties.key === area),
  AREA,
  { timeout: 15000 },
);
assert.equal(await renderedSeverity(page, AREA), 0, "no warning before the surge");
await shot(page, "1-before-the-surge");
console.log("READY");

// The surge: the area turns to Alert, then Warning, with no reload.
let sawAlert = false;
let warningSeenAt = null;
const deadline = Date.now() + 240_000;
while (Date.now() < deadline) {
  const severity = await renderedSeverity(page, AREA);
  if (severity === 1 && !sawAlert) {
    sawAlert = true;
    log("the area shows a Flood Alert");
    await shot(page, "2-flood-alert");
  }
  if (severity >= 2) {
    warningSeenAt = Date.now();
    break;
  }
  await page.waitForTimeout(100);
}
assert.ok(warningSeenAt, "the area turned to Flood Warning on the map");
assert.equal(await page.evaluate(() => window.__loadedOnce), true, "the page was not reloaded");
assert.equal(await page.evaluate(() => performance.getEntriesByType("navigation").length), 1);
const listed = page.locator(`#warning-list li[data-area="${AREA}"]`);
assert.ok(Number(await listed.getAttribute("data-severity")) >= 2, "the warnings list shows it too");
assert.match(await listed.innerText(), /Flood Warning/);
const warningId = Number(await listed.getAttribute("data-warning"));
const warning = await (await fetch(`${base}/api/v1/warnings/${warningId}`)).json();
const issued = warning.history.find((e) => e.severity >= 2);
const delay = warningSeenAt - Date.parse(issued.recorded_at);
log(`the Flood Warning was recorded at ${issued.recorded_at} and on the map ${delay} ms later`);
assert.ok(delay < LIVE_WITHIN_MS, `the map showed the warning ${delay} ms after it was recorded`);
await shot(page, "3-flood-warning");

// The list keeps the most severe first.
const severities = await page.$$eval("#warning-list li", (items) => items.map((i) => Number(i.dataset.severity)));
assert.deepEqual(severities, [...severities].sort((a, b) => b - a), "warnings ordered by severity");

// A station's chart with its thresholds, trend and latest reading's age, opened from the keyboard.
const marker = page.locator(`button.station[data-station="${STATION}"]`);
assert.match(await marker.getAttribute("aria-label"), /Aabenraa Havn: (Flood Alert|Flood Warning|Severe Flood Warning)/);
await marker.focus();
// What the page was given, to hold the facts it shows against.
const [stationAnswer] = await Promise.all([
  page.waitForResponse((r) => r.url() === `${base}/api/v1/stations/${STATION}`),
  page.keyboard.press("Enter"),
]);
const shown = await stationAnswer.json();
await page.waitForSelector("#detail[data-kind=station] .uplot", { timeout: 15000 });
const legend = await page.locator("#detail .u-legend").innerText();
for (const line of ["Flood Alert 1.00 m", "Flood Warning 1.50 m", "Severe Flood Warning 2.00 m"]) {
  assert.ok(legend.includes(line), `the chart's legend shows the threshold "${line}": ${legend}`);
}
const facts = await page.locator("#detail .facts").innerText();
assert.match(facts, /Latest reading\s+\d+[.,]\d\d m, [\d a-z]+ ago/);
assert.match(facts, /Rate of rise\s+-?\d+[.,]\d\d m per hour/);
// The projection names the lowest threshold still above the level it was worked out from, or none
// when the level is not rising. The area can be at Flood Warning before this station's reading is
// (persistence, other stations, the forecast), so which threshold that is depends on the moment the
// page is read. The projection is the trend's, worked out at the newest usable reading when the
// station was last evaluated: while the machine is busy that can be a reading behind the latest one
// shown, so the threshold expected follows from the trend's own level.
const latest = Number(facts.match(/Latest reading\s+(\d+[.,]\d\d) m/)[1].replace(",", "."));
const shownTrend = shown.trends?.find((x) => x.sensor === shown.thresholds?.[0]?.sensor);
const level = shownTrend?.value ?? latest;
const thresholds = [
  ["Flood Alert", 1.0],
  ["Flood Warning", 1.5],
  ["Severe Flood Warning", 2.0],
];
const next = thresholds.findIndex(([, at]) => at >= level - 0.005);
const expected = next < 0 ? [] : thresholds.slice(next, Math.abs(thresholds[next][1] - level) <= 0.005 ? next + 2 : next + 1);
const projection = facts.match(/Projected crossing\s+(.*)/)[1];
const allowed = expected.map(([name, level]) => `${name} (${level.toFixed(2)} m)`);
assert.ok(
  /^No threshold crossing ahead/.test(projection) ||
    allowed.some((named) => projection.replace(/(\d),(\d\d) m/, "$1.$2 m").startsWith(named) && /after the reading of \d/.test(projection)),
  `the projection from a level of ${level} m (latest reading ${latest} m) names one of ${JSON.stringify(allowed)}, or none: ${projection}`,
);
const points = await page.evaluate(() => document.querySelector("#detail .uplot canvas").width);
assert.ok(points > 200, "the chart is drawn");
await scrollTo(page, "#detail figure");
await shot(page, "4-station-chart");
await page.keyboard.press("Escape");
assert.equal(await page.locator("#detail").isHidden(), true, "Escape closes the detail");
assert.equal(await page.evaluate((s) => document.activeElement?.dataset.station, STATION), STATION, "focus returns to the marker");

// Acknowledging: without a key the button asks for one; with it the history shows the acknowledgement.
await listed.locator("button").click();
await page.waitForSelector("#detail[data-kind=warning] #ack");
assert.match(await page.locator("#detail a.cap").getAttribute("href"), new RegExp(`^/api/v1/warnings/${warningId}\\.cap$`));
await page.click("#ack");
await page.waitForSelector("#key-dialog[open]");
assert.match(await page.locator("#ack-status").innerText(), /Enter your municipality's API key/);
await shot(page, "5-acknowledge-asks-for-a-key");
await page.fill("#key-input", key);
await page.click('#key-form button[type="submit"]');
await page.waitForSelector('#detail .history li[data-kind="acknowledged"]', { timeout: 15000 });
assert.match(await page.locator("#detail").innerText(), /Acknowledged by\s+Aabenraa/);
assert.equal(await page.evaluate(() => sessionStorage.getItem("tidemark.key")), key, "the key is kept for the tab");
assert.equal(await page.evaluate(() => localStorage.getItem("tidemark.key")), null, "and only there");
const acknowledged = await (await fetch(`${base}/api/v1/warnings/${warningId}`)).json();
assert.deepEqual(acknowledged.acknowledged_by, ["0580"]);
assert.equal(await page.locator("#ack-status").innerText(), "Acknowledged.");
await scrollTo(page, '#detail .history li[data-kind="acknowledged"]');
await shot(page, "6-acknowledged");

// Danish.
await page.click("#lang");
await page.waitForFunction(() => document.documentElement.lang === "da");
assert.equal(await page.locator("#warnings-title").innerText(), "Aktuelle varsler");
assert.match(await page.locator(`#warning-list li[data-area="${AREA}"]`).innerText(), /Oversvømmelsesvarsel/);
await scrollTo(page, "#warnings");
await shot(page, "7-danish");
await page.click("#lang");

// The circular and utility view for Odense.
await page.click("#tab-circular");
await page.selectOption("#municipality-select", "0461");
await page.waitForSelector("#circular-body .rate", { timeout: 15000 });
const circular = await page.locator("#circular-body").innerText();
assert.match(circular, /Recycling rate \d{4}: 40[.,]0 %/);
assert.match(circular, /Paper and cardboard.*\(20 01 01\)\s+40[.,]0/);
assert.match(circular, /Banegård paper\s+Paper\s+85 %/);
assert.match(circular, /Bolbro district meter\s+\d{4}-\d\d-\d\d\s+\d+[.,]\d\d\s+\d+[.,]\d\d\s+Alert in force/);
await shot(page, "8-circular-and-utilities");
await page.click("#tab-flood");

// The optional layers: waste containers and utility alerts in Odense.
await page.evaluate(() => window.tidemark.map.jumpTo({ center: [10.39, 55.40], zoom: 12 }));
for (const layer of ["containers", "utility"]) {
  await page.check(`#layers input[data-layer="${layer}"]`);
  await page.waitForFunction(
    (layer) => window.tidemark.map.queryRenderedFeatures({ layers: [layer] }).length > 0,
    layer,
    { timeout: 15000 },
  );
}
const drawn = await page.evaluate(() => ({
  container: window.tidemark.map.queryRenderedFeatures({ layers: ["containers"] })[0].properties.name,
  alert: window.tidemark.map.queryRenderedFeatures({ layers: ["utility"] })[0].properties.name,
}));
assert.deepEqual(drawn, { container: "Banegård paper", alert: "Bolbro district meter" });
await shot(page, "10-containers-and-utility-alerts");

// A phone: the map above, the panel below, all of it readable.
const phone = await context.newPage();
watch(phone);
await phone.setViewportSize({ width: 390, height: 844 });
await phone.goto(`${base}/`);
await phone.waitForSelector("body[data-ready=true]", { timeout: 30000 });
const mapBox = await phone.locator("#map").boundingBox();
const panelBox = await phone.locator("#panel").boundingBox();
assert.ok(panelBox.y >= mapBox.y + mapBox.height - 1, "on a phone the panel is below the map");
assert.ok(panelBox.width <= 390, "and fits the screen");
await shot(phone, "9-phone");

// What cannot be loaded is said on the page, not only in the console.
const failing = await context.newPage();
await failing.route(`${base}/api/v1/stations/${STATION}`, (route) =>
  route.fulfill({
    status: 503,
    contentType: "application/problem+json",
    body: JSON.stringify({ title: "Service Unavailable", status: 503, detail: "the database is unreachable" }),
  }),
);
// A refresh of the lists that was already under way when the detail failed, and succeeds after
// it, must not clear the line. The page loads the station list once as it starts; hold the next
// load (the refresh when the live stream opens) until the detail has failed.
let listLoads = 0;
let releaseList;
const listHeld = new Promise((resolve) => (releaseList = resolve));
await failing.route(`${base}/api/v1/stations?*`, async (route) => {
  listLoads += 1;
  if (listLoads === 2) await listHeld;
  // On to the context's check of every request.
  return route.fallback();
});
await failing.goto(`${base}/`);
await failing.waitForSelector("body[data-ready=true]", { timeout: 30000 });
assert.equal(await failing.locator("#problem").isHidden(), true);
for (let i = 0; listLoads < 2; i++) {
  assert.ok(i < 150, "the live stream's opening refreshes the station list");
  await failing.waitForTimeout(100);
}
await failing.click(`button.station[data-station="${STATION}"]`);
await failing.waitForSelector("#problem:not([hidden])");
const listDone = failing.waitForResponse((r) => r.url().startsWith(`${base}/api/v1/stations?`));
releaseList();
await listDone;
await failing.waitForTimeout(500);
assert.equal(await failing.locator("#problem").isHidden(), false, "the failed detail's line outlives the lists' refresh");
assert.equal(await failing.locator("#problem").innerText(), "Could not load: the database is unreachable");

assert.equal(await page.locator("#problem").isHidden(), true, "nothing failed to load");
assert.deepEqual(errors, [], "no errors in the pages");
assert.deepEqual(elsewhere, [], "no request to any other host");
assert.ok(requested.some((u) => u.includes("/dashboard/maplibre-gl-worker.mjs")), "MapLibre's worker came from the server");
log(`${requested.length} requests, all to ${origin}`);
await browser.close();
console.log("PASS");
