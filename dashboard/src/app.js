// Tidemark's map dashboard: flood areas, stations, warnings and their history, live over the
// warnings' Server-Sent Events stream, with the circular-economy and utility view beside it.

import * as maplibregl from "maplibre-gl";
import { getJson, postJson, apiKey, setApiKey, local, ApiError } from "./api.js";
import { t, language, setLanguage, translatePage, formatTime, formatNumber, formatSpan } from "./i18n.js";
import { stationChart } from "./chart.js";
import { colours, states, severityNames } from "./style.js";
import { showCircular, refreshCircular } from "./circular.js";

const HOUR = 3600 * 1000;
const EVENT_KINDS = ["raised", "changed", "lifted", "acknowledged", "stale", "fresh", "undelivered"];

const state = {
  stations: [],
  warnings: [],
  areas: { type: "FeatureCollection", features: [] },
  municipalities: new Map(),
  markers: new Map(),
  /** What the detail pane shows: {kind: "station" | "warning", id}. */
  detail: null,
  /** Whether the open detail's last load failed: a list refresh that succeeds does not clear that. */
  detailFailed: false,
  /** What acknowledging each warning from this tab came to, kept however often the pane is redrawn. */
  ackStatus: new Map(),
  returnFocus: null,
};

const map = new maplibregl.Map({
  container: "map",
  // A plain background and our own GeoJSON: no tiles, glyphs or sprites from anywhere.
  style: {
    version: 8,
    sources: {},
    layers: [{ id: "background", type: "background", paint: { "background-color": "#eef3f6" } }],
  },
  // Denmark, with the Baltic gauges south of the border.
  bounds: [
    [8.0, 54.3],
    [13.0, 57.8],
  ],
  attributionControl: { compact: true, customAttribution: "Kommunegrænser: Geodatastyrelsen / Danske Kommuner (FOT)" },
});
map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-right");
// For the browser tests and for anyone debugging in the console.
window.tidemark = { map, state };

// ---------------------------------------------------------------------------------------------
// Loading and refreshing

async function loadMunicipalities() {
  const list = await getJson("/api/v1/municipalities");
  for (const m of list.municipalities) state.municipalities.set(m.code, m.name);
  const boundaries = await getJson("/api/v1/municipalities?format=geojson");
  map.getSource("municipalities").setData(boundaries);
}

async function refreshAreas() {
  const areas = await getJson("/api/v1/flood-areas?format=geojson");
  state.areas = areas;
  paintAreas();
}

async function refreshWarnings() {
  const body = await getJson("/api/v1/warnings?state=in_force");
  state.warnings = body.warnings;
  renderWarnings();
  paintAreas();
}

async function refreshStations() {
  const body = await getJson("/api/v1/stations?limit=1000");
  state.stations = body.stations;
  renderStations();
}

async function refreshContainers() {
  const body = await getJson("/api/v1/circular/containers?format=geojson");
  map.getSource("containers").setData(body);
}

async function refreshUtilityAlerts() {
  const body = await getJson("/api/v1/utilities/alerts?state=in_force");
  const features = [];
  for (const alert of body.alerts) {
    const station = state.stations.find((s) => s.sensors.some((x) => x.key === alert.meter.key));
    if (!station) continue;
    features.push({
      type: "Feature",
      geometry: { type: "Point", coordinates: [station.lon, station.lat] },
      properties: { id: alert.id, name: alert.meter.name, message: alert.message[language()] },
    });
  }
  map.getSource("utility").setData({ type: "FeatureCollection", features });
}

/** Runs `task` once after a burst of calls has calmed down. */
function debounce(task, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(task, ms);
  };
}

/** Says what could not be loaded, until the next refresh succeeds. */
function report(error) {
  console.warn(error);
  const problem = document.getElementById("problem");
  problem.textContent = t("load_failed") + error.message;
  problem.hidden = false;
}

// The problem line clears only when everything shown loaded again, the open detail included: a
// refresh of the lists that succeeds, even one started before the detail failed, leaves the line.
function recovered() {
  if (!state.detailFailed) document.getElementById("problem").hidden = true;
}

const refreshAfterEvent = debounce(() => {
  const detail = state.detail ? showDetail(state.detail, { focus: false }) : Promise.resolve();
  Promise.all([refreshWarnings(), refreshStations(), refreshUtilityAlerts(), detail]).then(recovered, report);
}, 250);

// ---------------------------------------------------------------------------------------------
// Live updates

/** Shows the stream's state: open, down (reconnecting) or connecting. */
function setLive(s) {
  const live = document.getElementById("live");
  live.dataset.state = s;
  live.textContent = t(s === "open" ? "live_open" : s === "down" ? "live_down" : "live_connecting");
}

function connect() {
  setLive("connecting");
  const stream = new EventSource("/api/v1/warnings/stream?category=all");
  stream.onopen = () => {
    setLive("open");
    // Whatever happened while the stream was down is in the lists.
    refreshAfterEvent();
  };
  stream.onerror = () => setLive("down");
  for (const prefix of ["warning", "utility_alert"]) {
    for (const kind of EVENT_KINDS) stream.addEventListener(`${prefix}.${kind}`, refreshAfterEvent);
  }
}

// ---------------------------------------------------------------------------------------------
// The map's layers

const areaColour = [
  "match",
  ["get", "severity"],
  1,
  colours.alert,
  2,
  colours.warning,
  3,
  colours.severe,
  colours.area_none,
];

function addLayers() {
  const empty = { type: "FeatureCollection", features: [] };
  map.addSource("municipalities", { type: "geojson", data: empty });
  map.addSource("areas", { type: "geojson", data: empty, promoteId: "key" });
  map.addSource("containers", { type: "geojson", data: empty });
  map.addSource("utility", { type: "geojson", data: empty });
  map.addLayer({
    id: "municipalities-fill",
    type: "fill",
    source: "municipalities",
    paint: { "fill-color": "#fbfcfd", "fill-opacity": 1 },
  });
  map.addLayer({
    id: "municipalities-line",
    type: "line",
    source: "municipalities",
    paint: { "line-color": colours.boundary, "line-width": 0.6, "line-opacity": 0.7 },
  });
  map.addLayer({
    id: "areas-fill",
    type: "fill",
    source: "areas",
    paint: { "fill-color": areaColour, "fill-opacity": ["case", [">", ["get", "severity"], 0], 0.6, 0.25] },
  });
  map.addLayer({
    id: "areas-line",
    type: "line",
    source: "areas",
    // Heavier outlines for higher severities, so the map reads without colour too.
    paint: {
      "line-color": ["case", [">", ["get", "severity"], 0], "#1d1d1d", colours.normal],
      "line-width": ["+", 1, ["*", 1.5, ["get", "severity"]]],
      "line-dasharray": ["case", ["get", "stale"], ["literal", [2, 2]], ["literal", [1, 0]]],
    },
  });
  map.addLayer({
    id: "containers",
    type: "circle",
    source: "containers",
    layout: { visibility: "none" },
    paint: {
      "circle-radius": 6,
      "circle-color": [
        "interpolate",
        ["linear"],
        ["coalesce", ["get", "fill_level"], 0],
        0,
        "#d9f0e6",
        80,
        colours.container,
        100,
        "#004d38",
      ],
      "circle-stroke-color": "#1d1d1d",
      "circle-stroke-width": 1,
    },
  });
  map.addLayer({
    id: "utility",
    type: "circle",
    source: "utility",
    layout: { visibility: "none" },
    paint: {
      // A wide ring, so that the station marker on top of it stays readable.
      "circle-radius": 15,
      "circle-color": colours.utility,
      "circle-opacity": 0.45,
      "circle-stroke-color": colours.utility,
      "circle-stroke-width": 4,
    },
  });
  map.on("click", "areas-fill", (e) => {
    const key = e.features[0]?.properties.key;
    const warning = state.warnings.find((w) => w.area.key === key);
    if (warning) showDetail({ kind: "warning", id: warning.id }).catch(report);
  });
  for (const layer of ["containers", "utility"]) {
    map.on("click", layer, (e) => {
      const p = e.features[0].properties;
      const text =
        layer === "containers"
          ? `${p.name}: ${p.fill_level == null ? "–" : `${formatNumber(p.fill_level, 0)} %`}`
          : `${p.name}: ${p.message}`;
      new maplibregl.Popup().setLngLat(e.lngLat).setText(text).addTo(map);
    });
  }
  for (const layer of ["areas-fill", "containers", "utility"]) {
    map.on("mouseenter", layer, () => (map.getCanvas().style.cursor = "pointer"));
    map.on("mouseleave", layer, () => (map.getCanvas().style.cursor = ""));
  }
}

/** Each flood area coloured by the severity of its warning in force (0 without one). */
function paintAreas() {
  const source = map.getSource("areas");
  if (!source) return;
  const byArea = new Map(state.warnings.map((w) => [w.area.key, w]));
  const features = state.areas.features.map((f) => {
    const warning = byArea.get(f.properties.key);
    return {
      ...f,
      properties: {
        ...f.properties,
        severity: warning?.severity ?? 0,
        stale: warning?.stale ?? false,
        warning: warning?.id ?? null,
      },
    };
  });
  source.setData({ type: "FeatureCollection", features });
}

function stationLabel(station) {
  return `${station.name}: ${t(`state_${station.state}`)}`;
}

/** One keyboard-reachable button per station, shaped and coloured by its state. */
function renderStations() {
  const seen = new Set();
  for (const station of state.stations) {
    seen.add(station.key);
    let marker = state.markers.get(station.key);
    if (!marker) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "station";
      button.dataset.station = station.key;
      button.addEventListener("click", (e) => {
        e.stopPropagation();
        showDetail({ kind: "station", id: station.key }).catch(report);
      });
      marker = new maplibregl.Marker({ element: button }).setLngLat([station.lon, station.lat]).addTo(map);
      state.markers.set(station.key, marker);
    }
    const element = marker.getElement();
    element.dataset.state = station.state;
    element.setAttribute("aria-label", stationLabel(station));
    element.title = stationLabel(station);
  }
  for (const [key, marker] of state.markers) {
    if (!seen.has(key)) {
      marker.remove();
      state.markers.delete(key);
    }
  }
  applyLayerToggles();
}

// ---------------------------------------------------------------------------------------------
// The warnings list

// A severity's name: a flood's, or a drought's where the thresholds fall.
function severityName(name, drought) {
  return t(drought ? `drought_${name}` : `state_${name}`);
}

function severityBadge(severity, category) {
  const name = severityNames[severity];
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.dataset.state = name;
  badge.textContent = severityName(name, category === "drought");
  return badge;
}

/** Most severe first; among equals, the most recently changed first. */
function ordered(warnings) {
  return [...warnings].sort((a, b) => b.severity - a.severity || Date.parse(b.changed_at) - Date.parse(a.changed_at));
}

function renderWarnings() {
  const list = document.getElementById("warning-list");
  document.getElementById("no-warnings").hidden = state.warnings.length > 0;
  const items = ordered(state.warnings).map((w) => {
    const item = document.createElement("li");
    item.dataset.warning = w.id;
    item.dataset.area = w.area.key;
    item.dataset.severity = w.severity;
    const button = document.createElement("button");
    button.type = "button";
    button.addEventListener("click", () => showDetail({ kind: "warning", id: w.id }).catch(report));
    const title = document.createElement("strong");
    title.textContent = w.area.name;
    const meta = document.createElement("span");
    meta.className = "meta";
    const parts = [t(w.kind), `${t("since")} ${formatTime(w.raised_at)}`];
    if (w.stale) parts.push(t("stale_warning"));
    if (w.acknowledged_by.length) parts.push(`${t("acknowledged_by")} ${names(w.acknowledged_by)}`);
    meta.textContent = parts.join(" · ");
    button.append(severityBadge(w.severity, w.category), title, meta);
    item.append(button);
    return item;
  });
  list.replaceChildren(...items);
}

function names(codes) {
  return codes.map((c) => state.municipalities.get(c) ?? c).join(", ");
}

// ---------------------------------------------------------------------------------------------
// The detail pane: a station's chart, or a warning's history and acknowledgement

async function showDetail(detail, { focus = true } = {}) {
  if (focus) state.returnFocus = document.activeElement;
  state.detail = detail;
  const body = document.getElementById("detail-body");
  let loaded;
  try {
    loaded = detail.kind === "station" ? await stationDetail(detail.id) : await warningDetail(detail.id, focus);
  } catch (error) {
    if (state.detail === detail) state.detailFailed = true;
    throw error;
  }
  if (state.detail !== detail) return;
  state.detailFailed = false;
  const { content, drawn } = loaded;
  body.replaceChildren(...content);
  const pane = document.getElementById("detail");
  pane.hidden = false;
  pane.dataset.kind = detail.kind;
  pane.dataset.id = detail.id;
  // A chart needs its place on the page to know its width.
  drawn?.();
  if (focus) body.querySelector("h2")?.focus();
}

function closeDetail() {
  state.detail = null;
  state.detailFailed = false;
  document.getElementById("detail").hidden = true;
  state.returnFocus?.focus?.();
}

function element(tag, text, attributes = {}) {
  const el = document.createElement(tag);
  if (text != null) el.textContent = text;
  for (const [name, value] of Object.entries(attributes)) el.setAttribute(name, value);
  return el;
}

function definitions(pairs) {
  const dl = element("dl");
  for (const [term, value] of pairs) dl.append(element("dt", term), element("dd", value));
  return dl;
}

async function stationDetail(key) {
  const station = await getJson(`/api/v1/stations/${encodeURIComponent(key)}`);
  const threshold = station.thresholds?.[0];
  const sensor = station.sensors.find((s) => s.key === threshold?.sensor) ?? station.sensors[0];
  const trend = station.trends?.find((x) => x.sensor === sensor?.key) ?? null;
  const title = element("h2", station.name, { tabindex: "-1" });
  const badge = element("span", t(`state_${station.state}`), { class: "badge" });
  badge.dataset.state = station.state;
  const out = [title, badge];
  if (!sensor) return { content: out };
  const unit = sensor.unit;
  const pairs = [];
  if (sensor.latest) {
    const age = Date.now() - Date.parse(sensor.latest.ts);
    pairs.push([t("latest"), `${formatNumber(sensor.latest.value)} ${unit}, ${formatSpan(age)} ${t("ago")} (${formatTime(sensor.latest.ts)})`]);
  }
  if (threshold) {
    pairs.push([
      t("rate"),
      trend?.rate_per_hour == null ? t("no_trend") : `${formatNumber(trend.rate_per_hour)} ${unit} ${t("per_hour")}`,
    ]);
    const projected = trend?.projected;
    pairs.push([
      t("projected"),
      projected
        ? `${severityName(projected.severity, threshold.direction === "falling")} (${formatNumber(threshold[projected.severity])} ${unit}) ${formatTime(projected.at)}, ${formatSpan(Date.parse(projected.at) - Date.parse(trend.at))} ${t("after_reading")} ${formatTime(trend.at)}`
        : t("no_projection"),
    ]);
    pairs.push([
      t("thresholds"),
      ["alert", "warning", "severe"].map((s) => `${severityName(s, threshold.direction === "falling")} ${formatNumber(threshold[s])} ${unit}`).join("; "),
    ]);
  }
  const facts = definitions(pairs);
  facts.className = "facts";
  out.push(facts);
  if (!threshold) out.push(element("p", t("no_sensor_thresholds")));
  const from = new Date(Date.now() - 48 * HOUR).toISOString().replace(/\.\d+Z$/, "Z");
  const readings = await getJson(`/api/v1/sensors/${encodeURIComponent(sensor.key)}/readings?from=${from}&limit=5000`);
  const chart = element("figure", null, { class: "chart", "aria-label": t("chart_label") });
  chart.append(element("figcaption", `${t("chart_label")} (${sensor.key})`));
  out.push(chart);
  return { content: out, drawn: () => stationChart(chart, { readings: readings.readings, threshold, trend, unit }) };
}

/** Brings a flood area into view, unless it already is. */
function showArea(key) {
  const area = state.areas.features.find((f) => f.properties.key === key);
  if (!area) return;
  const bounds = new maplibregl.LngLatBounds();
  for (const ring of area.geometry.coordinates) for (const point of ring) bounds.extend(point);
  const view = map.getBounds();
  if (!(view.contains(bounds.getSouthWest()) && view.contains(bounds.getNorthEast()) && map.getZoom() >= 9)) {
    map.fitBounds(bounds, { padding: 80, maxZoom: 11, duration: 600 });
  }
}

async function warningDetail(id, bringIntoView) {
  const w = await getJson(`/api/v1/warnings/${id}`);
  if (bringIntoView) showArea(w.area.key);
  const title = element("h2", `${w.area.name}`, { tabindex: "-1" });
  const inForce = w.state === "in_force";
  const out = [title, severityBadge(w.severity, w.category), element("p", w.message[language()], { class: "message" })];
  out.push(
    definitions([
      [t("municipalities"), names(w.municipalities)],
      [t("acknowledged_by"), w.acknowledged_by.length ? names(w.acknowledged_by) : t("not_acknowledged")],
    ]),
  );
  const cap = element("a", t("cap"), { href: local(w.links.cap), class: "cap" });
  const capLine = element("p");
  capLine.append(cap);
  out.push(capLine);
  const status = element("p", state.ackStatus.get(w.id) ?? null, { id: "ack-status", role: "status" });
  if (inForce) {
    const button = element("button", t("acknowledge"), { type: "button", id: "ack" });
    button.addEventListener("click", () => acknowledge(w.id));
    out.push(button);
  }
  out.push(status);
  out.push(element("h3", t("history")));
  const history = element("ol", null, { class: "history" });
  for (const event of w.history ?? []) {
    const kind = event.type.split(".").pop();
    const item = element("li");
    item.dataset.kind = kind;
    const head = element("strong", `${t(`event_${kind}`)} · ${formatTime(event.at)}`);
    item.append(head, element("span", event.message[language()]));
    history.append(item);
  }
  out.push(history);
  return { content: out };
}

async function acknowledge(id) {
  const say = (text) => {
    state.ackStatus.set(id, text);
    const status = document.getElementById("ack-status");
    if (status) status.textContent = text;
  };
  if (!apiKey()) {
    say(t("ack_needs_key"));
    const key = await askForKey();
    if (!key) return;
  }
  try {
    await postJson(`/api/v1/warnings/${id}/ack`, {});
    say(t("ack_done"));
    await showDetail({ kind: "warning", id }, { focus: false });
    refreshWarnings().catch(report);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      setApiKey(null);
      renderKeyButton();
      say(t("key_refused") + error.message);
    } else {
      say(t("ack_failed") + error.message);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The API key, kept for this tab only

let keyResolve = null;

function askForKey() {
  const dialog = document.getElementById("key-dialog");
  document.getElementById("key-input").value = "";
  document.getElementById("key-error").textContent = "";
  dialog.showModal();
  return new Promise((resolve) => (keyResolve = resolve));
}

function settleKey(key) {
  keyResolve?.(key);
  keyResolve = null;
}

function setUpKeyDialog() {
  const dialog = document.getElementById("key-dialog");
  document.getElementById("key-form").addEventListener("submit", () => {
    const key = document.getElementById("key-input").value.trim();
    setApiKey(key || null);
    renderKeyButton();
    settleKey(key || null);
  });
  document.getElementById("key-cancel").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => settleKey(null));
  document.getElementById("key-button").addEventListener("click", () => {
    if (apiKey()) {
      setApiKey(null);
      renderKeyButton();
    } else {
      askForKey();
    }
  });
}

function renderKeyButton() {
  document.getElementById("key-button").textContent = t(apiKey() ? "key_set" : "key_unset");
}

// ---------------------------------------------------------------------------------------------
// Layers, legend, language and views

function applyLayerToggles() {
  for (const box of document.querySelectorAll("#layers input")) {
    const on = box.checked;
    const layer = box.dataset.layer;
    if (layer === "stations") {
      for (const marker of state.markers.values()) marker.getElement().hidden = !on;
      continue;
    }
    const ids = { municipalities: ["municipalities-fill", "municipalities-line"], areas: ["areas-fill", "areas-line"] }[layer] ?? [layer];
    for (const id of ids) if (map.getLayer(id)) map.setLayoutProperty(id, "visibility", on ? "visible" : "none");
  }
}

function renderLegend() {
  const list = document.getElementById("legend-list");
  const items = states.map((name) => {
    const item = element("li");
    const symbol = element("span", null, { class: "station", "aria-hidden": "true" });
    symbol.dataset.state = name;
    item.append(symbol, element("span", t(`state_${name}`)));
    return item;
  });
  for (const [severity, name] of [[0, "area_none"], [1, "state_alert"], [2, "state_warning"], [3, "state_severe"]]) {
    const item = element("li");
    const swatch = element("span", null, { class: "swatch", "aria-hidden": "true" });
    swatch.dataset.severity = severity;
    item.append(swatch, element("span", severity ? `${t("layer_areas")}: ${t(name)}` : t(name)));
    items.push(item);
  }
  for (const [kind, name] of [["container", "container_fill"], ["utility", "utility_alert"]]) {
    const item = element("li");
    const dot = element("span", null, { class: "dot", "aria-hidden": "true" });
    dot.dataset.kind = kind;
    item.append(dot, element("span", t(name)));
    items.push(item);
  }
  list.replaceChildren(...items);
}

function renderText() {
  translatePage();
  const other = language() === "da" ? "en" : "da";
  const toggle = document.getElementById("lang");
  toggle.textContent = other === "da" ? "Dansk" : "English";
  toggle.lang = other;
  renderKeyButton();
  renderLegend();
  renderWarnings();
  renderStations();
  setLive(document.getElementById("live").dataset.state);
}

function setUpControls() {
  document.getElementById("lang").addEventListener("click", () => {
    setLanguage(language() === "da" ? "en" : "da");
    renderText();
    if (state.detail) showDetail(state.detail, { focus: false }).catch(report);
    if (!document.getElementById("circular-view").hidden) refreshCircular(state).catch(report);
  });
  document.getElementById("detail-close").addEventListener("click", closeDetail);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.detail && !document.getElementById("key-dialog").open) closeDetail();
  });
  for (const box of document.querySelectorAll("#layers input")) {
    box.addEventListener("change", () => {
      applyLayerToggles();
      if (box.checked && box.dataset.layer === "containers") refreshContainers().catch(report);
      if (box.checked && box.dataset.layer === "utility") refreshUtilityAlerts().catch(report);
    });
  }
  const views = { flood: document.getElementById("flood-view"), circular: document.getElementById("circular-view") };
  for (const name of Object.keys(views)) {
    document.getElementById(`tab-${name}`).addEventListener("click", () => {
      for (const [other, view] of Object.entries(views)) {
        view.hidden = other !== name;
        document.getElementById(`tab-${other}`).setAttribute("aria-pressed", String(other === name));
      }
      if (name === "circular") showCircular(state).catch(report);
      else map.resize();
    });
  }
}

async function start() {
  setUpControls();
  setUpKeyDialog();
  renderText();
  await new Promise((resolve) => (map.loaded() ? resolve() : map.once("load", resolve)));
  addLayers();
  applyLayerToggles();
  await Promise.all([loadMunicipalities(), refreshAreas(), refreshWarnings(), refreshStations()]);
  connect();
  // Readings change stations' states and containers' fill between warning events.
  setInterval(() => {
    const containers = document.querySelector('#layers input[data-layer="containers"]').checked;
    Promise.all([refreshStations(), containers ? refreshContainers() : null]).then(recovered, report);
  }, 60_000);
  document.body.dataset.ready = "true";
}

start().catch(report);
