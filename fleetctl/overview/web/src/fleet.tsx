import { useEffect, useState } from "preact/hooks";
import { api, Clusters, Fleet, markReady, RegionView, SiteView } from "./api";
import { Badge, ErrorBox, fmtTime, HealthBar, HealthCounts, HEALTHS } from "./util";

const FILTERS = ["region", "site", "version", "health", "window", "secureBoot", "encryption", "q"] as const;

function setQuery(p: URLSearchParams) {
  for (const [k, v] of [...p]) if (!v) p.delete(k);
  location.hash = "#/fleet" + (p.toString() ? "?" + p.toString() : "");
}

function Select({ name, label, values, p }: { name: string; label: string; values: string[]; p: URLSearchParams }) {
  return (
    <label>
      {label}
      <select name={name} data-testid={"filter-" + name} value={p.get(name) ?? ""}
        onChange={(e) => { p.set(name, (e.target as HTMLSelectElement).value); setQuery(p); }}>
        <option value="">all</option>
        {values.map((v) => <option value={v}>{v}</option>)}
      </select>
    </label>
  );
}

function ClusterTable({ query, site }: { query: string; site?: string }) {
  const [data, setData] = useState<Clusters | null>(null);
  const [err, setErr] = useState("");
  useEffect(() => {
    const p = new URLSearchParams(query);
    if (site) p.set("site", site);
    p.set("limit", "200");
    api.clusters(p.toString()).then(setData, (e) => setErr(e.message));
  }, [query, site]);
  if (err) return <ErrorBox err={err} />;
  if (!data) return <p class="loading">Loading clusters…</p>;
  return (
    <div class="clusters" data-testid={"clusters-" + (site ?? "search")}>
      {data.total > data.clusters.length && <p class="hint">{data.clusters.length} of {data.total} matching clusters shown; narrow the filters.</p>}
      <table>
        <caption class="sr-only">Clusters{site ? " of " + site : ""}</caption>
        <thead><tr><th scope="col">Cluster</th><th scope="col">Health</th><th scope="col">Nodes</th></tr></thead>
        <tbody>
          {data.clusters.map((c) => (
            <tr>
              <th scope="row">{c.name}<div class="sub">{c.site}</div></th>
              <td><Badge h={c.health} /></td>
              <td>
                <ul class="nodes">
                  {c.nodes.map((n) => (
                    <li>
                      <a href={`#/node/${encodeURIComponent(n.cluster)}/${encodeURIComponent(n.name)}`} data-testid="node-link">{n.name}</a>{" "}
                      <span class="sub">{n.role} · {n.version}</span> <Badge h={n.health} />
                      {n.secureBoot !== "unknown" && <span class="sub"> · SB {n.secureBoot}</span>}
                      {n.encryption !== "unknown" && <span class="sub"> · enc {n.encryption}</span>}
                    </li>
                  ))}
                </ul>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function SiteRow({ s, query }: { s: SiteView; query: string }) {
  const [open, setOpen] = useState(false);
  const win = s.alwaysOpen ? "always open" : s.windowOpen ? "open until " + fmtTime(s.openUntil) : "closed";
  return (
    <>
      <tr data-testid="site-row" data-site={s.name}>
        <th scope="row">
          <button class="link" aria-expanded={open} onClick={() => setOpen(!open)}>{open ? "▾" : "▸"} {s.name}</button>
          {s.country && <span class="sub"> {s.country}</span>}
        </th>
        <td>{s.localTime}<div class="sub">{s.timezone}</div></td>
        <td><span class={s.windowOpen ? "chip h-healthy" : "chip h-unknown"}>{win}</span></td>
        <td>{s.windowOpen || s.alwaysOpen ? "—" : fmtTime(s.nextOpen)}</td>
        <td class="num">{s.clusters}</td>
        <td class="num">{s.nodes}</td>
        <td><HealthBar c={s} label={s.name} /><HealthCounts c={s} /></td>
      </tr>
      {open && (
        <tr><td colSpan={7}><ClusterTable query={query} site={s.name} /></td></tr>
      )}
    </>
  );
}

// Region renders its site table only while open: 1,000 sites stay cheap.
function Region({ r, query, open }: { r: RegionView; query: string; open: boolean }) {
  const [isOpen, setOpen] = useState(open);
  return (
    <details class="region" data-testid="region" open={isOpen} onToggle={(e) => setOpen((e.target as HTMLDetailsElement).open)}>
      <summary>
        <span class="rname">{r.name}</span> {r.sites.length} sites · {r.clusters} clusters · {r.nodes} nodes{" "}
        <HealthBar c={r} label={r.name} /> <HealthCounts c={r} />
      </summary>
      {isOpen && (
        <table>
          <caption class="sr-only">Sites of {r.name}</caption>
          <thead>
            <tr>
              <th scope="col">Site</th><th scope="col">Local time</th><th scope="col">Window now</th>
              <th scope="col">Next opening</th><th scope="col">Clusters</th><th scope="col">Nodes</th><th scope="col">Health</th>
            </tr>
          </thead>
          <tbody>{r.sites.map((s) => <SiteRow key={s.name} s={s} query={query} />)}</tbody>
        </table>
      )}
    </details>
  );
}

export function FleetPage({ query }: { query: string }) {
  const [fleet, setFleet] = useState<Fleet | null>(null);
  const [loaded, setLoaded] = useState("");
  const [err, setErr] = useState("");
  const p = new URLSearchParams(query);
  const [q, setQ] = useState(p.get("q") ?? "");
  useEffect(() => {
    const api_q = new URLSearchParams();
    for (const k of FILTERS) if (p.get(k)) api_q.set(k, p.get(k)!);
    api.fleet(api_q.toString()).then((f) => { setFleet(f); setLoaded(api_q.toString()); setErr(""); markReady("fleet"); }, (e) => setErr(e.message));
  }, [query]);

  const active = FILTERS.some((k) => p.get(k));
  return (
    <section aria-labelledby="fleet-h">
      <h1 id="fleet-h">Fleet</h1>
      <form class="filters" role="search" onSubmit={(e) => { e.preventDefault(); p.set("q", q); setQuery(p); }}>
        <label>Search
          <input type="search" data-testid="search" placeholder="cluster, node, site" value={q}
            onInput={(e) => setQ((e.target as HTMLInputElement).value)} />
        </label>
        <Select name="region" label="Region" values={fleet?.regions.map((r) => r.name) ?? (p.get("region") ? [p.get("region")!] : [])} p={p} />
        <Select name="version" label="Version" values={fleet?.versions ?? []} p={p} />
        <Select name="health" label="Health" values={[...HEALTHS]} p={p} />
        <Select name="window" label="Window now" values={["open", "closed"]} p={p} />
        <Select name="secureBoot" label="Secure Boot" values={["on", "off", "unknown"]} p={p} />
        <Select name="encryption" label="Encryption" values={["on", "off", "unknown"]} p={p} />
        <button type="submit">Apply</button>
        {active && <button type="button" class="link" onClick={() => { setQ(""); setQuery(new URLSearchParams()); }}>Clear filters</button>}
      </form>
      <ErrorBox err={err} />
      {fleet && (
        <>
          <p class="totals" data-testid="totals" data-query={loaded}>
            <strong data-testid="total-clusters">{fleet.total.clusters}</strong> clusters,{" "}
            <strong data-testid="total-nodes">{fleet.total.nodes}</strong> nodes{active ? " match" : ""} <HealthCounts c={fleet.total} />
            {fleet.latestRollout && <> · <a href={"#/rollout/" + fleet.latestRollout}>current rollout</a></>}
          </p>
          {p.get("q") && <ClusterTable query={query} />}
          {fleet.regions.map((r) => <Region r={r} query={query} open={fleet.regions.length === 1 || active} />)}
        </>
      )}
    </section>
  );
}
