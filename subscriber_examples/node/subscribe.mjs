// A zmq-emitter subscriber in Node.js with nothing but the `zeromq` package (v6) and JSON.
// It follows docs/protocol.md.  One JSON line per message on stdout:
// {"topic": ..., "pub": ..., "seq": ..., "payload": {...}}; gaps and skipped input on stderr.
//
//   npm install                     (in this folder; installs zeromq v6)
//   node subscribe.mjs tcp://127.0.0.1:5558                         # everything
//   node subscribe.mjs tcp://127.0.0.1:5558 event/RUN/ --until-done  # one run, stop at its end
import { Subscriber } from "zeromq";

const FINAL = new Set(["successful", "failed", "timeout", "canceled", "error"]);
const args = process.argv.slice(2).filter((a) => a !== "--until-done");
const untilDone = process.argv.includes("--until-done");
if (args.length === 0) {
  console.error("usage: node subscribe.mjs ENDPOINT [PREFIX...] [--until-done]");
  process.exit(2);
}
const [endpoint, ...given] = args;
const prefixes = given.length ? given : [""];

const sock = new Subscriber();
for (const prefix of prefixes) sock.subscribe(prefix);
if (untilDone && !prefixes.some((p) => p === "" || p.startsWith("status"))) {
  // the run's final status is needed to know when it is done
  for (const prefix of prefixes) sock.subscribe("status/" + prefix.split("/").slice(1).join("/"));
}
sock.connect(endpoint);

const lastSeq = new Map();
let skipped = 0;
const utf8 = new TextDecoder("utf-8", { fatal: true });

for await (const frames of sock) {
  let topic, kind, name, pub, seq, payload;
  try {
    if (frames.length !== 3) throw new Error(`${frames.length} frames`);
    topic = utf8.decode(frames[0]);
    const parts = topic.split("/");
    if (parts.length < 3) throw new Error("topic is not kind/ident/name");
    [kind, name] = [parts[0], parts.slice(2).join("/")];
    const header = JSON.parse(utf8.decode(frames[1]));
    if (header === null || typeof header !== "object" || header.v !== 1) throw new Error("not a version 1 header");
    if (header.codec !== "json") throw new Error(`codec ${header.codec}`); // msgpack needs a msgpack library
    ({ pub, seq } = header);
    if (typeof pub !== "string" || !Number.isInteger(seq) || seq < 1) throw new Error("bad pub/seq");
    payload = JSON.parse(utf8.decode(frames[2]));
  } catch (err) {
    skipped += 1;
    console.error(`skipped a message (${err.message}); ${skipped} so far`);
    continue;
  }
  // Gaps and duplicates: seq rises by one per message of each publisher.
  const last = lastSeq.get(pub);
  if (last !== undefined && seq <= last) continue;
  if (last !== undefined && seq > last + 1 && prefixes.length === 1 && prefixes[0] === "") {
    console.error(`gap: publisher ${pub} seq ${last + 1}..${seq - 1} missed`);
  }
  lastSeq.set(pub, seq);
  process.stdout.write(JSON.stringify({ topic, pub, seq, payload }) + "\n");
  if (untilDone && kind === "status" && FINAL.has(name)) {
    sock.close();
    break;
  }
}
