// A zmq-emitter subscriber in Node.js with nothing but the `zeromq` (v6) and `@msgpack/msgpack` packages.
// It follows docs/protocol.md.  One JSON line per message on stdout:
// {"topic": ..., "pub": ..., "seq": ..., "payload": {...}} (msgpack payloads shown as JSON);
// gaps and skipped input on stderr.
//
//   npm ci                          (in this folder; installs zeromq v6 and @msgpack/msgpack)
//   node subscribe.mjs tcp://127.0.0.1:5558                         # everything
//   node subscribe.mjs tcp://127.0.0.1:5558 event/RUN/ --until-done  # one run, stop at its end
import { decode as decodeMsgpack } from "@msgpack/msgpack";
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

const KINDS = new Set(["status", "event", "publisher"]);
const skip = (why) => console.error(`skipped a message (${why}); ${++skipped} so far`);

for await (const frames of sock) {
  let topic, kind, name, header, pub, seq, payload;
  try { // 1. the envelope: three frames, a topic, a version 1 header with pub and seq
    if (frames.length !== 3) throw new Error(`${frames.length} frames`);
    topic = utf8.decode(frames[0]);
    const parts = topic.split("/");
    if (parts.length < 3) throw new Error("topic is not kind/ident/name");
    [kind, name] = [parts[0], parts.slice(2).join("/")];
    header = JSON.parse(utf8.decode(frames[1]));
    if (header === null || typeof header !== "object" || header.v !== 1) throw new Error("not a version 1 header");
    ({ pub, seq } = header);
    // seq: an integer >= 1. JSON numbers are doubles here: exact up to 2^53, far beyond any real sequence.
    if (typeof pub !== "string" || !Number.isSafeInteger(seq) || seq < 1) throw new Error("bad pub/seq");
  } catch (err) {
    skip(err.message);
    continue;
  }
  // 2. gaps and duplicates: seq rises by one per message of each publisher, whatever its kind or codec
  // (so counted before a kind or codec this client does not know is skipped).
  const last = lastSeq.get(pub);
  if (last !== undefined && seq <= last) continue;
  if (last !== undefined && seq > last + 1 && prefixes.length === 1 && prefixes[0] === "") {
    console.error(`gap: publisher ${pub} seq ${last + 1}..${seq - 1} missed`);
  }
  lastSeq.set(pub, seq);
  let line;
  try { // 3. the payload
    if (!KINDS.has(kind)) throw new Error(`kind ${kind}`);
    if (header.codec === "json") payload = JSON.parse(utf8.decode(frames[2]));
    else if (header.codec === "msgpack") payload = decodeMsgpack(frames[2]);
    else throw new Error(`codec ${header.codec}`);
    if (payload === null || typeof payload !== "object" || Array.isArray(payload)) throw new Error("payload is not a map");
    line = JSON.stringify({ topic, pub, seq, payload }); // (a value JSON cannot show, e.g. a BigInt, is skipped)
  } catch (err) {
    skip(err.message);
    continue;
  }
  process.stdout.write(line + "\n");
  if (untilDone && kind === "status" && FINAL.has(name)) {
    sock.close();
    break;
  }
}
