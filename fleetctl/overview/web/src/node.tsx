import { useEffect, useState } from "preact/hooks";
import { api, markReady, NodeDetail } from "./api";
import { Badge, ErrorBox, fmtTime } from "./util";

// missing says why a node-reported list is empty: nothing reported yet, or
// no hub feeds this server (factsSource explains).
function missing(what: string, source: string): string {
  return source === "hub" ? `No ${what} reported by the node yet.` : `Not available: ${source}.`;
}

export function NodePage({ cluster, node }: { cluster: string; node: string }) {
  const [d, setD] = useState<NodeDetail | null>(null);
  const [err, setErr] = useState("");
  useEffect(() => {
    api.node(cluster, node).then((x) => { setD(x); markReady("node"); }, (e) => setErr(e.message));
  }, [cluster, node]);
  if (err) return <ErrorBox err={err} />;
  if (!d) return <p class="loading">Loading…</p>;
  return (
    <section aria-labelledby="node-h">
      <p><a href={"#/fleet?q=" + encodeURIComponent(cluster)}>← {cluster}</a></p>
      <h1 id="node-h">{cluster}/{node} <Badge h={d.health} /></h1>
      <dl class="facts" data-testid="node-facts">
        <dt>Role</dt><dd>{d.role}</dd>
        <dt>Site / region</dt><dd>{d.site} / {d.region}</dd>
        <dt>Endpoint</dt><dd><code>{d.endpoint}</code></dd>
        <dt>Version (Talos / image)</dt><dd data-testid="node-version">{d.version}</dd>
        {d.state && <><dt>Current rollout</dt><dd>{d.state} → {d.target}{d.error && <> — {d.error}</>}</dd></>}
        <dt>Secure Boot</dt><dd>{d.secureBoot}</dd>
        <dt>Disk encryption</dt><dd>{d.encryption}</dd>
        <dt>Last seen</dt><dd>{d.lastSeen ? fmtTime(d.lastSeen) : "unknown (reported by the hub)"}</dd>
      </dl>

      <h2>Boot history</h2>
      {d.history.length === 0 && <p>No rollout has touched this node.</p>}
      <table data-testid="history">
        <caption class="sr-only">Upgrades, fallbacks and rollbacks, newest first</caption>
        <thead><tr><th scope="col">Rollout</th><th scope="col">Change</th><th scope="col">What happened</th><th scope="col">Reason</th><th scope="col">When</th></tr></thead>
        <tbody>
          {d.history.map((h) => (
            <tr data-kind={h.kind}>
              <td><a href={"#/rollout/" + h.rollout}>{h.rolloutName}</a><div class="sub">{h.rollout}</div></td>
              <td>{h.fromVersion || "?"} → {h.target}</td>
              <td>
                <span class={"chip kind-" + h.kind}>{h.kind}</span> ({h.state}{h.upgradeCalls > 1 ? `, ${h.upgradeCalls} upgrade calls` : ""})
                <details>
                  <summary>{h.steps.length} steps</summary>
                  <ol class="steps">
                    {h.steps.map((s) => <li>{fmtTime(s.at)} <code>{s.action}</code> {s.detail} <span class="sub">by {s.actor}</span></li>)}
                  </ol>
                </details>
              </td>
              <td>{h.error || "—"}</td>
              <td>{fmtTime(h.updatedAt)}</td>
            </tr>
          ))}
        </tbody>
      </table>

      <h2>Recent events</h2>
      {d.events.length ? <pre class="log">{d.events.join("\n")}</pre> : <p class="hint" data-testid="events-placeholder">{missing("events", d.factsSource)}</p>}
      <h2>Kernel log</h2>
      {d.kernelLog.length ? <pre class="log">{d.kernelLog.join("\n")}</pre> : <p class="hint">{missing("kernel log lines", d.factsSource)}</p>}
    </section>
  );
}
