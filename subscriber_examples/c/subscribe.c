/* A zmq-emitter subscriber in C with libzmq, cJSON and msgpack-c only; it follows docs/protocol.md.
 * One JSON line per message on stdout: {"topic": ..., "pub": ..., "seq": ..., "payload": {...}} (msgpack
 * payloads shown as JSON); gaps and skipped input on stderr.  Debian: libzmq3-dev libcjson-dev libmsgpack-dev.
 *   cc -O2 -o subscribe subscribe.c $(pkg-config --cflags --libs libzmq libcjson msgpack)
 *   ./subscribe tcp://127.0.0.1:5558                          # everything
 *   ./subscribe tcp://127.0.0.1:5558 event/RUN/ --until-done  # one run, stop at its final status
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>
#include <cjson/cJSON.h>
#include <msgpack.h>
static const char *FINAL[] = {"successful", "failed", "timeout", "canceled", "error", NULL};
static struct last { char pub[64]; double seq; } *seen; static size_t publishers;  /* each one's last seq */

static int utf8_ok(const unsigned char *s, size_t n) {  /* well-formed UTF-8 without NUL */
  for (size_t i = 0; i < n; i++) {
    int more = s[i] < 0x80 ? 0 : (s[i] >> 5) == 6 ? 1 : (s[i] >> 4) == 14 ? 2 : (s[i] >> 3) == 30 ? 3 : -1;
    if (s[i] == 0 || more < 0 || i + more >= n + (more ? 0 : 1)) return 0;
    while (more--) if ((s[++i] & 0xC0) != 0x80) return 0;
  }
  return 1;
}

static cJSON *from_msgpack(const msgpack_object *o, int depth) {  /* NULL: not representable as JSON */
  cJSON *out = NULL;
  switch (depth > 250 ? MSGPACK_OBJECT_EXT : o->type) {  /* (too deep: as an ext type, not representable) */
  case MSGPACK_OBJECT_NIL: return cJSON_CreateNull();
  case MSGPACK_OBJECT_BOOLEAN: return cJSON_CreateBool(o->via.boolean);
  case MSGPACK_OBJECT_POSITIVE_INTEGER: return cJSON_CreateNumber((double)o->via.u64);
  case MSGPACK_OBJECT_NEGATIVE_INTEGER: return cJSON_CreateNumber((double)o->via.i64);
  case MSGPACK_OBJECT_FLOAT32: case MSGPACK_OBJECT_FLOAT64: return cJSON_CreateNumber(o->via.f64);
  case MSGPACK_OBJECT_STR: case MSGPACK_OBJECT_BIN: {  /* bin: shown as text, like the json codec */
    char *text = utf8_ok((const unsigned char *)o->via.str.ptr, o->via.str.size)
                 ? strndup(o->via.str.ptr, o->via.str.size) : NULL;
    out = text ? cJSON_CreateString(text) : NULL;
    return free(text), out;
  }
  case MSGPACK_OBJECT_ARRAY: case MSGPACK_OBJECT_MAP: {
    int map = o->type == MSGPACK_OBJECT_MAP;
    out = map ? cJSON_CreateObject() : cJSON_CreateArray();
    for (uint32_t i = 0; out && i < (map ? o->via.map.size : o->via.array.size); i++) {
      const msgpack_object *key = map ? &o->via.map.ptr[i].key : NULL;  /* keys: text only */
      cJSON *name = key && key->type == MSGPACK_OBJECT_STR ? from_msgpack(key, depth + 1) : NULL;
      cJSON *item = !map || name ? from_msgpack(map ? &o->via.map.ptr[i].val : &o->via.array.ptr[i], depth + 1) : NULL;
      if (!item) { cJSON_Delete(name); cJSON_Delete(out); return NULL; }
      if (map) cJSON_AddItemToObject(out, name->valuestring, item); else cJSON_AddItemToArray(out, item);
      cJSON_Delete(name);
    }
    return out;
  }
  default: return NULL;
  }
}

/* 1. The envelope: topic, a version 1 header, pub and seq; an error text if the message must be skipped. */
static const char *envelope(zmq_msg_t *f, char **topic, cJSON **head, const char **pub, double *seq) {
  if (!utf8_ok(zmq_msg_data(&f[0]), zmq_msg_size(&f[0]))) return "topic is not UTF-8 text";
  *topic = strndup(zmq_msg_data(&f[0]), zmq_msg_size(&f[0]));
  if (!strchr(*topic, '/') || !strchr(strchr(*topic, '/') + 1, '/')) return "topic is not kind/ident/name";
  *head = cJSON_ParseWithLength(zmq_msg_data(&f[1]), zmq_msg_size(&f[1]));
  cJSON *v = cJSON_GetObjectItemCaseSensitive(*head, "v"), *p = cJSON_GetObjectItemCaseSensitive(*head, "pub");
  cJSON *s = cJSON_GetObjectItemCaseSensitive(*head, "seq");
  if (!cJSON_IsObject(*head) || !cJSON_IsNumber(v) || v->valuedouble != 1) return "not a version 1 header";
  if (!cJSON_IsString(p) || strlen(p->valuestring) >= sizeof seen->pub) return "pub is not a short string";
  /* seq: an integer >= 1; C doubles hold integers exactly up to 2^53, far beyond any real sequence */
  if (!cJSON_IsNumber(s) || s->valuedouble < 1 || s->valuedouble > 9007199254740992.0
      || s->valuedouble != (double)(long long)s->valuedouble) return "seq is not an integer >= 1";
  return *pub = p->valuestring, *seq = s->valuedouble, NULL;
}

/* 2. Gaps and duplicates, whatever the kind or codec: 1 if pub's seq is new (gaps said when subscribed to all). */
static int fresh(const char *pub, double seq, int everything) {
  size_t i = 0; while (i < publishers && strcmp(seen[i].pub, pub)) i++;
  if (i == publishers) { seen = realloc(seen, ++publishers * sizeof *seen); strcpy(seen[i].pub, pub); seen[i].seq = 0; }
  if (seq <= seen[i].seq) return 0;
  if (everything && seen[i].seq && seq > seen[i].seq + 1)
    fprintf(stderr, "gap: publisher %s seq %.0f..%.0f missed\n", pub, seen[i].seq + 1, seq - 1);
  seen[i].seq = seq;
  return 1;
}

/* 3. The payload of a kind this client knows, decoded with its codec, as JSON. */
static const char *decode(zmq_msg_t *f, const char *topic, cJSON *head, cJSON **payload) {
  cJSON *codec = cJSON_GetObjectItemCaseSensitive(head, "codec");
  if (strncmp(topic, "status/", 7) && strncmp(topic, "event/", 6) && strncmp(topic, "publisher/", 10))
    return "a kind this client does not know";
  if (cJSON_IsString(codec) && !strcmp(codec->valuestring, "json")) {
    if (!utf8_ok(zmq_msg_data(&f[2]), zmq_msg_size(&f[2]))) return "payload is not UTF-8 JSON";
    *payload = cJSON_ParseWithLength(zmq_msg_data(&f[2]), zmq_msg_size(&f[2]));
  } else if (cJSON_IsString(codec) && !strcmp(codec->valuestring, "msgpack")) {
    msgpack_unpacked unpacked; size_t offset = 0;
    msgpack_unpacked_init(&unpacked);
    if (msgpack_unpack_next(&unpacked, zmq_msg_data(&f[2]), zmq_msg_size(&f[2]), &offset) == MSGPACK_UNPACK_SUCCESS
        && offset == zmq_msg_size(&f[2])) *payload = from_msgpack(&unpacked.data, 0);
    msgpack_unpacked_destroy(&unpacked);
  } else return "a codec this client does not know";
  return cJSON_IsObject(*payload) ? NULL : "payload is not an object of its codec";
}

int main(int argc, char **argv) {
  const char *endpoint = NULL, *prefixes[64], *why;
  int count = 0, until_done = 0, everything = 0, done = 0;
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--until-done")) until_done = 1;
    else if (!endpoint) endpoint = argv[i];
    else if (count < 64) prefixes[count++] = argv[i];
  if (!endpoint) return fprintf(stderr, "usage: subscribe ENDPOINT [PREFIX...] [--until-done]\n"), 2;
  if (!count) prefixes[count++] = "";
  void *context = zmq_ctx_new(), *sub = zmq_socket(context, ZMQ_SUB);
  for (int i = 0; i < count; i++) {
    char status[1024];  /* with --until-done, event/RUN/ needs status/RUN/ too: its final status ends the run */
    snprintf(status, sizeof status, "status/%s", prefixes[i] + (strncmp(prefixes[i], "event/", 6) ? 0 : 6));
    if (until_done && !strncmp(prefixes[i], "event/", 6)) zmq_setsockopt(sub, ZMQ_SUBSCRIBE, status, strlen(status));
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, prefixes[i], strlen(prefixes[i]));
    everything |= !*prefixes[i];
  }
  if (zmq_connect(sub, endpoint))
    return fprintf(stderr, "cannot connect to %s: %s\n", endpoint, zmq_strerror(zmq_errno())), 2;
  setvbuf(stdout, NULL, _IOLBF, 0);
  while (!done) {
    zmq_msg_t f[3]; int parts = 0, more;
    do {  /* one whole message; frames beyond three are read and dropped */
      if (parts >= 3) zmq_msg_close(&f[2]);
      zmq_msg_init(&f[parts < 3 ? parts : 2]);
      if (zmq_msg_recv(&f[parts < 3 ? parts : 2], sub, 0) < 0) return 1;
      more = zmq_msg_more(&f[parts < 3 ? parts : 2]), parts++;
    } while (more);
    char *topic = NULL; const char *pub = NULL; double seq = 0; cJSON *head = NULL, *payload = NULL;
    if ((why = parts == 3 ? envelope(f, &topic, &head, &pub, &seq) : "not three frames")
        || (fresh(pub, seq, everything) && (why = decode(f, topic, head, &payload))))
      fprintf(stderr, "skipped a message: %s\n", why);
    else if (payload) {  /* a new message: its line; a final status ends --until-done */
      cJSON *line = cJSON_CreateObject();
      cJSON_AddStringToObject(line, "topic", topic), cJSON_AddStringToObject(line, "pub", pub);
      cJSON_AddNumberToObject(line, "seq", seq), cJSON_AddItemReferenceToObject(line, "payload", payload);
      char *text = cJSON_PrintUnformatted(line), *name = strchr(strchr(topic, '/') + 1, '/') + 1;
      printf("%s\n", text);
      free(text), cJSON_Delete(line);
      for (const char **final = FINAL; until_done && *final; final++)
        done |= !strncmp(topic, "status/", 7) && !strcmp(name, *final);
    }
    free(topic), cJSON_Delete(head), cJSON_Delete(payload);
    for (int i = 0; i < (parts < 3 ? parts : 3); i++) zmq_msg_close(&f[i]);
  }
  zmq_close(sub), zmq_ctx_term(context);
  return 0;
}
