import { Counts } from "./api";

export const HEALTHS = ["healthy", "upgrading", "failed", "unknown"] as const;

export function fmtTime(s?: string): string {
  if (!s || s.startsWith("0001-")) return "—";
  const d = new Date(s);
  return d.toISOString().replace("T", " ").slice(0, 16) + " UTC";
}

export function HealthBar({ c, label }: { c: Counts; label: string }) {
  const total = c.nodes || 1;
  const h = c.health ?? {};
  return (
    <div class="hbar" role="img" aria-label={`${label}: ` + HEALTHS.map((k) => `${h[k] ?? 0} ${k}`).join(", ")}>
      {HEALTHS.map((k) => (h[k] ? <span class={"h-" + k} style={{ width: `${(100 * h[k]) / total}%` }} /> : null))}
    </div>
  );
}

export function HealthCounts({ c }: { c: Counts }) {
  const h = c.health ?? {};
  return (
    <span class="hcounts">
      {HEALTHS.map((k) => (h[k] ? <span class={"chip h-" + k} title={k}>{h[k]} {k}</span> : null))}
    </span>
  );
}

export function Badge({ h }: { h: string }) {
  return <span class={"chip h-" + h}>{h}</span>;
}

export function ErrorBox({ err }: { err: string }) {
  return err ? <p role="alert" class="error">{err}</p> : null;
}
