// A station's last 48 hours with its thresholds and the trend's projection, drawn with uPlot.

import uPlot from "uplot";
import { t, formatNumber } from "./i18n.js";
import { colours } from "./style.js";

const HOUR = 3600;
/** How far ahead the projection is drawn; a crossing later than this is given in words only. */
const AHEAD = 12 * HOUR;

/**
 * Draws the chart into `element`. `readings` are `{ts, value}`, oldest first; `threshold` has
 * alert, warning and severe; `trend` is the analytics' rate and projection (or null).
 */
export function stationChart(element, { readings, threshold, trend, unit }) {
  const now = Date.now() / 1000;
  const xs = readings.map((r) => Date.parse(r.ts) / 1000);
  const ys = readings.map((r) => r.value);
  const last = readings.at(-1);
  const projection = new Array(xs.length).fill(null);
  if (last && trend?.rate_per_hour != null && trend.rate_per_hour > 0) {
    const from = Date.parse(trend.at) / 1000;
    const until = trend.projected ? Math.min(Date.parse(trend.projected.at) / 1000, from + AHEAD) : from + 3 * HOUR;
    projection[projection.length - 1] = trend.value;
    xs.push(until);
    ys.push(null);
    projection.push(trend.value + (trend.rate_per_hour * (until - from)) / HOUR);
  }
  const end = Math.max(now, xs.at(-1) ?? now);
  const flat = (value) => xs.map(() => value);
  const data = [xs, ys, projection];
  const series = [
    {},
    { label: `${t("level")} (${unit})`, stroke: colours.level, width: 2, value: (_, v) => fmt(v) },
    { label: t("projection"), stroke: colours.level, dash: [6, 4], width: 2, value: (_, v) => fmt(v) },
  ];
  if (threshold) {
    for (const name of ["alert", "warning", "severe"]) {
      data.push(flat(threshold[name]));
      series.push({
        label: `${t(`state_${name}`)} ${formatNumber(threshold[name])} ${unit}`,
        stroke: colours[name],
        width: 2,
        dash: name === "alert" ? [2, 3] : name === "warning" ? [8, 3] : [],
        points: { show: false },
        value: (_, v) => fmt(v),
      });
    }
  }
  const width = Math.max(260, element.clientWidth || 320);
  return new uPlot(
    {
      width,
      height: 240,
      scales: { x: { time: true, min: now - 48 * HOUR, max: end } },
      series,
      axes: [{}, { size: 56 }],
      legend: { live: false },
    },
    data,
    element,
  );
}

function fmt(value) {
  return value == null ? "–" : formatNumber(value);
}
