// The live feed: server-sent events read with fetch (the token goes in a header).
import { token } from "./api.js";

let controller = null;

export function connect({ onJobs, onCatalog, onState }) {
  disconnect();
  const mine = new AbortController();
  controller = mine;
  let backoff = 1000;
  (async () => {
    while (!mine.signal.aborted) {
      try {
        const res = await fetch("/api/v1/console/events", {
          headers: { Authorization: `Bearer ${token.get()}`, Accept: "text/event-stream" },
          signal: mine.signal,
        });
        if (res.status === 401) { onState(false); return; }
        if (!res.ok || !res.body) throw new Error(`event stream: ${res.status}`);
        onState(true);
        backoff = 1000;
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            let name = "message";
            let data = "";
            for (const line of block.split("\n")) {
              if (line.startsWith("event: ")) name = line.slice(7);
              else if (line.startsWith("data: ")) data += line.slice(6);
            }
            if (!data) continue;
            const parsed = JSON.parse(data);
            if (name === "jobs") onJobs(parsed);
            else if (name === "catalog") onCatalog(parsed);
          }
        }
      } catch (err) {
        if (mine.signal.aborted) return;
      }
      onState(false);
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 15000);
    }
  })();
}

export function disconnect() {
  if (controller) controller.abort();
  controller = null;
}
