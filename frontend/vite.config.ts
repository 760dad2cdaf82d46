import { defineConfig } from "vitest/config";

// `npm run dev` proxies the API and the WebSocket to a local `lazyedit serve` on port 7860.
const backend = (globalThis as { process?: { env: Record<string, string | undefined> } }).process?.env.LAZYEDIT_BACKEND ?? "http://127.0.0.1:7860";

export default defineConfig({
  base: "/",
  build: { outDir: "dist", emptyOutDir: true, target: "es2022" },
  server: {
    proxy: {
      "/api": backend,
      "/ws": { target: backend.replace(/^http/, "ws"), ws: true },
    },
  },
  test: { environment: "node", include: ["test/**/*.test.ts"] },
});
