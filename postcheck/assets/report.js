// Draws every dashboard panel of the post-check report with uPlot, and filters the checks.
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("report-data").textContent);
  const LEGEND_MAX = 12; // more series than this: no legend (200 instances would bury the chart)
  const PALETTE = ["#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1",
    "#ba43a9", "#705da0", "#508642", "#cca300", "#447ebc", "#c15c17"];

  // Grafana's units, as the dashboards use them.
  function scaled(v, steps, base, suffixes) {
    let i = 0;
    while (Math.abs(v) >= base && i < suffixes.length - 1) { v /= base; i++; }
    return +v.toPrecision(3) + steps + suffixes[i];
  }
  function seconds(v) {
    const a = Math.abs(v);
    if (a === 0) return "0 s";
    if (a < 1e-3) return +(v * 1e6).toPrecision(3) + " µs";
    if (a < 1) return +(v * 1e3).toPrecision(3) + " ms";
    if (a < 120) return +v.toPrecision(3) + " s";
    if (a < 7200) return +(v / 60).toPrecision(3) + " min";
    return +(v / 3600).toPrecision(3) + " h";
  }
  function fmt(unit, v) {
    if (v == null || !isFinite(v)) return "–";
    switch (unit) {
      case "percent": return +v.toPrecision(3) + "%";
      case "percentunit": return +(v * 100).toPrecision(3) + "%";
      case "s": return seconds(v);
      case "ms": return seconds(v / 1000);
      case "bytes": return scaled(v, " ", 1024, ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]);
      case "mbytes": return scaled(v, " ", 1024, ["MiB", "GiB", "TiB", "PiB"]);
      case "Bps": return scaled(v, " ", 1024, ["B/s", "KiB/s", "MiB/s", "GiB/s"]);
      case "reqps": return +v.toPrecision(3) + " req/s";
      case "celsius": return +v.toPrecision(3) + " °C";
      case "watt": return scaled(v, " ", 1000, ["W", "kW", "MW"]);
      default: return scaled(v, "", 1000, ["", "k", "M", "G", "T"]);
    }
  }
  const tz = (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC");
  // Byte units tick at powers of two (8 GiB, 16 GiB), not at 9.31 GiB.
  const BINARY = new Set(["bytes", "mbytes", "Bps"]);
  const POW2 = Array.from({ length: 64 }, (_, i) => 2 ** i);
  const hms = uPlot.fmtDate("{HH}:{mm}:{ss}");
  const labelWidth = (u, values) =>
    values && values.length ? 28 + 7.5 * Math.max(...values.map((v) => String(v).length)) : 50;

  function isolated(values) {
    const out = [];
    for (let i = 0; i < values.length; i++) {
      if (values[i] != null && values[i - 1] == null && values[i + 1] == null) out.push(i);
    }
    return out;
  }

  // The post-check's own run, shaded: what happened before it is the baseline.
  function shadeRun(u) {
    const ctx = u.ctx;
    const x0 = u.valToPos(D.run[0], "x", true), x1 = u.valToPos(D.run[1], "x", true);
    ctx.save();
    ctx.fillStyle = "rgba(31, 120, 193, 0.07)";
    ctx.fillRect(x0, u.bbox.top, Math.max(1, x1 - x0), u.bbox.height);
    ctx.restore();
  }

  function yRange(p) {
    return (u, min, max) => {
      if (min == null || !isFinite(min)) { min = 0; max = 1; }
      if (p.min != null) min = Math.min(min, p.min);
      if (p.max != null) max = Math.max(max, p.max);
      if (p.unit === "percentunit" || min >= 0) min = Math.min(0, min);
      if (max === min) max = min + (Math.abs(min) || 1);
      return [min, max + (max - min) * 0.05];
    };
  }

  function draw(el) {
    const p = D.panels[+el.dataset.panel];
    const box = el.querySelector(".chart");
    const stepped = p.type === "state-timeline";
    const series = [{ value: (u, v) => (v == null ? "–" : uPlot.fmtDate("{YYYY}-{MM}-{DD} {HH}:{mm}:{ss}")(tz(v))) }];
    const data = [D.x];
    p.series.forEach((s, i) => {
      const alone = isolated(s.values);
      series.push({
        label: s.name,
        stroke: PALETTE[i % PALETTE.length],
        width: 1.5,
        // A value without neighbours (one scrape, a rate's first step) is a dot, not nothing.
        points: { show: alone.length > 0, size: 5, fill: PALETTE[i % PALETTE.length],
          filter: () => alone },
        paths: stepped ? uPlot.paths.stepped({ align: 1 }) : undefined,
        value: (u, v) => fmt(s.unit || p.unit, v),
      });
      data.push(s.values);
    });
    if (p.type === "stat" || p.type === "gauge") {
      const last = document.createElement("div");
      last.className = "stat";
      p.series.forEach((s, i) => {
        const v = [...s.values].reverse().find((x) => x != null);
        const item = document.createElement("span");
        item.innerHTML = "<b></b> <small></small>";
        item.firstChild.textContent = fmt(s.unit || p.unit, v);
        item.firstChild.style.color = PALETTE[i % PALETTE.length];
        item.lastChild.textContent = s.name;
        last.appendChild(item);
      });
      box.parentNode.insertBefore(last, box);
    }
    const width = Math.max(200, box.clientWidth);
    const height = Math.max(80, box.clientHeight);
    const u = new uPlot({
      width, height,
      tzDate: tz,
      series,
      legend: { show: p.series.length > 0 && p.series.length <= LEGEND_MAX, live: false },
      cursor: { points: { show: false } },
      scales: { x: { time: true, min: D.start, max: D.end }, y: { range: yRange(p) } },
      axes: [
        { stroke: "#555", grid: { stroke: "#eee" }, ticks: { stroke: "#ddd" }, size: 36, space: 90,
          values: (u, vals) => vals.map((v) => hms(tz(v))) },
        { stroke: "#555", grid: { stroke: "#eee" }, ticks: { stroke: "#ddd" }, size: labelWidth,
          ...(BINARY.has(p.unit) ? { incrs: POW2 } : {}),
          values: (u, vals) => vals.map((v) => fmt(p.unit, v)) },
      ],
      hooks: { drawClear: [shadeRun] },
    }, data, box);
    const legendEl = u.root.querySelector(".u-legend");
    const legendH = legendEl ? legendEl.offsetHeight : 0;
    if (legendH) u.setSize({ width, height: Math.max(60, height - legendH) });
    // Series whose every value is NaN (a quantile of nothing) draw nothing either.
    const withValues = p.series.filter((s) => s.values.some((v) => v != null)).length;
    if (!withValues) {
      const empty = document.createElement("div");
      empty.className = "nodata";
      empty.textContent = p.series.length ? "No data (" + p.series.length + " series, no values)" : "No data";
      box.appendChild(empty);
    } else if (p.series.length > LEGEND_MAX) {
      const more = document.createElement("div");
      more.className = "many";
      more.textContent = p.series.length + " series (legend hidden)";
      box.appendChild(more);
    }
    el.dataset.rendered = String(withValues);
    return { u, box, legendH };
  }

  const charts = [...document.querySelectorAll(".panel[data-panel]")].map(draw);
  window.addEventListener("resize", () => {
    charts.forEach(({ u, box, legendH }) =>
      u.setSize({ width: Math.max(200, box.clientWidth), height: Math.max(60, box.clientHeight - legendH) }));
  });

  // Checks: filter by status and by text.
  const table = document.getElementById("check-table");
  const search = document.getElementById("check-search");
  let status = document.querySelector(".filters button.on").dataset.filter;
  function apply() {
    const text = search.value.toLowerCase();
    for (const row of table.tBodies[0].rows) {
      const show = (status === "all" || row.className === status) &&
        (!text || row.textContent.toLowerCase().includes(text));
      row.hidden = !show;
    }
  }
  document.querySelectorAll(".filters button").forEach((b) => b.addEventListener("click", () => {
    status = b.dataset.filter;
    document.querySelectorAll(".filters button").forEach((o) => o.classList.toggle("on", o === b));
    apply();
  }));
  search.addEventListener("input", apply);
  document.body.dataset.ready = String(charts.length);
})();
