// Inline SVG icons: emoji glyphs render as empty boxes where no emoji font
// is installed (a stock Debian chromium, many Linux desktops).  Decorative:
// the button around an icon carries the accessible name.
const Svg = ({ children }) => (
  <svg className="ico" aria-hidden="true" width="16" height="16" viewBox="0 0 24 24" fill="none"
    stroke="currentColor" strokeWidth="2" strokeLinecap="round" strokeLinejoin="round">{children}</svg>
);

export const ThumbUp = () => (
  <Svg><path d="M7 10v11H4V10h3z" /><path d="M7 10l4-8a3 3 0 0 1 3 3v4h5.5a2 2 0 0 1 2 2.3l-1.3 8A2 2 0 0 1 18.2 21H7" /></Svg>
);
export const ThumbDown = () => (
  <Svg><path d="M17 14V3h3v11h-3z" /><path d="M17 14l-4 8a3 3 0 0 1-3-3v-4H4.5a2 2 0 0 1-2-2.3l1.3-8A2 2 0 0 1 5.8 3H17" /></Svg>
);
export const Trash = () => (
  <Svg><path d="M3 6h18" /><path d="M8 6V4h8v2" /><path d="M6 6l1 15h10l1-15" /></Svg>
);
export const Pencil = () => (
  <Svg><path d="M4 20h4L19 9l-4-4L4 16v4z" /></Svg>
);
