import { useState } from 'react';

// Half-star rating as an ARIA slider: click the left or right half of a star,
// or use the arrow keys (±0.5), Home/End.  Values 0.5..5.0 in steps of 0.5.
export function StarRating({ value, onChange, disabled, label = 'Your rating' }) {
  const [hover, setHover] = useState(null);
  const shown = hover ?? value ?? 0;
  const set = (v) => {
    const c = Math.min(5, Math.max(0.5, Math.round(v * 2) / 2));
    if (!disabled && c !== value) onChange(c);
  };
  const onKey = (e) => {
    const cur = value ?? 0;
    const map = { ArrowRight: cur + 0.5, ArrowUp: cur + 0.5, ArrowLeft: cur - 0.5, ArrowDown: cur - 0.5, Home: 0.5, End: 5 };
    if (e.key in map) { e.preventDefault(); set(map[e.key]); }
  };
  const pick = (i, e) => {
    const r = e.currentTarget.getBoundingClientRect();
    const half = r.width > 0 && e.clientX - r.left < r.width / 2;
    return half ? i - 0.5 : i;
  };
  return (
    <div className="stars" role="slider" tabIndex={disabled ? -1 : 0}
      aria-label={label} aria-valuemin={0.5} aria-valuemax={5} aria-valuenow={value ?? undefined}
      aria-valuetext={value ? `${value} of 5 stars` : 'not rated'} aria-disabled={disabled || undefined}
      onKeyDown={onKey} onMouseLeave={() => setHover(null)}>
      {[1, 2, 3, 4, 5].map((i) => {
        const fill = shown >= i ? 'full' : shown >= i - 0.5 ? 'half' : 'empty';
        return (
          <span key={i} className={`star ${fill}`} data-star={i}
            onMouseMove={(e) => setHover(pick(i, e))}
            onClick={(e) => set(pick(i, e))}>★</span>
        );
      })}
      <span className="stars-value">{value ? value.toFixed(1) : '–'}</span>
    </div>
  );
}
