// A small SVG line chart (no chart library): series = [{name, points:[[x,y]]}],
// optional horizontal threshold lines.  x may be numbers or Date values.
const COLORS = ['#f5c518', '#e50914', '#4fc3f7', '#81c784', '#ce93d8', '#ffb74d'];

export function LineChart({ series, thresholds = [], title, height = 180, width = 520, yLabel }) {
  const pts = series.flatMap((s) => s.points);
  if (pts.length === 0) return <p className="note">No data for {title || 'this chart'} yet.</p>;
  const xs = pts.map((p) => +p[0]);
  const ys = pts.map((p) => p[1]).concat(thresholds.map((t) => t.value));
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y0 -= 1; y1 += 1; }
  const pad = { l: 44, r: 10, t: 10, b: 22 };
  const sx = (x) => pad.l + ((+x - x0) / (x1 - x0)) * (width - pad.l - pad.r);
  const sy = (y) => height - pad.b - ((y - y0) / (y1 - y0)) * (height - pad.t - pad.b);
  const fmt = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3));
  return (
    <figure className="chart">
      {title ? <figcaption>{title}</figcaption> : null}
      <svg viewBox={`0 0 ${width} ${height}`} role="img"
        aria-label={`${title || 'chart'}: ${series.map((s) => `${s.name} ${s.points.length} points`).join(', ')}`}>
        <line x1={pad.l} y1={height - pad.b} x2={width - pad.r} y2={height - pad.b} className="axis" />
        <line x1={pad.l} y1={pad.t} x2={pad.l} y2={height - pad.b} className="axis" />
        <text x={4} y={pad.t + 8} className="tick">{fmt(y1)}</text>
        <text x={4} y={height - pad.b} className="tick">{fmt(y0)}</text>
        {yLabel ? <text x={pad.l + 4} y={pad.t + 8} className="tick">{yLabel}</text> : null}
        {thresholds.map((t) => (
          <g key={t.label}>
            <line x1={pad.l} x2={width - pad.r} y1={sy(t.value)} y2={sy(t.value)} className="threshold" />
            <text x={width - pad.r - 4} y={sy(t.value) - 3} textAnchor="end" className="tick">{t.label}</text>
          </g>
        ))}
        {series.map((s, i) => (
          <g key={s.name}>
            <polyline fill="none" stroke={COLORS[i % COLORS.length]} strokeWidth="2"
              points={s.points.map((p) => `${sx(p[0])},${sy(p[1])}`).join(' ')} />
            {s.points.map((p, j) => <circle key={j} cx={sx(p[0])} cy={sy(p[1])} r="2.5" fill={COLORS[i % COLORS.length]} />)}
          </g>
        ))}
      </svg>
      {series.length > 1 ? (
        <ul className="legend">{series.map((s, i) => <li key={s.name}><span style={{ background: COLORS[i % COLORS.length] }} />{s.name}</li>)}</ul>
      ) : null}
    </figure>
  );
}
