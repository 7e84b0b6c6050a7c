import { createContext, useContext, useEffect, useState } from 'react';
import { api as defaultApi } from './api/client.js';

const AuthCtx = createContext(null);

// The signed-in user comes from the access token's claims (sub, role); the
// profile (email, display name) from GET /auth/me when the server has it.
export function AuthProvider({ api = defaultApi, children }) {
  const [claims, setClaims] = useState(api.claims);
  const [profile, setProfile] = useState(null);
  const [restoring, setRestoring] = useState(true);
  useEffect(() => {
    const off = api.onAuthChange(setClaims);
    api.restore().finally(() => { setClaims(api.claims); setRestoring(false); });
    return off;
  }, [api]);
  useEffect(() => {
    setProfile(null);
    if (!claims || !api.me) return;
    let live = true;
    api.me().then((r) => live && setProfile((r && r.user) || null), () => {});
    return () => { live = false; };
  }, [api, claims && claims.sub]); // eslint-disable-line react-hooks/exhaustive-deps
  const user = claims ? {
    id: claims.sub, role: claims.role,
    email: (profile && profile.email) || claims.email,
    name: profile && profile.display_name,
  } : null;
  return (
    <AuthCtx.Provider value={{ api, user, restoring, isAdmin: user?.role === 'admin' }}>
      {children}
    </AuthCtx.Provider>
  );
}

export const useAuth = () => useContext(AuthCtx);
