import { useEffect, useRef, useState } from "preact/hooks";
import { api, Identity, markReady, RolloutDetail, RolloutInfo, WaveResult } from "./api";
import { ErrorBox, fmtTime } from "./util";

function WaveBar({ w }: { w: WaveResult }) {
  const t = w.nodes || 1;
  const pct = (n: number) => `${(100 * n) / t}%`;
  const finished = w.done + w.failed + w.skipped;
  return (
    <div class="wbar" role="progressbar" aria-label={`wave ${w.name}`} aria-valuemin={0} aria-valuemax={w.nodes} aria-valuenow={finished}
      aria-valuetext={`${w.done} done, ${w.failed} failed, ${w.skipped} skipped, ${w.inFlight} in flight, ${w.pending} pending of ${w.nodes}`}>
      <span class="s-done" style={{ width: pct(w.done) }} />
      <span class="s-failed" style={{ width: pct(w.failed) }} />
      <span class="s-skipped" style={{ width: pct(w.skipped) }} />
      <span class="s-inflight" style={{ width: pct(w.inFlight) }} />
    </div>
  );
}

type Action = "pause" | "resume" | "abort";

export function RolloutPage({ id, me }: { id: string; me: Identity }) {
  const [d, setD] = useState<RolloutDetail | null>(null);
  const [list, setList] = useState<RolloutInfo[]>([]);
  const [err, setErr] = useState("");
  const [live, setLive] = useState(false);
  const [updated, setUpdated] = useState("");
  const [confirm, setConfirm] = useState<Action | null>(null);
  const [msg, setMsg] = useState("");
  const dlg = useRef<HTMLDialogElement>(null);

  useEffect(() => {
    api.rollouts().then(setList, () => {});
    let es: EventSource | null = null;
    api.rollout(id).then(
      (x) => {
        setD(x);
        markReady("rollout");
        es = new EventSource(api.eventsURL(x.status.rollout));
        es.addEventListener("status", (ev) => {
          const v = JSON.parse((ev as MessageEvent).data);
          if (v.error) { setErr(v.error); return; }
          setD(v);
          setErr("");
          setUpdated(new Date().toISOString().slice(11, 19));
        });
        es.onopen = () => setLive(true);
        es.onerror = () => setLive(false);
      },
      (e) => setErr(e.message),
    );
    return () => es?.close();
  }, [id]);

  useEffect(() => {
    if (confirm) dlg.current?.showModal();
    else dlg.current?.close();
  }, [confirm]);

  if (!d) return err ? <ErrorBox err={err} /> : <p class="loading">Loading…</p>;
  const s = d.status;
  const operator = me.role === "operator";
  const active = s.state === "running" || s.state === "paused";

  const act = async (a: Action) => {
    setConfirm(null);
    try {
      const r = await api.act(s.rollout, a);
      setMsg(`${a}: ${r.outcome} (rollout ${r.state})`);
    } catch (e) {
      setMsg(`${a} refused: ${(e as Error).message}`);
    }
  };

  return (
    <section aria-labelledby="ro-h">
      <h1 id="ro-h">
        Rollout {s.name} <span class={"chip st-" + s.state} data-testid="rollout-state">{s.state}</span>
        {s.simulated && <span class="chip sim">SIMULATED</span>}
      </h1>
      {list.length > 1 && (
        <label class="pick">Rollout{" "}
          <select value={s.rollout} onChange={(e) => { location.hash = "#/rollout/" + (e.target as HTMLSelectElement).value; }}>
            {list.map((r) => <option value={r.id}>{r.name} · {r.id} · {r.state}</option>)}
          </select>
        </label>
      )}
      <p class="sub">
        {s.rollout} · {d.rollout.image} · desired <strong data-testid="desired">{s.desired}</strong>
        {s.executor && <> · executed by {s.executor}</>}{s.reason && <> · {s.reason}</>}
        {" · "}<span data-testid="live" class={live ? "live on" : "live"}>{live ? "live" : "not live"}</span>{updated && <> · updated {updated} UTC</>}
      </p>

      <div class="actions">
        {operator ? (
          <>
            <button disabled={!active || s.desired === "pause"} onClick={() => setConfirm("pause")} data-testid="btn-pause">Pause</button>
            <button disabled={s.state !== "paused"} onClick={() => setConfirm("resume")} data-testid="btn-resume">Resume</button>
            <button class="danger" disabled={!active} onClick={() => setConfirm("abort")} data-testid="btn-abort">Abort</button>
          </>
        ) : (
          <p class="hint" data-testid="readonly-note">Read-only: pause, resume and abort need the operator role.</p>
        )}
        {msg && <p role="status" data-testid="action-msg">{msg}</p>}
      </div>
      <dialog ref={dlg} onClose={() => setConfirm(null)} aria-labelledby="dlg-h">
        <h2 id="dlg-h">{confirm} rollout {s.name}?</h2>
        <p>
          {confirm === "pause" && "No new node starts; nodes in flight finish their health gate."}
          {confirm === "resume" && "The rollout continues where it stopped."}
          {confirm === "abort" && "The rollout stops for good; nodes in flight finish (and roll back if they fail)."}
          {" "}This is recorded in the audit log as {me.name}.
        </p>
        <form method="dialog" class="dlg-actions">
          <button value="cancel" data-testid="dlg-cancel">Cancel</button>
          <button type="button" class={confirm === "abort" ? "danger" : ""} data-testid="dlg-confirm" onClick={() => confirm && act(confirm)}>
            Yes, {confirm}
          </button>
        </form>
      </dialog>

      <div class="cards">
        <div class="card"><div class="big" data-testid="done">{s.done}</div>done of {s.nodes}</div>
        <div class="card"><div class="big">{s.failed}</div>failed ({s.rolledBack} rolled back)</div>
        <div class="card"><div class="big">{s.skipped}</div>skipped</div>
        <div class="card"><div class="big">{s.pending}</div>not finished</div>
        <div class="card" data-testid="budget"><div class="big">{d.budget.left}</div>failures left of budget {d.budget.allowed} (used {d.budget.used})</div>
        <div class="card"><div class="big">{s.eta ? fmtTime(s.eta).slice(11) : "—"}</div>ETA{s.nodesPerMinute ? ` at ${s.nodesPerMinute.toFixed(0)} nodes/min` : ""}</div>
      </div>

      <h2>Waves</h2>
      <table data-testid="waves">
        <thead>
          <tr><th scope="col">#</th><th scope="col">Wave</th><th scope="col">State</th><th scope="col">Progress</th>
            <th scope="col">Done</th><th scope="col">Failed</th><th scope="col">Budget left</th><th scope="col">Skipped</th>
            <th scope="col">In flight</th><th scope="col">Pending</th></tr>
        </thead>
        <tbody>
          {s.waves.map((w, i) => (
            <tr data-testid="wave" data-state={w.state} data-index={w.index}>
              <td>{w.index}</td><th scope="row">{w.name}</th><td>{w.state}</td><td><WaveBar w={w} /></td>
              <td class="num">{w.done}</td><td class="num">{w.failed}</td>
              <td class="num">{d.waveBudgets[i]?.left} / {d.waveBudgets[i]?.allowed}</td>
              <td class="num">{w.skipped}</td><td class="num">{w.inFlight}</td><td class="num">{w.pending}</td>
            </tr>
          ))}
        </tbody>
      </table>

      <h2>Waiting for maintenance windows</h2>
      {s.waitingForWindow === 0 ? <p>No node of the current wave waits for a window.</p> : (
        <>
          <p data-testid="waiting">{s.waitingForWindow} nodes wait; the next window opens {fmtTime(s.nextWindow)}.</p>
          <table>
            <thead><tr><th scope="col">Site</th><th scope="col">Nodes</th><th scope="col">Opens</th></tr></thead>
            <tbody>{d.waiting.slice(0, 50).map((w) => <tr><th scope="row">{w.site}</th><td class="num">{w.nodes}</td><td>{fmtTime(w.nextOpen)}</td></tr>)}</tbody>
          </table>
        </>
      )}

      <h2>Failures ({d.failuresTotal})</h2>
      {d.failures.length === 0 ? <p>No node failed.</p> : (
        <table data-testid="failures">
          <thead><tr><th scope="col">Node</th><th scope="col">Site</th><th scope="col">Wave</th><th scope="col">Gate reason</th><th scope="col">Rolled back</th><th scope="col">At</th></tr></thead>
          <tbody>
            {d.failures.slice(0, 50).map((f) => (
              <tr>
                <th scope="row"><a href={`#/node/${encodeURIComponent(f.cluster)}/${encodeURIComponent(f.node)}`}>{f.cluster}/{f.node}</a></th>
                <td>{f.site}</td><td>{f.wave}</td><td>{f.error}</td><td>{f.rolledBack ? "yes" : "no"}</td><td>{fmtTime(f.at)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {d.failuresTotal > 50 && <p class="hint">Newest 50 of {d.failuresTotal}; the API returns up to 200.</p>}
      <ErrorBox err={err} />
    </section>
  );
}
