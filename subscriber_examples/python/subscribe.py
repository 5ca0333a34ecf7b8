#!/usr/bin/env python3
"""A zmq-emitter subscriber with nothing but pyzmq, the standard library's json and msgpack.

It does not import zmq_emitter: it follows docs/protocol.md, as a client in any
language would.  One JSON line per message on stdout:
{"topic": ..., "pub": ..., "seq": ..., "payload": {...}} (msgpack payloads shown as JSON);
gaps and skipped input on stderr.

    pip install pyzmq msgpack
    python3 subscribe.py tcp://127.0.0.1:5558                       # everything
    python3 subscribe.py tcp://127.0.0.1:5558 event/RUN/ --until-done  # one run, stop at its end
"""
import json
import sys

import msgpack
import zmq

FINAL = {"successful", "failed", "timeout", "canceled", "error"}
KINDS = {"status", "event", "publisher"}


def main(argv):
    args = [a for a in argv if a != "--until-done"]
    if not args:
        sys.exit(__doc__)
    endpoint, prefixes = args[0], args[1:] or [""]
    until_done = "--until-done" in argv

    sock = zmq.Context().socket(zmq.SUB)
    for prefix in prefixes:
        sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    if until_done and not any(p == "" or p.startswith("status") for p in prefixes):
        # the run's final status is needed to know when it is done
        for prefix in prefixes:
            sock.setsockopt(zmq.SUBSCRIBE, ("status/" + prefix.split("/", 1)[1]).encode())
    sock.connect(endpoint)

    last_seq, skipped = {}, 0
    while True:
        frames = sock.recv_multipart()
        try:  # 1. the envelope: three frames, a topic, a version 1 header with pub and seq
            if len(frames) != 3:
                raise ValueError(f"{len(frames)} frames")
            topic = frames[0].decode()
            kind, ident, name = topic.split("/", 2)
            header = json.loads(frames[1])
            if not isinstance(header, dict) or header.get("v") != 1:
                raise ValueError("not a version 1 header")
            pub, seq = header.get("pub"), header.get("seq")
            if not isinstance(pub, str) or type(seq) is not int or seq < 1:  # (type: True is an int too)
                raise ValueError("pub is not a string or seq not an integer >= 1")
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            skipped += 1
            print(f"skipped a message ({exc}); {skipped} so far", file=sys.stderr, flush=True)
            continue
        # 2. gaps and duplicates: seq rises by one per message of each publisher, whatever its kind or codec
        # (so counted before a kind or codec this client does not know is skipped; gaps are meaningful when
        # subscribed to all of that publisher's messages).
        last = last_seq.get(pub)
        if last is not None and seq <= last:
            continue
        if last is not None and seq > last + 1 and prefixes == [""]:
            print(f"gap: publisher {pub} seq {last + 1}..{seq - 1} missed", file=sys.stderr, flush=True)
        last_seq[pub] = seq
        try:  # 3. the payload
            if kind not in KINDS:
                raise ValueError(f"kind {kind!r}")
            if header.get("codec") == "json":
                payload = json.loads(frames[2])
            elif header.get("codec") == "msgpack":
                payload = msgpack.unpackb(frames[2], raw=False, strict_map_key=False)
            else:
                raise ValueError(f"codec {header.get('codec')!r}")
            if not isinstance(payload, dict):
                raise ValueError("the payload is not a map")
            line = json.dumps({"topic": topic, "pub": pub, "seq": seq, "payload": payload})  # (msgpack bin: no JSON)
        except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
            skipped += 1
            print(f"skipped a message ({exc}); {skipped} so far", file=sys.stderr, flush=True)
            continue
        print(line, flush=True)
        if until_done and kind == "status" and name in FINAL:
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
