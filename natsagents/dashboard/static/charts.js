// natsagents dashboard: line charts on <canvas> (no third-party code).
// A chart takes series {name, color, points: [[unix seconds, value or null], ...], last}
// and draws them over time with a zero-based y axis, light grid lines and time labels.
"use strict";

(function () {
  class LineChart {
    constructor(canvas, legend, options) {
      this.canvas = canvas;
      this.legend = legend;
      this.options = options;
      this.series = [];
      if (window.ResizeObserver) new ResizeObserver(() => this.draw()).observe(canvas);
    }

    set(series) {
      this.series = series;
      this.draw();
      this.legend.replaceChildren(...series.map((s) => {
        const item = document.createElement("span");
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = s.color;
        const value = document.createElement("span");
        value.className = "muted";
        value.textContent = " " + this.options.format(s.last);
        item.append(swatch, document.createTextNode(s.name), value);
        return item;
      }));
    }

    draw() {
      const canvas = this.canvas;
      const width = canvas.clientWidth;
      const height = canvas.clientHeight;
      if (!width || !height) return;
      const dpr = window.devicePixelRatio || 1;
      if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
        canvas.width = Math.round(width * dpr);
        canvas.height = Math.round(height * dpr);
      }
      const ctx = canvas.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, width, height);
      ctx.font = "11px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
      const pad = { left: 46, right: 10, top: 10, bottom: 22 };
      const plotW = width - pad.left - pad.right;
      const plotH = height - pad.top - pad.bottom;
      let tMin = Infinity, tMax = -Infinity, vMax = 0;
      for (const s of this.series) {
        for (const [t, v] of s.points) {
          if (t < tMin) tMin = t;
          if (t > tMax) tMax = t;
          if (v !== null && v > vMax) vMax = v;
        }
      }
      const hasData = this.series.some((s) => s.points.some(([, v]) => v !== null));
      if (!isFinite(tMin) || !hasData) {
        ctx.fillStyle = "#94a3b8";
        ctx.textAlign = "center";
        ctx.fillText(this.options.empty, width / 2, height / 2);
        return;
      }
      if (tMax - tMin < 60) tMin = tMax - 60;
      const ticks = niceTicks(vMax || 1, 4);
      const top = ticks[ticks.length - 1];
      const x = (t) => pad.left + ((t - tMin) / (tMax - tMin)) * plotW;
      const y = (v) => pad.top + plotH - (v / top) * plotH;
      // grid and y labels
      ctx.strokeStyle = "#e2e8f0";
      ctx.lineWidth = 1;
      ctx.fillStyle = "#64748b";
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      for (const tick of ticks) {
        const yy = Math.round(y(tick)) + 0.5;
        ctx.beginPath();
        ctx.moveTo(pad.left, yy);
        ctx.lineTo(width - pad.right, yy);
        ctx.stroke();
        ctx.fillText(formatTick(tick, ticks[1] - ticks[0]), pad.left - 6, yy);
      }
      // x labels: about one every 120 px
      ctx.textAlign = "center";
      ctx.textBaseline = "top";
      const count = Math.max(2, Math.floor(plotW / 120));
      for (let i = 0; i <= count; i += 1) {
        const t = tMin + ((tMax - tMin) * i) / count;
        const label = new Date(t * 1000).toLocaleTimeString("en-GB", { hour12: false });
        ctx.fillText(label, Math.min(Math.max(x(t), pad.left + 22), width - pad.right - 22), height - pad.bottom + 6);
      }
      // lines
      for (const s of this.series) {
        ctx.strokeStyle = s.color;
        ctx.lineWidth = 1.8;
        ctx.lineJoin = "round";
        ctx.beginPath();
        let drawing = false;
        for (const [t, v] of s.points) {
          if (v === null) { drawing = false; continue; }
          if (drawing) ctx.lineTo(x(t), y(v));
          else { ctx.moveTo(x(t), y(v)); drawing = true; }
        }
        ctx.stroke();
        const last = s.points.filter(([, v]) => v !== null).pop();
        if (last) {
          ctx.fillStyle = s.color;
          ctx.beginPath();
          ctx.arc(x(last[0]), y(last[1]), 2.6, 0, Math.PI * 2);
          ctx.fill();
        }
      }
    }
  }

  function niceTicks(max, count) {
    const raw = max / count;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
    const ticks = [];
    for (let v = 0; v <= max + step * 0.999; v += step) ticks.push(Number(v.toPrecision(12)));
    if (ticks.length < 2) ticks.push(step);
    return ticks;
  }

  // As many decimals as the step between ticks needs (0.025 → 3), thousands grouped.
  function formatTick(value, step) {
    let decimals = 0;
    while (decimals < 6 && Math.abs(step * Math.pow(10, decimals) - Math.round(step * Math.pow(10, decimals))) > 1e-9) {
      decimals += 1;
    }
    return value.toLocaleString("en-US", { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
  }

  window.NatsagentsCharts = { LineChart: LineChart, niceTicks: niceTicks, formatTick: formatTick };
})();
