import { createContext, useContext, useEffect, useState } from 'react';
import { api as defaultApi } from './api/client.js';

const AuthCtx = createContext(null);

export function AuthProvider({ api = defaultApi, children }) {
  const [claims, setClaims] = useState(api.claims);
  const [restoring, setRestoring] = useState(true);
  useEffect(() => {
    const off = api.onAuthChange(setClaims);
    api.restore().finally(() => { setClaims(api.claims); setRestoring(false); });
    return off;
  }, [api]);
  const user = claims ? { id: claims.sub, role: claims.role, email: claims.email } : null;
  return (
    <AuthCtx.Provider value={{ api, user, restoring, isAdmin: user?.role === 'admin' }}>
      {children}
    </AuthCtx.Provider>
  );
}

export const useAuth = () => useContext(AuthCtx);
