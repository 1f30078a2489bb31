// Types and calls of the overview API (docs/overview-api.md).

export type Health = "healthy" | "failed" | "upgrading" | "unknown";

export interface Identity { name: string; role: "operator" | "read-only"; method: string }
export interface Counts { clusters: number; nodes: number; health: Record<string, number> | null }
export interface SiteView extends Counts {
  name: string; region: string; country?: string; timezone: string; localTime: string;
  windowOpen: boolean; alwaysOpen: boolean; openUntil?: string; nextOpen?: string;
}
export interface RegionView extends Counts { name: string; sites: SiteView[] }
export interface Fleet {
  generatedAt: string; total: Counts; versions: string[]; regions: RegionView[]; latestRollout?: string;
}
export interface NodeView {
  cluster: string; name: string; role: string; endpoint: string; site: string; region: string;
  version: string; health: Health; state?: string; target?: string; error?: string; rolledBack?: boolean;
  secureBoot: string; encryption: string; lastSeen?: string; updatedAt?: string;
}
export interface ClusterView { name: string; site: string; region: string; health: Health; labels?: Record<string, string>; nodes: NodeView[] }
export interface Clusters { total: number; offset: number; clusters: ClusterView[] }
export interface Step { at: string; action: string; detail?: string; actor: string }
export interface HistoryEntry {
  rollout: string; rolloutName: string; target: string; fromVersion?: string; state: string; kind: string;
  error?: string; rolledBack: boolean; upgradeCalls: number; updatedAt?: string; steps: Step[];
}
export interface NodeDetail extends NodeView {
  labels?: Record<string, string>; history: HistoryEntry[]; events: string[]; kernelLog: string[]; factsSource: string;
}
export interface WaveResult {
  index: number; name: string; state: string; nodes: number; done: number; failed: number;
  skipped: number; inFlight: number; pending: number; maxFailures: number;
}
export interface Status {
  rollout: string; name: string; state: string; reason?: string; simulated: boolean; waves: WaveResult[];
  nodes: number; done: number; failed: number; rolledBack: number; skipped: number; pending: number;
  desired: string; executor?: string; startedAt: string; nodesPerMinute: number; eta?: string;
  waitingForWindow: number; nextWindow?: string;
}
export interface Budget { allowed: number; used: number; left: number }
export interface Failure { cluster: string; node: string; site: string; wave: number; error: string; rolledBack: boolean; at: string }
export interface WaitingSite { site: string; nodes: number; nextOpen: string }
export interface RolloutInfo { id: string; name: string; image: string; version: string; state: string; desired: string; createdAt: string; createdBy: string }
export interface RolloutDetail {
  status: Status; rollout: RolloutInfo; budget: Budget; waveBudgets: Budget[];
  failures: Failure[]; failuresTotal: number; waiting: WaitingSite[];
}

export class ApiError extends Error {
  constructor(public status: number, message: string) { super(message); }
}

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const req = () => fetch(path, {
    method,
    credentials: "same-origin",
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let res: Response;
  try {
    res = await req();
  } catch (e) {
    // A GET that failed in the network (not an HTTP error: the browser saw
    // the network change, for example) is asked once more; actions are not.
    if (method !== "GET") throw e;
    res = await req();
  }
  if (res.status === 204) return undefined as T;
  const data = await res.json().catch(() => ({ error: res.statusText }));
  if (!res.ok) throw new ApiError(res.status, data.error ?? res.statusText);
  return data as T;
}

export const api = {
  session: () => call<{ authenticated: boolean } & Partial<Identity>>("GET", "/api/v1/session"),
  login: (token: string) => call<Identity>("POST", "/api/v1/login", { token }),
  logout: () => call<void>("POST", "/api/v1/logout"),
  fleet: (q: string) => call<Fleet>("GET", "/api/v1/fleet?" + q),
  clusters: (q: string) => call<Clusters>("GET", "/api/v1/clusters?" + q),
  node: (cluster: string, node: string) =>
    call<NodeDetail>("GET", `/api/v1/nodes/${encodeURIComponent(cluster)}/${encodeURIComponent(node)}`),
  rollouts: () => call<RolloutInfo[]>("GET", "/api/v1/rollouts"),
  rollout: (id: string) => call<RolloutDetail>("GET", `/api/v1/rollouts/${encodeURIComponent(id)}`),
  act: (id: string, action: "pause" | "resume" | "abort") =>
    call<{ outcome: string; state: string }>("POST", `/api/v1/rollouts/${encodeURIComponent(id)}/${action}`),
  eventsURL: (id: string) => `/api/v1/rollouts/${encodeURIComponent(id)}/events`,
};

// markReady records the first meaningful paint of a page for the browser
// test (window.__ready[page] = ms since navigation start).
export function markReady(page: string) {
  const w = window as unknown as { __ready?: Record<string, number> };
  w.__ready ??= {};
  if (w.__ready[page] === undefined) {
    requestAnimationFrame(() => { w.__ready![page] ??= performance.now(); });
  }
}
