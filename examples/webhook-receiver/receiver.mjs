// An agency's Enlace webhook receiver in plain Node.js (no packages): verifies the Standard Webhooks
// signature, rejects stale timestamps, and ignores a webhook-id it has already processed.
//
//   ENLACE_WEBHOOK_SECRET=whsec_... PORT=8099 node receiver.mjs
//
// During a secret rotation, set ENLACE_WEBHOOK_SECRET to both secrets separated by a space.
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";

const TOLERANCE_S = 5 * 60;
const secrets = (process.env.ENLACE_WEBHOOK_SECRET ?? "").split(/\s+/).filter(Boolean)
  .map((s) => Buffer.from(s.replace(/^whsec_/, ""), "base64"));
const seen = new Set(); // use a database table in production: webhook-ids survive restarts there

export function verify(body, headers, keys = secrets, now = Date.now() / 1000) {
  const id = headers["webhook-id"], timestamp = headers["webhook-timestamp"], signatures = headers["webhook-signature"];
  if (!id || !timestamp || !signatures) return "missing webhook-id, webhook-timestamp or webhook-signature";
  if (!/^\d+$/.test(timestamp) || Math.abs(now - Number(timestamp)) > TOLERANCE_S) return "timestamp outside tolerance";
  const signed = Buffer.from(`${id}.${timestamp}.${body}`);
  for (const key of keys) {
    const expected = createHmac("sha256", key).update(signed).digest();
    for (const candidate of signatures.split(" ")) {
      const [version, value] = candidate.split(",", 2);
      if (version !== "v1" || !value) continue;
      const given = Buffer.from(value, "base64");
      if (given.length === expected.length && timingSafeEqual(given, expected)) return null;
    }
  }
  return "no valid signature";
}

const server = createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    const problem = verify(body, req.headers);
    if (problem) {
      console.log(JSON.stringify({ accepted: false, problem }));
      res.writeHead(401).end();
      return;
    }
    const id = req.headers["webhook-id"];
    const duplicate = seen.has(id);
    seen.add(id);
    const event = JSON.parse(body);
    // Fetch the details from the link under your own token; the payload holds ids only.
    console.log(JSON.stringify({ accepted: true, duplicate, webhook_id: id, type: event.type, event }));
    res.writeHead(204).end();
  });
});

if (process.argv[1] && import.meta.url === `file://${process.argv[1]}`) {
  const port = Number(process.env.PORT ?? 8099);
  server.listen(port, "127.0.0.1", () => console.log(JSON.stringify({ listening: port })));
}
