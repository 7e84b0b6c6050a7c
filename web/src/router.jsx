// A small history-API router: the SPA has a handful of routes, and nginx
// answers every unknown path with index.html (try_files $uri /index.html).
import { createContext, useContext, useEffect, useState, useCallback } from 'react';

const RouterCtx = createContext({ path: '/', search: '', navigate: () => {} });

export function Router({ children, initial }) {
  const loc = () => ({ path: window.location.pathname, search: window.location.search });
  const [state, setState] = useState(initial || loc);
  useEffect(() => {
    const on = () => setState(loc());
    window.addEventListener('popstate', on);
    return () => window.removeEventListener('popstate', on);
  }, []);
  const navigate = useCallback((to, { replace = false } = {}) => {
    if (replace) window.history.replaceState(null, '', to);
    else window.history.pushState(null, '', to);
    setState(loc());
    window.scrollTo?.(0, 0);
  }, []);
  return <RouterCtx.Provider value={{ ...state, navigate }}>{children}</RouterCtx.Provider>;
}

export const useRouter = () => useContext(RouterCtx);

// "/movies/:id" against "/movies/42" → {id: "42"}, or null.
export function match(pattern, path) {
  const a = pattern.split('/').filter(Boolean);
  const b = path.split('/').filter(Boolean);
  if (a.length !== b.length) return null;
  const params = {};
  for (let i = 0; i < a.length; i++) {
    if (a[i][0] === ':') params[a[i].slice(1)] = decodeURIComponent(b[i]);
    else if (a[i] !== b[i]) return null;
  }
  return params;
}

export function Link({ to, children, className, ...rest }) {
  const { navigate, path } = useRouter();
  const onClick = (e) => {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(to);
  };
  const current = path === to ? 'page' : undefined;
  return <a href={to} onClick={onClick} className={className} aria-current={current} {...rest}>{children}</a>;
}
