// The circular-economy and utility view: per municipality, the tonnes collected by fraction and the
// recycling rate, the containers close to full, and suspected leaks in the water network.

import { getJson } from "./api.js";
import { t, formatNumber, formatTime } from "./i18n.js";

const NEAR_FULL_PERCENT = 80;
const FULL_WITHIN_MS = 24 * 3600 * 1000;

let chosen = localStorage.getItem("tidemark.municipality");

/** Fills the municipality choice (once) and shows the chosen one. */
export async function showCircular(state) {
  const select = document.getElementById("municipality-select");
  if (!select.options.length) {
    const statistics = await getJson("/api/v1/circular/statistics?period=year");
    const withData = new Set(statistics.statistics.map((s) => s.municipality));
    const sorted = [...state.municipalities].sort((a, b) => a[1].localeCompare(b[1], "da"));
    for (const [code, name] of sorted) select.append(new Option(`${name} (${code})`, code));
    if (!chosen || !state.municipalities.has(chosen)) chosen = [...withData][0] ?? sorted[0]?.[0];
    select.value = chosen;
    select.addEventListener("change", () => {
      chosen = select.value;
      localStorage.setItem("tidemark.municipality", chosen);
      refreshCircular(state).catch(console.error);
    });
  }
  await refreshCircular(state);
}

function capitalised(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function table(caption, columns, rows) {
  const el = document.createElement("table");
  el.createCaption().textContent = caption;
  const head = el.createTHead().insertRow();
  for (const column of columns) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = column;
    head.append(th);
  }
  const body = el.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    for (const cell of row) tr.insertCell().textContent = cell;
  }
  return el;
}

function section(title, content, empty) {
  const el = document.createElement("section");
  const heading = document.createElement("h2");
  heading.textContent = title;
  el.append(heading);
  if (content) el.append(content);
  else {
    const p = document.createElement("p");
    p.textContent = empty;
    el.append(p);
  }
  return el;
}

export async function refreshCircular(state) {
  const code = chosen;
  const query = encodeURIComponent(code);
  const [statistics, containers, leaks, alerts] = await Promise.all([
    getJson(`/api/v1/circular/statistics?period=year&municipality=${query}`),
    getJson("/api/v1/circular/containers"),
    getJson("/api/v1/utilities/leaks"),
    getJson(`/api/v1/utilities/alerts?state=in_force&municipality=${query}`),
  ]);
  const out = [];

  const latest = statistics.statistics.filter((s) => s.municipality === code).at(-1);
  let waste = null;
  if (latest) {
    waste = document.createElement("div");
    const rate = document.createElement("p");
    rate.className = "rate";
    rate.dataset.rate = latest.recycling_rate ?? "";
    rate.textContent = `${t("recycling_rate")} ${latest.period}: ${
      latest.recycling_rate == null ? "–" : `${formatNumber(latest.recycling_rate * 100, 1)} %`
    }`;
    waste.append(
      rate,
      table(
        `${t("collected")} (${latest.period})`,
        [t("fraction"), t("tonnes")],
        latest.fractions.map((f) => [`${capitalised(f.waste_name ?? "")} (${f.waste_code})`, formatNumber(f.generated_tonnes, 1)]),
      ),
    );
  }
  out.push(section(t("collected"), waste, t("no_statistics")));

  const now = Date.now();
  const nearFull = containers.containers
    .filter((c) => c.municipality === code)
    .filter((c) => (c.fill_level ?? 0) >= NEAR_FULL_PERCENT || (c.full_at && Date.parse(c.full_at) - now < FULL_WITHIN_MS))
    .sort((a, b) => (b.fill_level ?? 0) - (a.fill_level ?? 0));
  out.push(
    section(
      t("near_full"),
      nearFull.length
        ? table(
            t("near_full"),
            [t("container"), t("fraction"), t("fill"), t("full_at")],
            nearFull.map((c) => [
              c.name,
              t(`fraction_${c.fraction}`),
              c.fill_level == null ? "–" : `${formatNumber(c.fill_level, 0)} %`,
              c.full_at ? formatTime(c.full_at) : "–",
            ]),
          )
        : null,
      t("no_near_full"),
    ),
  );

  const stationOf = new Map();
  for (const station of state.stations) for (const sensor of station.sensors) stationOf.set(sensor.key, station);
  const ours = leaks.leaks.filter((l) => stationOf.get(l.sensor)?.municipality === code);
  out.push(
    section(
      t("leaks"),
      ours.length
        ? table(
            t("leaks"),
            [t("meter"), t("first_night"), t("night_flow"), t("baseline"), t("status")],
            ours.map((l) => [
              stationOf.get(l.sensor).name,
              l.since,
              formatNumber(l.night_flow),
              formatNumber(l.baseline),
              l.ended_on ? `${t("leak_ended")} ${l.ended_on}` : t("leak_open"),
            ]),
          )
        : null,
      t("no_leaks"),
    ),
  );

  let alertList = null;
  if (alerts.alerts.length) {
    alertList = document.createElement("ul");
    for (const alert of alerts.alerts) {
      const item = document.createElement("li");
      item.textContent = alert.message[document.documentElement.lang === "da" ? "da" : "en"];
      alertList.append(item);
    }
  }
  out.push(section(t("utility_alerts"), alertList, t("no_utility_alerts")));
  if (code === chosen) document.getElementById("circular-body").replaceChildren(...out);
}
