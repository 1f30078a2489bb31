import { defineConfig } from "vite";

// Built once into ../dist, which the Go binary embeds (no CDN, no runtime
// fetch from anywhere but the overview server itself: air-gapped networks).
export default defineConfig({
  build: {
    outDir: "../dist",
    emptyOutDir: true,
    target: "es2022",
    modulePreload: { polyfill: false },
    reportCompressedSize: false,
  },
  oxc: {
    jsx: { runtime: "automatic", importSource: "preact" },
  },
});
