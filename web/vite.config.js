import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// `npm run dev` proxies the API to a local stack (./build.sh run).
const api = process.env.CINEMATCH_API || 'http://127.0.0.1:8080';

export default defineConfig({
  plugins: [react()],
  build: { outDir: 'dist', assetsDir: 'assets', sourcemap: false, chunkSizeWarningLimit: 400 },
  server: { proxy: { '/api': api, '/health': api, '/ready': api, '/metrics': api, '/v1': api } },
  test: { environment: 'node', include: ['src/**/*.test.{js,jsx}'] },
});
