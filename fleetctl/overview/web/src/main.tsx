import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { api, Identity } from "./api";
import { FleetPage } from "./fleet";
import { NodePage } from "./node";
import { RolloutPage } from "./rollout";
import "./style.css";

// Routes live in the hash (#/fleet?..., #/node/<cluster>/<node>, #/rollout/<id>)
// so the server only ever serves one page.
function useRoute(): string {
  const [h, setH] = useState(location.hash || "#/fleet");
  useEffect(() => {
    const on = () => setH(location.hash || "#/fleet");
    addEventListener("hashchange", on);
    return () => removeEventListener("hashchange", on);
  }, []);
  return h;
}

function Login({ onLogin }: { onLogin: (id: Identity) => void }) {
  const [token, setToken] = useState("");
  const [err, setErr] = useState("");
  return (
    <main class="login">
      <h1>labfleet overview</h1>
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          try {
            const id = await api.login(token);
            setToken("");
            onLogin(id);
          } catch (x) {
            setErr((x as Error).message);
          }
        }}
      >
        <label for="token">Access token</label>
        <input id="token" type="password" autocomplete="current-password" value={token}
          onInput={(e) => setToken((e.target as HTMLInputElement).value)} required />
        <button type="submit">Log in</button>
        {err && <p role="alert" class="error">{err}</p>}
        <p class="hint">Or open this page with a client certificate your hub trusts.</p>
      </form>
    </main>
  );
}

function App() {
  const [me, setMe] = useState<Identity | null | undefined>(undefined);
  const route = useRoute();
  useEffect(() => {
    api.session().then((s) => setMe(s.authenticated ? (s as Identity) : null), () => setMe(null));
  }, []);
  if (me === undefined) return <p class="loading">Loading…</p>;
  if (me === null) return <Login onLogin={setMe} />;

  const [path, query = ""] = route.slice(1).split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  let page;
  switch (parts[0]) {
    case "node":
      page = <NodePage cluster={parts[1]} node={parts[2]} />;
      break;
    case "rollout":
      page = <RolloutPage id={parts[1] ?? "latest"} me={me} />;
      break;
    default:
      page = <FleetPage query={query} />;
  }
  return (
    <>
      <header>
        <nav aria-label="Main">
          <strong>labfleet</strong>
          <a href="#/fleet" aria-current={parts[0] === "fleet" || !parts[0] ? "page" : undefined}>Fleet</a>
          <a href="#/rollout/latest" aria-current={parts[0] === "rollout" ? "page" : undefined}>Rollout</a>
        </nav>
        <span class="who" data-testid="who">
          {me.name} ({me.role})
          <button class="link" onClick={async () => { await api.logout(); setMe(null); }}>Log out</button>
        </span>
      </header>
      <main>{page}</main>
    </>
  );
}

render(<App />, document.getElementById("app")!);
