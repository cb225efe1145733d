// A small line chart on <canvas>: several series against a shared x axis, with ticks, grid and a
// legend. Drawn from scratch so the UI ships no charting library.

const PALETTE = ["#2f6fb3", "#d1495b", "#3a9a5b", "#8a5cc2", "#d98c1a"];

function niceStep(span, count) {
  const raw = span / Math.max(count, 1);
  const power = 10 ** Math.floor(Math.log10(raw));
  const scaled = raw / power;
  return (scaled <= 1 ? 1 : scaled <= 2 ? 2 : scaled <= 5 ? 5 : 10) * power;
}

function ticks(min, max, count) {
  if (min === max) return [min];
  const step = niceStep(max - min, count);
  const out = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function label(value) {
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-2 || abs >= 1e5)) return value.toExponential(1);
  return String(+value.toPrecision(4));
}

export function seriesColor(index) {
  return PALETTE[index % PALETTE.length];
}

// series: [{label, points: [[x, y], ...]}]. The canvas records what it drew in data-series
// (label and point count per series), which the browser tests read.
export function drawLineChart(canvas, series, { xLabel = "", yLabel = "", title = "" } = {}) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 640;
  const height = canvas.clientHeight || 280;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, width, height);
  const shown = series.filter((s) => s.points.length);
  canvas.dataset.series = JSON.stringify(series.map((s, i) => ({ label: s.label, points: s.points.length,
    color: seriesColor(i) })));
  const pad = { left: 62, right: 16, top: 30, bottom: 42 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  ctx.font = "12px system-ui, sans-serif";
  if (title) {
    ctx.fillStyle = "#222";
    ctx.textAlign = "left";
    ctx.fillText(title, pad.left, 18);
  }
  if (!shown.length) {
    ctx.fillStyle = "#888";
    ctx.textAlign = "center";
    ctx.fillText("no data yet", width / 2, height / 2);
    return;
  }
  const xs = shown.flatMap((s) => s.points.map((p) => p[0]));
  const ys = shown.flatMap((s) => s.points.map((p) => p[1]));
  let [xMin, xMax] = [Math.min(...xs), Math.max(...xs)];
  let [yMin, yMax] = [Math.min(...ys), Math.max(...ys)];
  if (xMin === xMax) { xMin -= 1; xMax += 1; }
  if (yMin === yMax) { const d = Math.abs(yMin) * 0.1 || 1; yMin -= d; yMax += d; }
  const yPad = (yMax - yMin) * 0.05;
  yMin -= yPad; yMax += yPad;
  const px = (x) => pad.left + ((x - xMin) / (xMax - xMin)) * plotW;
  const py = (y) => pad.top + (1 - (y - yMin) / (yMax - yMin)) * plotH;

  ctx.strokeStyle = "#e3e3e3";
  ctx.fillStyle = "#555";
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const v of ticks(yMin, yMax, 5)) {
    ctx.beginPath(); ctx.moveTo(pad.left, py(v)); ctx.lineTo(pad.left + plotW, py(v)); ctx.stroke();
    ctx.fillText(label(v), pad.left - 6, py(v));
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (const v of ticks(xMin, xMax, 6)) {
    ctx.beginPath(); ctx.moveTo(px(v), pad.top); ctx.lineTo(px(v), pad.top + plotH); ctx.stroke();
    ctx.fillText(label(v), px(v), pad.top + plotH + 5);
  }
  ctx.strokeStyle = "#999";
  ctx.strokeRect(pad.left, pad.top, plotW, plotH);
  ctx.fillStyle = "#333";
  ctx.fillText(xLabel, pad.left + plotW / 2, height - 16);
  ctx.save();
  ctx.translate(14, pad.top + plotH / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.textBaseline = "middle";
  ctx.fillText(yLabel, 0, 0);
  ctx.restore();

  series.forEach((s, i) => {
    if (!s.points.length) return;
    ctx.strokeStyle = ctx.fillStyle = seriesColor(i);
    ctx.lineWidth = 2;
    ctx.beginPath();
    s.points.forEach(([x, y], j) => (j ? ctx.lineTo(px(x), py(y)) : ctx.moveTo(px(x), py(y))));
    ctx.stroke();
    if (s.points.length < 40) {
      for (const [x, y] of s.points) { ctx.beginPath(); ctx.arc(px(x), py(y), 2.5, 0, 2 * Math.PI); ctx.fill(); }
    }
  });
  // The legend sits above the plot, right-aligned, where it cannot hide a line.
  ctx.textBaseline = "middle";
  ctx.textAlign = "left";
  const widths = series.map((s) => 28 + ctx.measureText(s.label).width);
  let lx = pad.left + plotW - widths.reduce((a, b) => a + b, 0);
  const ly = Math.max(8, pad.top - 12);
  series.forEach((s, i) => {
    ctx.fillStyle = seriesColor(i);
    ctx.fillRect(lx, ly - 1, 14, 3);
    ctx.fillStyle = "#222";
    ctx.fillText(s.label, lx + 18, ly);
    lx += widths[i];
  });
}
