// The map's colours and shapes. Severity is never told by colour alone: every state has its own
// marker shape and name, and the colours (after Okabe and Ito) stay apart for red-green colour
// blindness.

export const colours = {
  level: "#0b3d91",
  normal: "#0072b2",
  alert: "#e6c700",
  warning: "#e69f00",
  severe: "#8e1b6b",
  stale: "#767676",
  no_data: "#b0b0b0",
  area_none: "#56b4e9",
  boundary: "#4a4a4a",
  container: "#009e73",
  utility: "#cc79a7",
};

/** Station states, least to most urgent; app.css gives each its marker shape. */
export const states = ["no_data", "stale", "normal", "alert", "warning", "severe"];

export const severityNames = { 1: "alert", 2: "warning", 3: "severe" };
