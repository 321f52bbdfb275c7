/*
 * redis.c - queues on Redis Streams: redis://[user:password@]host:port[/db],
 * redis+unix:///path/redis.sock, and
 * redis+sentinel://[user:password@]s1:26379,s2:26379/master[/db]: the
 * master of that name, asked of the sentinels (SENTINEL
 * get-master-addr-by-name) whenever a connection is made, and checked
 * with ROLE; a connection that fails, or that gets -READONLY (its server
 * was made a replica), is made again, so producers and consumers follow a
 * failover.
 *
 * Keys (all under redis.prefix, default "evq:"): the stream <prefix><name>,
 * read through the consumer group "evq"; the sorted set
 * <prefix><name>:delayed holding delayed and nacked events scored by due
 * time (Unix ms).  A stream entry has fields b (the encoded event) and a
 * (deliveries before this entry was written: 0 for a new event, the attempt
 * count for a nacked one).
 *
 * - Enqueue: XADD (with redis.atomic_batches, a batch in MULTI/EXEC); a
 *   delayed event is a ZADD.  Batches go out on a connection of their own,
 *   several at once, their replies read back in order (struct rprod).
 * - Dequeue: XREADGROUP ... COUNT prefetch BLOCK on a connection of its own,
 *   so enqueues and acks never wait behind a blocking read; interrupt sends
 *   CLIENT UNBLOCK for it.  Due delayed events are moved to the stream by a
 *   Lua script any consumer runs, atomically, so nothing moves twice.
 *   Entries idle past visibility_timeout_ms (a consumer that died) are
 *   taken over with XAUTOCLAIM; their delivery counts come from XPENDING.
 * - Ack: XACK and XDEL in one round trip.  Nack: a script that re-adds
 *   the event (XADD, or ZADD with a due time) and acks and deletes the
 *   delivered entry.
 * - Leases: an entry is this handle's while the group's pending list names
 *   this handle's consumer and the delivery count it was read with (a
 *   takeover raises it).  Touch, nack, a late ack and the hand-back check
 *   that in a script first (settle_lua), so a consumer whose entry was
 *   taken over never settles the new owner's delivery.  Touch resets the
 *   entry's idle time with XCLAIM ... JUSTID, which keeps the count.
 *
 * Connections are per handle and used under the handle's locks; a command
 * connection that fails is reconnected on the next call, and until the
 * server is back calls fail with EVQ_ECONN.
 */
#include "../internal.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define RCONN_MAX 64

typedef struct rcfg {
    int64_t visibility_timeout_ms, prefetch, maxlen, connections,
        ack_flush_ms, connect_timeout_ms, command_timeout_ms, wait_replicas,
        wait_timeout_ms;
    const char *prefix, *sentinel_password;
    bool atomic_batches, priorities;
} rcfg;

static const evq__opt_spec redis_opts[] = {
    {"visibility_timeout_ms", EVQ__OPT_INT, "30000", 100, 86400000, NULL,
     "how long a delivered, unacked event waits before another consumer "
     "takes it over (a consumer that died)",
     EVQ__AT(rcfg, visibility_timeout_ms)},
    {"redis.prefix", EVQ__OPT_STRING, "evq:", 0, 0, NULL,
     "prefix of every key evq uses",
     EVQ__AT(rcfg, prefix)},
    {"redis.prefetch", EVQ__OPT_INT, "64", 1, 10000, NULL,
     "entries read per XREADGROUP",
     EVQ__AT(rcfg, prefetch)},
    {"redis.maxlen", EVQ__OPT_INT, "0", 0, INT64_MAX, NULL,
     "trim each stream to about this many entries (0: never); trimming can "
     "drop entries that were never delivered",
     EVQ__AT(rcfg, maxlen)},
    {"redis.atomic_batches", EVQ__OPT_BOOL, "false", 0, 0, NULL,
     "send a batch as one MULTI/EXEC transaction: all of it stored or none "
     "(about half the throughput of the plain pipeline, which on failure "
     "may store a prefix)",
     EVQ__AT(rcfg, atomic_batches)},
    {"redis.connections", EVQ__OPT_INT, "4", 1, RCONN_MAX, NULL,
     "command connections per handle, so threads sharing it enqueue and "
     "ack in parallel",
     EVQ__AT(rcfg, connections)},
    {"redis.ack_flush_ms", EVQ__OPT_INT, "5", 0, 10000, NULL,
     "longest an ack waits to be sent with others (0: each ack at once)",
     EVQ__AT(rcfg, ack_flush_ms)},
    EVQ__CONNECT_TIMEOUT_OPT(rcfg),
    {"redis.connect_timeout_ms", EVQ__OPT_INT, NULL, 1, 600000, NULL,
     "former name of connect_timeout_ms",
     EVQ__AT(rcfg, connect_timeout_ms)},
    {"redis.command_timeout_ms", EVQ__OPT_INT, "10000", 1, 600000, NULL,
     "timeout of each command (blocking reads excepted)",
     EVQ__AT(rcfg, command_timeout_ms)},
    {"redis.wait_replicas", EVQ__OPT_INT, "0", 0, 100, NULL,
     "an enqueue is reported stored only once this many replicas have it "
     "(WAIT after each batch); 0: once the server has it (a failover can "
     "lose the last writes)",
     EVQ__AT(rcfg, wait_replicas)},
    {"redis.wait_timeout_ms", EVQ__OPT_INT, "5000", 1, 600000, NULL,
     "how long a batch waits for redis.wait_replicas; fewer by then fails "
     "it (its events may be stored)",
     EVQ__AT(rcfg, wait_timeout_ms)},
    {"redis.priorities", EVQ__OPT_BOOL, "false", 0, 0, NULL,
     "keep events with evqpriority 1 to 9 in a stream per level "
     "(<stream>:p1 ... :p9) read by weight, highest first; every handle of "
     "the queue must set it (one that does not is refused)",
     EVQ__AT(rcfg, priorities)},
    {"redis.sentinel_password", EVQ__OPT_STRING, NULL, 0, 0, NULL,
     "redis+sentinel://: the sentinels' password (the URL's is the "
     "master's)",
     EVQ__AT(rcfg, sentinel_password)},
    {0},
};

/* Moves up to ARGV[2] events due by ARGV[1] from the delayed set to the
 * stream (that of the level a nonce ending in "/p<level>" names, with
 * redis.priorities); returns the score of the next one still waiting (or
 * -1). */
static const char promote_lua[] =
    "local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], "
    "'LIMIT', 0, tonumber(ARGV[2]))\n"
    "for _, m in ipairs(due) do\n"
    "  local c1 = string.find(m, ':', 1, true)\n"
    "  local c2 = string.find(m, ':', c1 + 1, true)\n"
    "  local key = KEYS[2]\n"
    "  local lv = string.match(string.sub(m, 1, c1 - 1), '/p(%d)$')\n"
    "  if lv and ARGV[3] == '1' then key = key .. ':p' .. lv end\n"
    "  redis.call('XADD', key, '*', 'b', string.sub(m, c2 + 1), 'a', "
    "string.sub(m, c1 + 1, c2 - 1))\n"
    "  redis.call('ZREM', KEYS[1], m)\n"
    "end\n"
    "local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')\n"
    "if #nxt == 0 then return -1 end\n"
    "return tonumber(nxt[2])\n";

/* Settles or touches one delivered entry KEYS[1] ARGV[3], only while the
 * group's pending list gives it to consumer ARGV[2] with delivery count
 * ARGV[4]; returns 1, or 0 when it is no longer ours.  ARGV[1]: "touch"
 * (reset its idle time), "ack", or "nack" (re-add body ARGV[7] with
 * attempt count ARGV[6]: to the stream, or when ARGV[5] is a due time
 * (Unix ms), to the delayed set KEYS[2] as member "ARGV[8]:ARGV[6]:body";
 * then ack and delete the entry). */
/* A token bucket (evq_worker_limit): KEYS[1] a hash of tokens and the
 * time they were counted (the server's clock, ms); ARGV rate a second,
 * burst.  Takes a token and returns 0, or returns the ms until one is
 * there.  The hash expires once the bucket would be full again. */
static const char take_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
    "local v = redis.call('HMGET', KEYS[1], 'tokens', 'at')\n"
    "local tokens = tonumber(v[1]) or burst\n"
    "local at = tonumber(v[2]) or now\n"
    "if now > at then tokens = tokens + (now - at) * rate / 1000 end\n"
    "if tokens > burst then tokens = burst end\n"
    "local wait = 0\n"
    "if tokens >= 1 then tokens = tokens - 1\n"
    "else wait = math.ceil((1 - tokens) * 1000 / rate) end\n"
    "redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)\n"
    "redis.call('PEXPIRE', KEYS[1],\n"
    "  math.ceil((burst - tokens) * 1000 / rate) + 1000)\n"
    "return wait\n";

static const char settle_lua[] =
    "local p = redis.call('XPENDING', KEYS[1], 'evq', ARGV[3], ARGV[3], 1)\n"
    "local e = p[1]\n"
    "if not e or e[2] ~= ARGV[2] or e[4] ~= tonumber(ARGV[4]) then "
    "return 0 end\n"
    "if ARGV[1] == 'touch' then\n"
    "  redis.call('XCLAIM', KEYS[1], 'evq', ARGV[2], 0, ARGV[3], 'JUSTID')\n"
    "  return 1\n"
    "end\n"
    "if ARGV[1] == 'nack' then\n"
    "  if ARGV[5] == '' then\n"
    "    redis.call('XADD', KEYS[1], '*', 'b', ARGV[7], 'a', ARGV[6])\n"
    "  else\n"
    "    redis.call('ZADD', KEYS[2], ARGV[5], ARGV[8] .. ':' .. ARGV[6] .. "
    "':' .. ARGV[7])\n"
    "  end\n"
    "end\n"
    "redis.call('XACK', KEYS[1], 'evq', ARGV[3])\n"
    "redis.call('XDEL', KEYS[1], ARGV[3])\n"
    "return 1\n";

/* Entries this consumer must read without taking them whole: with
 * ARGV[1] "claim", those XAUTOCLAIM takes over (idle ARGV[5] ms, from
 * cursor ARGV[6]); with "after", those delivered to consumer ARGV[2] once
 * (a read given up on) with ids past ARGV[5].  At most ARGV[3] of them.
 * Each comes back as {id, a, deliveries, stored, b}: when b is longer than
 * ARGV[4] bytes, or all fields together much longer, b is cut to ARGV[4]
 * bytes and `stored` is b's length (or the fields'); else `stored` is 0.
 * Returns {next cursor, entries}. */
static const char claim_lua[] =
    "local max = tonumber(ARGV[4])\n"
    "local out = {}\n"
    "local function add(id, f, n)\n"
    "  local b, a, size = '', '0', 0\n"
    "  for i = 1, #f - 1, 2 do\n"
    "    size = size + #f[i] + #f[i + 1]\n"
    "    if f[i] == 'b' then b = f[i + 1] elseif f[i] == 'a' then a = f[i + 1] "
    "end\n"
    "  end\n"
    "  if #b > max then size = #b end\n"
    "  if size > max + 1024 or #b > max then b = string.sub(b, 1, max) "
    "else size = 0 end\n"
    "  out[#out + 1] = {id, a, n, size, b}\n"
    "end\n"
    "local cursor = '0-0'\n"
    "if ARGV[1] == 'claim' then\n"
    "  local r = redis.call('XAUTOCLAIM', KEYS[1], 'evq', ARGV[2], ARGV[5], "
    "ARGV[6], 'COUNT', ARGV[3])\n"
    "  cursor = r[1]\n"
    "  for _, e in ipairs(r[2]) do\n"
    "    if e and e[2] then\n"
    "      local p = redis.call('XPENDING', KEYS[1], 'evq', e[1], e[1], 1)\n"
    "      add(e[1], e[2], p[1] and p[1][4] or 2)\n"
    "    end\n"
    "  end\n"
    "else\n"
    "  local p = redis.call('XPENDING', KEYS[1], 'evq', '(' .. ARGV[5], '+', "
    "ARGV[3], ARGV[2])\n"
    "  for _, e in ipairs(p) do\n"
    "    if e[4] == 1 then\n"
    "      local r = redis.call('XRANGE', KEYS[1], e[1], e[1])\n"
    "      if r[1] then add(e[1], r[1][2], 1) end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return {cursor, out}\n";

/* redis.priorities: reads up to ARGV[3] new entries for consumer ARGV[2]
 * from the level streams KEYS[1..n] (highest level first), without
 * blocking.  A first pass gives each level a share of ARGV[3] by its
 * weight (level + 1, ARGV[5 + i] for KEYS[i]), so every level that has
 * entries gets some in every read and none is starved; a second pass
 * fills what is left, highest level first.  Each entry comes back as
 * {i, id, a, stored, b}, b cut as claim_lua cuts it (ARGV[4] bytes). */
static const char prio_read_lua[] =
    "local want, max = tonumber(ARGV[3]), tonumber(ARGV[4])\n"
    "local total = 0\n"
    "for i = 1, #KEYS do total = total + tonumber(ARGV[4 + i]) end\n"
    "local out = {}\n"
    "local function read(i, count)\n"
    "  if count <= 0 then return end\n"
    "  local r = redis.call('XREADGROUP', 'GROUP', 'evq', ARGV[2], 'COUNT', "
    "count, 'STREAMS', KEYS[i], '>')\n"
    "  if not r then return end\n"
    "  for _, e in ipairs(r[1][2]) do\n"
    "    local b, a, size = '', '0', 0\n"
    "    local f = e[2]\n"
    "    for j = 1, #f - 1, 2 do\n"
    "      size = size + #f[j] + #f[j + 1]\n"
    "      if f[j] == 'b' then b = f[j + 1] elseif f[j] == 'a' then "
    "a = f[j + 1] end\n"
    "    end\n"
    "    if #b > max then size = #b end\n"
    "    if size > max + 1024 or #b > max then b = string.sub(b, 1, max) "
    "else size = 0 end\n"
    "    out[#out + 1] = {i, e[1], a, size, b}\n"
    "  end\n"
    "end\n"
    "for i = 1, #KEYS do\n"
    "  local share = math.floor(want * tonumber(ARGV[4 + i]) / total)\n"
    "  read(i, math.min(math.max(share, 1), want - #out))\n"
    "end\n"
    "for i = 1, #KEYS do read(i, want - #out) end\n"
    "return out\n";

/* An ack waiting to be sent: the entry, and the lease it is sent under. */
struct rack {
    char id[48];
    long long deliveries;
    int64_t lease_ns;
    int level;
};

typedef struct rmsg {
    char id[48];
    int level;            /* of its stream (0 without redis.priorities) */
    long long deliveries; /* the pending list's count when we took it */
    int64_t lease_ns;     /* evq__delivery's lease_ns */
    int attempt;
    size_t len;
    size_t full_len; /* stored size of an entry cut to max_bytes, or 0 */
    unsigned char body[];
} rmsg;

/* Where a fetch puts the entries it reads: d[0..max), from the stream of
 * `level`. */
typedef struct rsink {
    evq__delivery *d;
    size_t n, max;
    int level;
} rsink;

#define LEVELS 10

/* A command connection and the lock of its user. */
typedef struct rconn {
    pthread_mutex_t mu;
    redisContext *c;
} rconn;

/* The producers' connection.  Batches are written on it one after
 * another and their replies read back in the same order, so several
 * batches are out at once and the stream keeps the order the pipeline
 * accepted them in (batches on separate connections could overtake each
 * other).  Writing (under mu) and reading (by the batch whose turn it is)
 * overlap: the reader touches only hiredis's reply side, the writer only
 * the socket. */
typedef struct rprod {
    pthread_mutex_t mu;
    pthread_cond_t turn;
    redisContext *c;
    uint64_t written; /* batches written whole */
    uint64_t read;    /* of those, batches whose replies were read */
    bool broken;      /* a write or a read failed: replaced once all out
                         are reported */
} rprod;

/* A batch out on the producers' connection. */
typedef struct rticket {
    uint64_t seq;
    size_t replies; /* the batch's, the WAIT's not counted */
    bool tx, wait;
    int64_t first_due_ms; /* of its delayed events, or INT64_MAX */
} rticket;

typedef struct rhandle {
    rconn conns[RCONN_MAX]; /* command connections, opened on first use */
    rprod prod;
    int n_conns;
    pthread_mutex_t ack_mu; /* guards the acks waiting */
    /* Lock order: rd_mu, then ack_mu, then a connection's. */
    pthread_mutex_t rd_mu; /* guards rd and the reclaim state: the reader */
    redisContext *rd;
    long long rd_client_id;
    bool rd_ahead; /* an XREADGROUP is sent, its answer not yet read */
    bool opened;   /* open succeeded: close has acks and entries to settle */
    char *host, *user, *password, *unix_path;
    int port, db;
    /* redis+sentinel://: the master's name and the sentinels; host and
     * port are then the master's last known address (under addr_mu) */
    char *master_name, *sentinel_password;
    evq__host *sentinels;
    size_t n_sentinels, sentinel_next; /* the next to ask first (addr_mu) */
    pthread_mutex_t addr_mu;
    int wait_replicas;
    char wait_replicas_s[16], wait_timeout_s[24];
    struct timeval connect_tv, command_tv;
    char *stream, *delayed;
    /* the stream of each level: streams[0] is `stream`; 1 to 9 (with
     * redis.priorities) <stream>:p<level> */
    char *streams[LEVELS];
    int levels; /* LEVELS with redis.priorities, else 1 */
    char *prefix; /* the keys' */
    char consumer[128];
    int prefetch;
    size_t max_bytes;  /* max_event_bytes */
    size_t read_bound; /* most bytes one XREADGROUP answer may take */
    char last_new[LEVELS][48]; /* per level: the id of the last entry a
                                  read of new ones gave */
    long long maxlen;
    bool atomic_batches;
    char maxlen_s[24];
    int64_t vt_ms;
    _Atomic int64_t next_promote_ms;
    int64_t next_reclaim_ms;
    char reclaim_cursor[LEVELS][48];
    /* acks waiting to be sent (under ack_mu) */
    struct rack *acks;
    size_t n_acks, cap_acks;
    int64_t oldest_ack_ms;
    int ack_flush_ms;
    int64_t read_sent_ns; /* when the XREADGROUP now answered was sent */
    evq__flusher flusher; /* sends deferred acks in time */
    bool flusher_init;
    evq__logger *log;
    atomic_bool down; /* a connection failed since the last that worked */
    atomic_bool interrupted;
} rhandle;

static int64_t now_ms(void)
{
    return evq__now_real_ns() / 1000000;
}

/* ---- connections -----------------------------------------------------------
 */

static int conn_err_text(rhandle *h, const char *what, const char *text)
{
    pthread_mutex_lock(&h->addr_mu);
    int rc = evq__err(EVQ_ECONN, "redis %s to %s%s%s:%d%s%s: %s", what,
                      h->unix_path ? "unix:" : "",
                      h->unix_path ? h->unix_path
                      : h->host    ? h->host
                                   : "?",
                      "", h->port, h->master_name ? ", master of " : "",
                      h->master_name ? h->master_name : "", text);
    pthread_mutex_unlock(&h->addr_mu);
    /* Said once an outage starts (after open), and when it ends. */
    if (h->opened && !atomic_exchange(&h->down, true))
        evq__logf(h->log, EVQ_LOG_WARN,
                  "lost the connection to the server (%s); reconnecting",
                  evq_errmsg());
    return rc;
}

static int conn_err(rhandle *h, redisContext *c, const char *what)
{
    return conn_err_text(h, what,
                         c ? c->errstr : "cannot allocate a connection");
}

static redisReply *command(redisContext *c, int argc, const char **argv,
                           const size_t *lens)
{
    return redisCommandArgv(c, argc, argv, lens);
}

static int reply_err(redisReply *r, const char *what);

/* Whether r says its server is a replica now (after a failover): a
 * write refused (-READONLY, also inside a script's error), or a blocked
 * read ended by the change of role. */
static bool is_readonly(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ERROR &&
           (strstr(r->str, "READONLY") ||
            (strncmp(r->str, "UNBLOCKED", 9) == 0 &&
             strstr(r->str, "instance state changed")));
}

/* A reply that is an error becomes EVQ_EIO with the server's text;
 * -READONLY (the server is a replica now) EVQ_ECONN, and c (when given)
 * is marked failed, so it is made again, to the master. */
static int reply_err_on(redisContext *c, redisReply *r, const char *what)
{
    if (is_readonly(r)) {
        if (c && !c->err) {
            c->err = REDIS_ERR_OTHER;
            snprintf(c->errstr, sizeof c->errstr,
                     "the server is a replica now (READONLY)");
        }
        return evq__err(EVQ_ECONN, "redis %s: %s", what, r->str);
    }
    return reply_err(r, what);
}

/* A reply that is an error becomes EVQ_EIO with the server's text. */
static int reply_err(redisReply *r, const char *what)
{
    if (!r)
        return evq__err(EVQ_ECONN, "redis %s: connection lost", what);
    if (is_readonly(r))
        return evq__err(EVQ_ECONN, "redis %s: %s", what, r->str);
    if (r->type == REDIS_REPLY_ERROR)
        return evq__err(strncmp(r->str, "WRONGPASS", 9) == 0 ||
                                strncmp(r->str, "NOAUTH", 6) == 0 ||
                                strncmp(r->str, "NOPERM", 6) == 0
                            ? EVQ_EINVAL
                            : EVQ_EIO,
                        "redis %s: %s", what, r->str);
    return 0;
}

/* Asks the sentinels, in turn from the last that answered, for the
 * master's address: h->host and h->port (under addr_mu) and host/port. */
static int find_master(rhandle *h, char *host, size_t cap, int *port)
{
    char why[256] = "";
    pthread_mutex_lock(&h->addr_mu);
    size_t first = h->sentinel_next;
    pthread_mutex_unlock(&h->addr_mu);
    for (size_t k = 0; k < h->n_sentinels; k++) {
        size_t i = (first + k) % h->n_sentinels;
        const evq__host *s = &h->sentinels[i];
        redisContext *c = redisConnectWithTimeout(s->host, s->port,
                                                  h->connect_tv);
        if (!c || c->err) {
            snprintf(why, sizeof why, "sentinel %s:%d: %s", s->host, s->port,
                     c ? c->errstr : "cannot allocate a connection");
            redisFree(c);
            continue;
        }
        redisSetTimeout(c, h->command_tv);
        redisReply *r = NULL;
        if (h->sentinel_password) {
            const char *a[2] = {"AUTH", h->sentinel_password};
            r = redisCommandArgv(c, 2, a, NULL);
            if (!r || r->type == REDIS_REPLY_ERROR) {
                snprintf(why, sizeof why, "sentinel %s:%d: AUTH: %s",
                         s->host, s->port,
                         r ? r->str : c->errstr);
                freeReplyObject(r);
                redisFree(c);
                continue;
            }
            freeReplyObject(r);
        }
        const char *a[3] = {"SENTINEL", "get-master-addr-by-name",
                            h->master_name};
        r = redisCommandArgv(c, 3, a, NULL);
        if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            r->element[0]->type == REDIS_REPLY_STRING &&
            r->element[1]->type == REDIS_REPLY_STRING) {
            snprintf(host, cap, "%s", r->element[0]->str);
            *port = atoi(r->element[1]->str);
            freeReplyObject(r);
            redisFree(c);
            pthread_mutex_lock(&h->addr_mu);
            bool moved = h->host && (strcmp(h->host, host) != 0 ||
                                     h->port != *port);
            if (!h->host || moved) {
                char *old = h->host;
                h->host = evq__strdup(host);
                if (!h->host)
                    h->host = old;
                else
                    free(old);
            }
            h->port = *port;
            h->sentinel_next = i;
            pthread_mutex_unlock(&h->addr_mu);
            if (moved)
                evq__logf(h->log, EVQ_LOG_WARN,
                          "the master of %s is now %s:%d (a failover)",
                          h->master_name, host, *port);
            return 0;
        }
        snprintf(why, sizeof why, "sentinel %s:%d: %s", s->host, s->port,
                 !r                              ? c->errstr
                 : r->type == REDIS_REPLY_ERROR  ? r->str
                 : r->type == REDIS_REPLY_NIL    ? "no master of that name"
                                                 : "an unexpected answer");
        freeReplyObject(r);
        redisFree(c);
    }
    return evq__err(EVQ_ECONN,
                    "redis+sentinel: no sentinel gave the master of '%s' "
                    "(last: %s)",
                    h->master_name, why);
}

/* Whether the server on c says it is a master (ROLE). */
static int check_master(rhandle *h, redisContext *c)
{
    const char *a[1] = {"ROLE"};
    redisReply *r = redisCommandArgv(c, 1, a, NULL);
    if (!r)
        return conn_err(h, c, "ROLE");
    if (r->type == REDIS_REPLY_ERROR) {
        int rc = reply_err(r, "ROLE");
        freeReplyObject(r);
        return rc;
    }
    bool master = r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
                  r->element[0]->type == REDIS_REPLY_STRING &&
                  strcmp(r->element[0]->str, "master") == 0;
    freeReplyObject(r);
    if (!master)
        return conn_err_text(h, "connect",
                             "the sentinels' master is not a master yet (a "
                             "failover under way)");
    return 0;
}

static int connect_one(rhandle *h, redisContext **out, bool blocking_reads)
{
    char host[256];
    int port = 0;
    redisContext *c;
    if (h->master_name) {
        int rc = find_master(h, host, sizeof host, &port);
        if (rc) {
            if (h->opened && !atomic_exchange(&h->down, true))
                evq__logf(h->log, EVQ_LOG_WARN, "%s; trying again",
                          evq_errmsg());
            return rc;
        }
        c = redisConnectWithTimeout(host, port, h->connect_tv);
    } else {
        c = h->unix_path
                ? redisConnectUnixWithTimeout(h->unix_path, h->connect_tv)
                : redisConnectWithTimeout(h->host, h->port, h->connect_tv);
    }
    if (!c || c->err) {
        int rc = conn_err(h, c, "connect");
        redisFree(c);
        return rc;
    }
    if (!blocking_reads)
        redisSetTimeout(c, h->command_tv);
    redisReply *r = NULL;
    int rc = 0;
    if (h->password) {
        const char *argv[3] = {"AUTH", h->user ? h->user : h->password,
                               h->password};
        r = command(c, h->user ? 3 : 2, argv, NULL);
        rc = reply_err(r, "AUTH");
        freeReplyObject(r);
    }
    if (!rc && h->db) {
        char db[16];
        snprintf(db, sizeof db, "%d", h->db);
        const char *argv[2] = {"SELECT", db};
        r = command(c, 2, argv, NULL);
        rc = reply_err(r, "SELECT");
        freeReplyObject(r);
    }
    if (!rc && h->master_name)
        rc = check_master(h, c);
    if (rc) {
        redisFree(c);
        return rc;
    }
    if (atomic_exchange(&h->down, false))
        evq__logf(h->log, EVQ_LOG_INFO, "connected to the server again");
    *out = c;
    return 0;
}

/* Takes a command connection: a free one if there is one, else this
 * thread's own, waited for; connected (again) if need be.  NULL with *rc
 * set when the server cannot be reached.  Give it back with conn_put(). */
static rconn *conn_take(rhandle *h, int *rc)
{
    rconn *k = &h->conns[evq__slot_lock(h->conns, (size_t)h->n_conns,
                                        sizeof *h->conns, offsetof(rconn, mu))];
    if (k->c && k->c->err) {
        redisFree(k->c);
        k->c = NULL;
    }
    if (!k->c && (*rc = connect_one(h, &k->c, false)) != 0) {
        pthread_mutex_unlock(&k->mu);
        return NULL;
    }
    return k;
}

static void conn_put(rconn *k)
{
    pthread_mutex_unlock(&k->mu);
}

/* Runs one command on a command connection; *reply is the caller's. */
static int run(rhandle *h, int argc, const char **argv, const size_t *lens,
               redisReply **reply, const char *what)
{
    int rc = 0;
    *reply = NULL;
    rconn *k = conn_take(h, &rc);
    if (k) {
        *reply = command(k->c, argc, argv, lens);
        if (!*reply)
            rc = conn_err(h, k->c, what);
        else
            rc = reply_err_on(k->c, *reply, what);
        conn_put(k);
    }
    if (rc) {
        freeReplyObject(*reply);
        *reply = NULL;
    }
    return rc;
}

/* Reads the replies to n commands sent on k: the first failure is the
 * result, and every reply is read so the connection stays in step.  A
 * connection that breaks is marked and reconnected on its next use. */
static int read_replies(rhandle *h, redisContext *c, size_t n,
                        bool exec_last, const char *what)
{
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        redisReply *r = NULL;
        if (redisGetReply(c, (void **)&r) != REDIS_OK) {
            int crc = conn_err(h, c, what);
            return rc ? rc : crc;
        }
        if (!rc)
            rc = reply_err_on(c, r, what);
        /* EXEC answers with the array of results; any error inside fails
         * the call (the others ran: Redis has no rollback). */
        if (!rc && exec_last && i == n - 1) {
            if (r->type != REDIS_REPLY_ARRAY)
                rc = evq__err(EVQ_EIO, "redis %s: transaction aborted", what);
            for (size_t j = 0; !rc && j < r->elements; j++)
                rc = reply_err_on(c, r->element[j], what);
        }
        freeReplyObject(r);
    }
    return rc;
}

/* Runs a MULTI/EXEC of n commands in one round trip. */
static int run_tx(rhandle *h, int n, int *argc, const char ***argv,
                  const size_t **lens, const char *what)
{
    int rc = 0;
    rconn *k = conn_take(h, &rc);
    if (!k)
        return rc;
    const char *multi[1] = {"MULTI"}, *exec[1] = {"EXEC"};
    redisAppendCommandArgv(k->c, 1, multi, NULL);
    for (int i = 0; i < n; i++)
        redisAppendCommandArgv(k->c, argc[i], argv[i], lens ? lens[i] : NULL);
    redisAppendCommandArgv(k->c, 1, exec, NULL);
    rc = read_replies(h, k->c, (size_t)n + 2, true, what);
    conn_put(k);
    return rc;
}

static int settle(rhandle *h, const char *op, struct rmsg *m, int64_t delay_ms,
                  int attempts);

/* Acks wait in the handle and go to the server together: one XACK and one
 * XDEL naming them all, in a transaction so the two never part.  One whose
 * lease is near its end by now (a flush that failed before, say) goes
 * through settle_lua instead, so it never settles another consumer's
 * delivery.  Takes ack_mu only to take the list, so ackers do not wait for
 * the server. */
static int flush_acks(rhandle *h)
{
    pthread_mutex_lock(&h->ack_mu);
    struct rack *acks = h->acks;
    size_t n = h->n_acks;
    h->acks = NULL;
    h->n_acks = h->cap_acks = 0;
    pthread_mutex_unlock(&h->ack_mu);
    if (n == 0) {
        free(acks);
        return 0;
    }
    /* an XACK and an XDEL per level that has acks, in one transaction */
    const char **ids = malloc((2 * n + 5 * LEVELS) * sizeof *ids);
    int rc = 0, ncmd = 0, argc[2 * LEVELS];
    const char **argv[2 * LEVELS];
    int64_t soon = evq__now_mono_ns() + h->vt_ms * 1000000 / 4;
    if (!ids) {
        rc = evq__err(EVQ_ENOMEM, "out of memory");
    } else {
        size_t at = 0;
        for (int lv = 0; lv < h->levels; lv++) {
            const char **xack = ids + at;
            size_t plain = 0;
            xack[0] = "XACK", xack[1] = h->streams[lv], xack[2] = "evq";
            for (size_t i = 0; i < n; i++) {
                if (acks[i].level != lv)
                    continue;
                if (acks[i].lease_ns <= soon) {
                    struct rmsg *m = calloc(1, sizeof *m);
                    if (m) {
                        memcpy(m->id, acks[i].id, sizeof m->id);
                        m->deliveries = acks[i].deliveries;
                        m->level = lv;
                        settle(h, "ack", m, 0, 0); /* not ours: nothing */
                        free(m);
                    }
                    continue;
                }
                xack[3 + plain++] = acks[i].id;
            }
            if (!plain)
                continue;
            const char **xdel = xack + 3 + plain;
            xdel[0] = "XDEL", xdel[1] = h->streams[lv];
            memcpy(xdel + 2, xack + 3, plain * sizeof *xdel);
            argv[ncmd] = xack, argc[ncmd++] = (int)plain + 3;
            argv[ncmd] = xdel, argc[ncmd++] = (int)plain + 2;
            at += 2 * plain + 5;
        }
        if (ncmd)
            rc = run_tx(h, ncmd, argc, argv, NULL, "ack");
    }
    free(ids);
    if (rc) { /* kept for the next try */
        pthread_mutex_lock(&h->ack_mu);
        for (size_t i = 0; i < n; i++) {
            if (acks[i].lease_ns <= soon)
                continue; /* sent, checked, above */
            if (evq__grow(&h->acks, &h->cap_acks, h->n_acks, sizeof *h->acks))
                break; /* out of memory: the server redelivers them */
            if (h->n_acks == 0)
                h->oldest_ack_ms = now_ms();
            h->acks[h->n_acks++] = acks[i];
        }
        pthread_mutex_unlock(&h->ack_mu);
    }
    free(acks);
    return rc;
}

/* ---- open and close ---------------------------------------------------- */

static void redis_hand_back(void *state, evq__delivery *d, size_t n);
static int take_reply(rhandle *h, rsink *sink);

/* The flusher's work: acks deferred for a group commit go within
 * ack_flush_ms even when the handle sees no other call meanwhile. */
static void redis_flush_later(void *arg)
{
    rhandle *h = arg;
    if (flush_acks(h) != 0)
        evq__flusher_arm(&h->flusher, evq__now_mono_ns() +
                                          (h->ack_flush_ms + 100) * 1000000LL);
}

static void redis_close(void *state)
{
    rhandle *h = state;
    if (!h)
        return;
    if (h->flusher_init)
        evq__flusher_destroy(&h->flusher);
    if (h->opened && h->rd && h->rd_ahead && !h->rd->err) {
        /* entries read ahead: taken, then handed back */
        evq__delivery *d = calloc((size_t)h->prefetch, sizeof *d);
        rsink sink = {d, 0, d ? (size_t)h->prefetch : 0, 0};
        redisSetTimeout(h->rd, h->command_tv);
        if (d && take_reply(h, &sink) == 0)
            redis_hand_back(h, d, sink.n);
        free(d);
    }
    if (h->opened && h->n_acks)
        flush_acks(h);
    free(h->acks);
    for (int i = 0; i < RCONN_MAX; i++) {
        redisFree(h->conns[i].c);
        pthread_mutex_destroy(&h->conns[i].mu);
    }
    redisFree(h->rd);
    redisFree(h->prod.c);
    pthread_mutex_destroy(&h->prod.mu);
    pthread_cond_destroy(&h->prod.turn);
    free(h->host);
    free(h->master_name);
    free(h->sentinel_password);
    for (size_t i = 0; i < h->n_sentinels; i++)
        free(h->sentinels[i].host);
    free(h->sentinels);
    pthread_mutex_destroy(&h->addr_mu);
    free(h->user);
    free(h->password);
    free(h->unix_path);
    for (int i = 1; i < LEVELS; i++)
        free(h->streams[i]);
    free(h->stream);
    free(h->delayed);
    free(h->prefix);
    pthread_mutex_destroy(&h->ack_mu);
    pthread_mutex_destroy(&h->rd_mu);
    free(h);
}

static struct timeval tv_ms(int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

/* The keys of queue `name`: its stream <prefix><name> and its delayed
 * set <prefix><name>:delayed.  Both allocated (either NULL when out of
 * memory, then EVQ_ENOMEM). */
static int queue_keys(const char *prefix, const char *name, char **stream,
                      char **delayed)
{
    size_t sl = strlen(prefix) + strlen(name) + 1;
    *stream = malloc(sl);
    *delayed = malloc(sl + 8);
    if (!*stream || !*delayed)
        return EVQ_ENOMEM;
    snprintf(*stream, sl, "%s%s", prefix, name);
    snprintf(*delayed, sl + 8, "%s%s:delayed", prefix, name);
    return 0;
}

/* redis.priorities: the group of each level's stream (made with it), and
 * the key <stream>:priorities saying the queue has levels, so a handle
 * without the option, which would read level 0 only, is refused. */
static int open_levels(rhandle *h)
{
    size_t len = strlen(h->stream) + 16;
    char *mark = malloc(len);
    if (!mark)
        return evq__err(EVQ_ENOMEM, "out of memory");
    snprintf(mark, len, "%s:priorities", h->stream);
    redisReply *r;
    int rc = 0;
    if (h->levels == 1) {
        const char *argv[] = {"EXISTS", mark};
        if ((rc = run(h, 2, argv, NULL, &r, "EXISTS")) == 0) {
            if (r->type == REDIS_REPLY_INTEGER && r->integer > 0)
                rc = evq__err(EVQ_EINVAL,
                              "redis: queue '%s' keeps events by priority: "
                              "open it with redis.priorities=true",
                              h->stream + strlen(h->prefix));
            freeReplyObject(r);
        }
        free(mark);
        return rc;
    }
    for (int i = 1; i < LEVELS && !rc; i++) {
        const char *argv[] = {"XGROUP", "CREATE", h->streams[i],
                              "evq",    "0",      "MKSTREAM"};
        if ((rc = run(h, 6, argv, NULL, &r, "XGROUP CREATE")) == 0)
            freeReplyObject(r);
        else if (strstr(evq_errmsg(), "BUSYGROUP"))
            rc = 0; /* there already */
    }
    const char *set[] = {"SET", mark, "1"};
    if (!rc && (rc = run(h, 3, set, NULL, &r, "SET")) == 0)
        freeReplyObject(r);
    free(mark);
    return rc;
}

static int redis_open(void **state, const evq__url *url, const char *name,
                      const evq__optset *opts, evq__logger *log)
{
    rhandle *h = calloc(1, sizeof *h);
    if (h)
        h->log = log;
    int rc;

    if (!h)
        return evq__err(EVQ_ENOMEM, "out of memory");
    for (int i = 0; i < RCONN_MAX; i++)
        pthread_mutex_init(&h->conns[i].mu, NULL);
    h->n_conns = 1;
    pthread_mutex_init(&h->ack_mu, NULL);
    pthread_mutex_init(&h->rd_mu, NULL);
    pthread_mutex_init(&h->addr_mu, NULL);
    pthread_mutex_init(&h->prod.mu, NULL);
    pthread_cond_init(&h->prod.turn, NULL);
    atomic_init(&h->interrupted, false);
    evq__flusher_init(&h->flusher, redis_flush_later, h);
    h->flusher_init = true;
    if (strcmp(url->scheme, "redis+unix") == 0) {
        if (url->n_hosts || !url->path[0]) {
            redis_close(h);
            return evq__err(EVQ_EINVAL, "redis+unix:// URLs name a socket: "
                                        "redis+unix:///path/redis.sock");
        }
        h->unix_path = evq__strdup(url->path);
    } else if (strcmp(url->scheme, "redis+sentinel") == 0) {
        /* /master[/db] */
        const char *mname = url->path[0] == '/' ? url->path + 1 : "";
        const char *slash = strchr(mname, '/');
        size_t nl = slash ? (size_t)(slash - mname) : strlen(mname);
        if (!url->n_hosts || nl == 0) {
            redis_close(h);
            return evq__err(EVQ_EINVAL,
                            "redis+sentinel:// URLs name the sentinels and "
                            "the master: redis+sentinel://host:26379[,host:"
                            "26379...]/master[/db]");
        }
        if (slash) {
            char *end;
            long db = strtol(slash + 1, &end, 10);
            if (!slash[1] || *end || db < 0 || db > 1000000) {
                redis_close(h);
                return evq__err(EVQ_EINVAL,
                                "redis+sentinel:// URL: '%.32s' after the "
                                "master's name is not a database number",
                                slash + 1);
            }
            h->db = (int)db;
        }
        h->master_name = evq__strndup(mname, nl);
        h->sentinels = calloc(url->n_hosts, sizeof *h->sentinels);
        if (!h->master_name || !h->sentinels) {
            redis_close(h);
            return evq__err(EVQ_ENOMEM, "out of memory");
        }
        for (size_t i = 0; i < url->n_hosts; i++) {
            h->sentinels[i].host = evq__strdup(
                url->hosts[i].host[0] ? url->hosts[i].host : "127.0.0.1");
            h->sentinels[i].port =
                url->hosts[i].port ? url->hosts[i].port : 26379;
            h->n_sentinels++;
            if (!h->sentinels[i].host) {
                redis_close(h);
                return evq__err(EVQ_ENOMEM, "out of memory");
            }
        }
    } else {
        if (url->n_hosts > 1) {
            redis_close(h);
            return evq__err(EVQ_EINVAL, "redis:// takes one host");
        }
        h->host = evq__strdup(url->n_hosts && url->hosts[0].host[0]
                                  ? url->hosts[0].host
                                  : "127.0.0.1");
        h->port =
            url->n_hosts && url->hosts[0].port ? url->hosts[0].port : 6379;
        if (url->path[0] && strcmp(url->path, "/") != 0) {
            char *end;
            long db = strtol(url->path + 1, &end, 10);
            if (*end || db < 0 || db > 1000000) {
                redis_close(h);
                return evq__err(EVQ_EINVAL,
                                "redis:// URL path must be a database number, "
                                "not '%.32s'",
                                url->path + 1);
            }
            h->db = (int)db;
        }
    }
    if (url->password)
        h->password = evq__strdup(url->password);
    if (url->user && url->user[0])
        h->user = evq__strdup(url->user);
    rcfg cfg;
    evq__opts_read(opts, redis_opts, &cfg);
    const char *prefix = cfg.prefix;
    h->prefix = evq__strdup(prefix);
    if (cfg.wait_replicas > 0 &&
        cfg.wait_timeout_ms >= cfg.command_timeout_ms) {
        redis_close(h);
        return evq__err(EVQ_EINVAL,
                        "redis.wait_timeout_ms (%lld) must be shorter than "
                        "redis.command_timeout_ms (%lld): a WAIT is read "
                        "within the command timeout",
                        (long long)cfg.wait_timeout_ms,
                        (long long)cfg.command_timeout_ms);
    }
    h->wait_replicas = (int)cfg.wait_replicas;
    snprintf(h->wait_replicas_s, sizeof h->wait_replicas_s, "%d",
             h->wait_replicas);
    snprintf(h->wait_timeout_s, sizeof h->wait_timeout_s, "%lld",
             (long long)cfg.wait_timeout_ms);
    if (cfg.sentinel_password)
        h->sentinel_password = evq__strdup(cfg.sentinel_password);
    if (queue_keys(prefix, name, &h->stream, &h->delayed) || !h->prefix ||
        (!h->host && !h->unix_path && !h->master_name) ||
        (cfg.sentinel_password && !h->sentinel_password)) {
        redis_close(h);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    h->prefetch = (int)cfg.prefetch;
    h->maxlen = cfg.maxlen;
    snprintf(h->maxlen_s, sizeof h->maxlen_s, "%lld", h->maxlen);
    h->atomic_batches = cfg.atomic_batches;
    h->n_conns = (int)cfg.connections;
    h->vt_ms = cfg.visibility_timeout_ms;
    h->ack_flush_ms = (int)cfg.ack_flush_ms;
    h->connect_tv = tv_ms(cfg.connect_timeout_ms);
    h->command_tv = tv_ms(cfg.command_timeout_ms);
    h->levels = cfg.priorities ? LEVELS : 1;
    h->streams[0] = h->stream;
    for (int i = 0; i < LEVELS; i++) {
        strcpy(h->reclaim_cursor[i], "0-0");
        strcpy(h->last_new[i], "0-0");
        if (i == 0 || i >= h->levels)
            continue;
        size_t len = strlen(h->stream) + 4;
        if ((h->streams[i] = malloc(len)) == NULL) {
            redis_close(h);
            return evq__err(EVQ_ENOMEM, "out of memory");
        }
        snprintf(h->streams[i], len, "%s:p%d", h->stream, i);
    }
    h->max_bytes = (size_t)opts->core.max_event_bytes;
    h->read_bound = (size_t)h->prefetch * (h->max_bytes + 2048) + 65536;
    char host[64] = "host";
    gethostname(host, sizeof host - 1);
    static atomic_uint seq;
    snprintf(h->consumer, sizeof h->consumer, "%s-%d-%u", host, (int)getpid(),
             atomic_fetch_add(&seq, 1));

    /* The group, created with the stream on first use; "BUSYGROUP" means
     * it exists.  With create=false a missing stream is an error (without
     * MKSTREAM the server refuses a group on a missing key). */
    redisReply *r;
    bool create = opts->core.create;
    const char *argv[] = {"XGROUP", "CREATE", h->stream,
                          "evq",    "0",      "MKSTREAM"};
    rc = connect_one(h, &h->conns[0].c, false);
    if (!rc) {
        r = command(h->conns[0].c, create ? 6 : 5, argv, NULL);
        if (!r)
            rc = conn_err(h, h->conns[0].c, "XGROUP CREATE");
        else if (!create && r->type == REDIS_REPLY_ERROR &&
                 strstr(r->str, "key to exist"))
            rc = evq__err(EVQ_ENOENT,
                          "redis: no queue '%s' (stream '%s' does not exist; "
                          "create=false)",
                          name, h->stream);
        else if (!(r->type == REDIS_REPLY_ERROR &&
                   strncmp(r->str, "BUSYGROUP", 9) == 0))
            rc = reply_err(r, "XGROUP CREATE");
        freeReplyObject(r);
    }
    if (!rc)
        rc = open_levels(h);
    if (!rc)
        rc = connect_one(h, &h->rd, true);
    if (!rc) {
        const char *id_argv[] = {"CLIENT", "ID"};
        r = command(h->rd, 2, id_argv, NULL);
        if (r && r->type == REDIS_REPLY_INTEGER)
            h->rd_client_id = r->integer;
        freeReplyObject(r);
    }
    if (rc) {
        redis_close(h);
        return rc;
    }
    h->opened = true;
    *state = h;
    return 0;
}

/* ---- enqueue ----------------------------------------------------------------
 */

/* Appends `n` as decimal digits. */
static char *put_num(char *o, size_t n)
{
    char tmp[24];
    int k = 0;
    do
        tmp[k++] = (char)('0' + n % 10);
    while ((n /= 10) != 0);
    while (k)
        *o++ = tmp[--k];
    return o;
}

/* Appends one command to `b` in the protocol's request form (an array of
 * bulk strings), for hiredis's redisAppendFormattedCommand: a batch is
 * formatted in one buffer, without hiredis's per-argument formatting. */
static int put_command(evq__buf *b, int argc, const char **argv,
                       const size_t *lens)
{
    size_t need = 16;
    for (int i = 0; i < argc; i++)
        need += lens[i] + 24;
    if (evq__buf_reserve(b, need))
        return EVQ_ENOMEM;
    char *o = (char *)b->p + b->len;
    *o++ = '*';
    o = put_num(o, (size_t)argc);
    *o++ = '\r', *o++ = '\n';
    for (int i = 0; i < argc; i++) {
        *o++ = '$';
        o = put_num(o, lens[i]);
        *o++ = '\r', *o++ = '\n';
        memcpy(o, argv[i], lens[i]);
        o += lens[i];
        *o++ = '\r', *o++ = '\n';
    }
    b->len = (size_t)(o - (char *)b->p);
    return 0;
}

/* Writes len bytes on the producers' connection's socket, bypassing
 * hiredis's output buffer (which a reader of replies may be using, and
 * which copies a large batch once more on every partial write). */
static int write_all(rhandle *h, redisContext *c, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t w = send(c->fd, p, len, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return conn_err_text(h, "enqueue",
                                 w == 0 || errno == EAGAIN ||
                                         errno == EWOULDBLOCK
                                     ? "timed out writing"
                                     : strerror(errno));
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Formats the batch's commands (outside any lock), then writes them on
 * the producers' connection: its replies are read by redis_finish, in
 * the order batches were written.  Redis runs them in order, so when the
 * connection fails part way the events stored are a prefix of the batch;
 * inside MULTI/EXEC (redis.atomic_batches) they are all stored or none. */
static int redis_start(void *state, const evq__item *items, size_t n,
                       void **ticket)
{
    rhandle *h = state;
    rprod *pr = &h->prod;
    int rc = 0;

    *ticket = NULL;
    if (atomic_load(&h->interrupted))
        return evq__err(EVQ_ECLOSED, "queue interrupted");
    rticket *t = malloc(sizeof *t);
    if (!t)
        return evq__err(EVQ_ENOMEM, "out of memory");
    t->tx = h->atomic_batches && n > 1;
    t->replies = t->tx ? n + 2 : n;
    t->first_due_ms = INT64_MAX;
    const char *multi[1] = {"MULTI"}, *exec[1] = {"EXEC"};
    const size_t five = 5, four = 4;
    evq__buf cmds = {0};
    if (t->tx && put_command(&cmds, 1, multi, &five))
        rc = evq__err(EVQ_ENOMEM, "out of memory");
    int64_t now = now_ms();
    for (size_t i = 0; i < n && !rc; i++) {
        const evq__item *it = &items[i];
        const char *stream = h->streams[it->priority];
        const char *argv[10];
        size_t lens[10];
        int argc = 0;
        char due[32], *member = NULL;
        if (it->delay_ms > 0) {
            /* member: <nonce>:<attempts>:<body> */
            member = malloc(it->len + 48);
            if (!member) {
                rc = evq__err(EVQ_ENOMEM, "out of memory");
                break;
            }
            char id[40];
            evq__uuid7(id);
            int hl = it->priority
                         ? snprintf(member, 48, "%s/p%d:0:", id, it->priority)
                         : snprintf(member, 48, "%s:0:", id);
            memcpy(member + hl, it->bytes, it->len);
            snprintf(due, sizeof due, "%lld", (long long)(now + it->delay_ms));
            if (now + it->delay_ms < t->first_due_ms)
                t->first_due_ms = now + it->delay_ms;
            argv[argc] = "ZADD", lens[argc++] = 4;
            argv[argc] = h->delayed, lens[argc++] = strlen(h->delayed);
            argv[argc] = due, lens[argc++] = strlen(due);
            argv[argc] = member, lens[argc++] = (size_t)hl + it->len;
        } else {
            argv[argc] = "XADD", lens[argc++] = 4;
            argv[argc] = stream, lens[argc++] = strlen(stream);
            if (h->maxlen > 0) {
                argv[argc] = "MAXLEN", lens[argc++] = 6;
                argv[argc] = "~", lens[argc++] = 1;
                argv[argc] = h->maxlen_s, lens[argc++] = strlen(h->maxlen_s);
            }
            argv[argc] = "*", lens[argc++] = 1;
            argv[argc] = "b", lens[argc++] = 1;
            argv[argc] = (const char *)it->bytes, lens[argc++] = it->len;
            argv[argc] = "a", lens[argc++] = 1;
            argv[argc] = "0", lens[argc++] = 1;
        }
        if (put_command(&cmds, argc, argv, lens))
            rc = evq__err(EVQ_ENOMEM, "out of memory");
        free(member);
    }
    if (!rc && t->tx && put_command(&cmds, 1, exec, &four))
        rc = evq__err(EVQ_ENOMEM, "out of memory");
    t->wait = h->wait_replicas > 0;
    if (!rc && t->wait) {
        const char *argv[3] = {"WAIT", h->wait_replicas_s, h->wait_timeout_s};
        size_t lens[3] = {4, strlen(h->wait_replicas_s),
                          strlen(h->wait_timeout_s)};
        if (put_command(&cmds, 3, argv, lens))
            rc = evq__err(EVQ_ENOMEM, "out of memory");
    }
    if (rc) {
        free(cmds.p);
        free(t);
        return rc;
    }

    pthread_mutex_lock(&pr->mu);
    /* a connection that failed is replaced once every batch written on
     * it is reported */
    while (pr->broken && pr->read != pr->written)
        pthread_cond_wait(&pr->turn, &pr->mu);
    if (pr->broken) {
        redisFree(pr->c);
        pr->c = NULL;
        pr->broken = false;
    }
    if (!pr->c)
        rc = connect_one(h, &pr->c, false);
    if (!rc) {
        rc = write_all(h, pr->c, (const char *)cmds.p, cmds.len);
        if (rc)
            pr->broken = true; /* part of a batch may be on its way */
        else
            t->seq = pr->written++;
    }
    pthread_mutex_unlock(&pr->mu);
    free(cmds.p);
    if (rc) {
        free(t);
        return rc;
    }
    *ticket = t;
    return 0;
}

/* Reads the answer to a batch's WAIT: how many replicas have it. */
static int wait_reply(rhandle *h, redisContext *c)
{
    redisReply *r = NULL;
    if (c->err || redisGetReply(c, (void **)&r) != REDIS_OK)
        return conn_err(h, c, "WAIT");
    int rc = reply_err_on(c, r, "WAIT");
    if (!rc && r->type != REDIS_REPLY_INTEGER)
        rc = evq__err(EVQ_EIO, "redis WAIT: an unexpected answer");
    if (!rc && r->integer < h->wait_replicas)
        rc = evq__err(EVQ_ETIMEDOUT,
                      "redis enqueue: %lld of redis.wait_replicas=%d "
                      "replicas had the batch within redis.wait_timeout_ms=%s "
                      "(its events are on the master, and may be lost in a "
                      "failover)",
                      (long long)r->integer, h->wait_replicas,
                      h->wait_timeout_s);
    freeReplyObject(r);
    return rc;
}

/* Reads a batch's replies once every batch written before it has read
 * its own. */
static int redis_finish(void *state, void *ticket)
{
    rhandle *h = state;
    rprod *pr = &h->prod;
    rticket *t = ticket;
    int rc;

    pthread_mutex_lock(&pr->mu);
    while (pr->read != t->seq)
        pthread_cond_wait(&pr->turn, &pr->mu);
    bool broken = pr->broken;
    redisContext *c = pr->c;
    pthread_mutex_unlock(&pr->mu);
    if (broken)
        rc = evq__err(EVQ_ECONN,
                      "redis enqueue: the connection failed before this "
                      "batch's replies came (some of its events may be "
                      "stored)");
    else
        rc = read_replies(h, c, t->replies, t->tx, "enqueue");
    if (!broken && t->wait) {
        int wrc = wait_reply(h, c);
        if (!rc)
            rc = wrc;
    }
    pthread_mutex_lock(&pr->mu);
    if (!broken && c->err) /* replies left unread: out of step */
        pr->broken = true;
    pr->read++;
    pthread_cond_broadcast(&pr->turn);
    pthread_mutex_unlock(&pr->mu);

    /* a delayed event may be due before the next look */
    int64_t cur = atomic_load(&h->next_promote_ms);
    while (!rc && cur > t->first_due_ms &&
           !atomic_compare_exchange_weak(&h->next_promote_ms, &cur,
                                         t->first_due_ms))
        ;
    free(t);
    return rc;
}

/* ---- dequeue ----------------------------------------------------------------
 */

static const char *field(redisReply *fields, const char *name, size_t *len)
{
    for (size_t i = 0; fields && i + 1 < fields->elements; i += 2) {
        redisReply *k = fields->element[i];
        if (k->type == REDIS_REPLY_STRING && strcmp(k->str, name) == 0) {
            *len = fields->element[i + 1]->len;
            return fields->element[i + 1]->str;
        }
    }
    return NULL;
}

/* Adds an entry to the sink; one that finds it full is handed back. */
static int sink_add(rhandle *h, rsink *sink, const char *id, int attempt,
                    long long deliveries, int64_t lease_ns, const void *body,
                    size_t blen, size_t full_len)
{
    rmsg *m = malloc(sizeof *m + blen);
    if (!m)
        return evq__err(EVQ_ENOMEM, "out of memory");
    snprintf(m->id, sizeof m->id, "%s", id);
    m->level = sink->level;
    m->attempt = attempt;
    m->deliveries = deliveries;
    m->lease_ns = lease_ns;
    m->len = blen;
    m->full_len = full_len;
    memcpy(m->body, body, blen);
    evq__delivery d = {.bytes = m->body,
                       .len = blen,
                       .full_len = full_len,
                       .attempt = attempt,
                       .token = m,
                       .lease_ns = lease_ns};
    if (sink->n == sink->max)
        redis_hand_back(h, &d, 1);
    else
        sink->d[sink->n++] = d;
    return 0;
}

/* Adds stream entries [id, [f, v, ...]], delivered for the first time,
 * to the sink (rd_mu held). */
static int sink_entries(rhandle *h, rsink *sink, redisReply *entries)
{
    int rc = 0;
    for (size_t i = 0; !rc && i < entries->elements; i++) {
        redisReply *e = entries->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 ||
            e->element[1]->type != REDIS_REPLY_ARRAY)
            continue; /* deleted meanwhile */
        size_t blen = 0, alen = 0;
        const char *body = field(e->element[1], "b", &blen);
        const char *a = field(e->element[1], "a", &alen);
        if (!body)
            body = "", blen = 0;
        rc = sink_add(h, sink, e->element[0]->str, (a ? atoi(a) : 0) + 1, 1,
                      h->read_sent_ns + h->vt_ms * 1000000, body, blen, 0);
    }
    return rc;
}

/* Runs claim_lua (rd_mu held) and sinks what it gives: with `takeover`,
 * the entries idle past the visibility timeout, from reclaim_cursor on
 * (which it moves); else the entries a cut-off read gave this consumer,
 * past last_new (which it moves past them, as they stay pending once
 * delivered).  Its answer is bounded by the script. */
static int claim_entries(rhandle *h, bool takeover, rsink *sink)
{
    char count[24], max[24], idle[32];
    if (sink->n == sink->max)
        return 0;
    snprintf(count, sizeof count, "%zu", sink->max - sink->n);
    snprintf(max, sizeof max, "%zu", h->max_bytes);
    snprintf(idle, sizeof idle, "%lld", (long long)h->vt_ms);
    int lv = sink->level;
    const char *argv[] = {"EVAL",
                          claim_lua,
                          "1",
                          h->streams[lv],
                          takeover ? "claim" : "after",
                          h->consumer,
                          count,
                          max,
                          takeover ? idle : h->last_new[lv],
                          h->reclaim_cursor[lv]};
    redisReply *r;
    /* A takeover's lease starts now; entries of a cut-off read were
     * delivered by that read. */
    int64_t lease_ns =
        (takeover ? evq__now_mono_ns() : h->read_sent_ns) + h->vt_ms * 1000000;
    int rc = run(h, 10, argv, NULL, &r, "claim");
    if (rc)
        return rc;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[1]->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        return evq__err(EVQ_EIO, "redis claim: unexpected answer");
    }
    if (takeover && r->element[0]->type == REDIS_REPLY_STRING)
        snprintf(h->reclaim_cursor[lv], sizeof h->reclaim_cursor[lv], "%s",
                 r->element[0]->str);
    redisReply *list = r->element[1];
    for (size_t i = 0; !rc && i < list->elements; i++) {
        redisReply *e = list->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 5 ||
            e->element[0]->type != REDIS_REPLY_STRING ||
            e->element[4]->type != REDIS_REPLY_STRING)
            continue;
        const char *id = e->element[0]->str, *a = e->element[1]->str;
        long long n = e->element[2]->integer;
        rc = sink_add(h, sink, id, (a ? atoi(a) : 0) + (int)n, n, lease_ns,
                      e->element[4]->str, e->element[4]->len,
                      (size_t)e->element[3]->integer);
        if (!rc && !takeover)
            snprintf(h->last_new[lv], sizeof h->last_new[lv], "%s", id);
    }
    freeReplyObject(r);
    return rc;
}

/* Moves due delayed events to the stream (rd_mu held).  Returns when the
 * next one is due (Unix ms) or INT64_MAX. */
static int64_t promote(rhandle *h)
{
    char now[32], limit[16];
    snprintf(now, sizeof now, "%lld", (long long)now_ms());
    snprintf(limit, sizeof limit, "%d", 1000);
    const char *argv[] = {"EVAL",    promote_lua, "2",  h->delayed,
                          h->stream, now,         limit, h->levels > 1 ? "1" : "0"};
    redisReply *r;
    if (run(h, 8, argv, NULL, &r, "promote") != 0)
        return INT64_MAX;
    int64_t next = r->type == REDIS_REPLY_INTEGER && r->integer >= 0
                       ? r->integer
                       : INT64_MAX;
    freeReplyObject(r);
    return next;
}

/* claim_entries on every level's stream, highest first (rd_mu held). */
static int claim_levels(rhandle *h, bool takeover, rsink *sink)
{
    int rc = 0;
    for (int lv = h->levels - 1; lv >= 0 && !rc; lv--) {
        sink->level = lv;
        rc = claim_entries(h, takeover, sink);
    }
    sink->level = 0;
    return rc;
}

/* Takes over entries other consumers left unacked past the visibility
 * timeout (rd_mu held). */
static int reclaim(rhandle *h, rsink *sink)
{
    return claim_levels(h, true, sink);
}

/* Reads one answer on c like redisGetReply, but stops once more than
 * `bound` bytes have come for it, so a stream entry far past
 * max_event_bytes is never taken whole.  Returns REDIS_OK, REDIS_ERR (c's
 * error set) or 1 (bound passed; c then is out of step, to be dropped). */
static int get_reply_bounded(redisContext *c, size_t bound, redisReply **out)
{
    void *r = NULL;
    size_t total = 0;
    *out = NULL;
    if (redisGetReplyFromReader(c, &r) != REDIS_OK)
        return REDIS_ERR;
    while (!r) {
        if (total > bound)
            return 1;
        size_t before = c->reader->len;
        if (redisBufferRead(c) != REDIS_OK)
            return REDIS_ERR;
        total += c->reader->len > before ? c->reader->len - before : 0;
        if (redisGetReplyFromReader(c, &r) != REDIS_OK)
            return REDIS_ERR;
    }
    *out = r;
    return REDIS_OK;
}

/* Reads the answer to an XREADGROUP sent before into the sink (rd_mu
 * held). */
static int take_reply(rhandle *h, rsink *sink)
{
    redisReply *r = NULL;
    int grc = get_reply_bounded(h->rd, h->read_bound, &r);
    if (grc == 1) {
        /* Some entry is far too large: the server gave this read's entries
         * to us, so drop the connection and take them again through the
         * script, which cuts the large ones. */
        redisFree(h->rd);
        h->rd = NULL;
        h->rd_ahead = false;
        return claim_levels(h, false, sink);
    }
    if (grc != REDIS_OK)
        return conn_err(h, h->rd, "XREADGROUP");
    int rc = reply_err_on(h->rd, r, "XREADGROUP");
    /* [[stream, entries], ...]: one stream, or (redis.priorities) those
     * levels that had entries */
    for (size_t k = 0; !rc && r->type == REDIS_REPLY_ARRAY && k < r->elements;
         k++) {
        redisReply *s = r->element[k];
        if (s->type != REDIS_REPLY_ARRAY || s->elements < 2 ||
            s->element[0]->type != REDIS_REPLY_STRING)
            continue;
        int lv = 0;
        while (lv < h->levels && strcmp(h->streams[lv], s->element[0]->str))
            lv++;
        if (lv == h->levels)
            continue;
        redisReply *entries = s->element[1];
        size_t got = entries->elements;
        sink->level = lv;
        rc = sink_entries(h, sink, entries);
        redisReply *last = got ? entries->element[got - 1] : NULL;
        if (!rc && last && last->type == REDIS_REPLY_ARRAY &&
            last->elements >= 1 && last->element[0]->type == REDIS_REPLY_STRING)
            snprintf(h->last_new[lv], sizeof h->last_new[lv], "%s",
                     last->element[0]->str);
    }
    sink->level = 0;
    freeReplyObject(r);
    return rc;
}

/* Sends an XREADGROUP without waiting for its answer (rd_mu held). */
static int send_read(rhandle *h, int block_ms)
{
    char count[16], block[16];
    /* with levels, each may give COUNT: together no more than prefetch */
    int per = h->levels > 1 ? (h->prefetch + h->levels - 1) / h->levels
                            : h->prefetch;
    snprintf(count, sizeof count, "%d", per);
    snprintf(block, sizeof block, "%d", block_ms);
    const char *argv[9 + 2 * LEVELS] = {"XREADGROUP", "GROUP", "evq",
                                        h->consumer,  "COUNT", count};
    int argc = 6;
    if (block_ms >= 0) {
        argv[argc++] = "BLOCK";
        argv[argc++] = block;
    } /* else no BLOCK: answer at once */
    argv[argc++] = "STREAMS";
    for (int lv = h->levels - 1; lv >= 0; lv--) /* highest first */
        argv[argc++] = h->streams[lv];
    for (int lv = 0; lv < h->levels; lv++)
        argv[argc++] = ">";
    int done = 0;
    h->read_sent_ns = evq__now_mono_ns();
    if (redisAppendCommandArgv(h->rd, argc, argv, NULL) != REDIS_OK)
        return evq__err(EVQ_ENOMEM, "out of memory");
    while (!done)
        if (redisBufferWrite(h->rd, &done) != REDIS_OK)
            return conn_err(h, h->rd, "XREADGROUP");
    return 0;
}

/* Hands out entries of higher levels first, each level in stream order. */
static int by_level(const void *a, const void *b)
{
    const rmsg *x = ((const evq__delivery *)a)->token;
    const rmsg *y = ((const evq__delivery *)b)->token;
    if (x->level != y->level)
        return y->level - x->level;
    unsigned long long xm = 0, xs = 0, ym = 0, ys = 0;
    sscanf(x->id, "%llu-%llu", &xm, &xs);
    sscanf(y->id, "%llu-%llu", &ym, &ys);
    return xm != ym ? (xm < ym ? -1 : 1) : (xs < ys ? -1 : xs > ys);
}

/* redis.priorities: one read by weight over the levels (prio_read_lua),
 * without blocking (rd_mu held). */
static int read_levels(rhandle *h, rsink *sink)
{
    char count[24], max[24], weight[LEVELS][12];
    snprintf(count, sizeof count, "%zu", sink->max - sink->n);
    snprintf(max, sizeof max, "%zu", h->max_bytes);
    const char *argv[5 + 2 * LEVELS + 4] = {"EVAL", prio_read_lua, count};
    int argc = 2;
    char nkeys[8];
    snprintf(nkeys, sizeof nkeys, "%d", h->levels);
    argv[argc++] = nkeys;
    for (int lv = h->levels - 1; lv >= 0; lv--)
        argv[argc++] = h->streams[lv];
    argv[argc++] = "evq";
    argv[argc++] = h->consumer;
    argv[argc++] = count;
    argv[argc++] = max;
    for (int lv = h->levels - 1; lv >= 0; lv--) {
        snprintf(weight[lv], sizeof weight[lv], "%d", lv + 1);
        argv[argc++] = weight[lv];
    }
    redisReply *r;
    int64_t lease_ns = evq__now_mono_ns() + h->vt_ms * 1000000;
    int rc = run(h, argc, argv, NULL, &r, "read by priority");
    if (rc)
        return rc;
    for (size_t i = 0; !rc && r->type == REDIS_REPLY_ARRAY && i < r->elements;
         i++) {
        redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 5 ||
            e->element[1]->type != REDIS_REPLY_STRING ||
            e->element[4]->type != REDIS_REPLY_STRING)
            continue;
        sink->level = h->levels - (int)e->element[0]->integer; /* KEYS[i] */
        const char *a = e->element[2]->type == REDIS_REPLY_STRING
                            ? e->element[2]->str
                            : "0";
        rc = sink_add(h, sink, e->element[1]->str, atoi(a) + 1, 1, lease_ns,
                      e->element[4]->str, e->element[4]->len,
                      (size_t)e->element[3]->integer);
        if (!rc)
            snprintf(h->last_new[sink->level], sizeof h->last_new[0], "%s",
                     e->element[1]->str);
    }
    sink->level = 0;
    freeReplyObject(r);
    return rc;
}

/* Reads new entries into the sink, blocking up to block_ms (rd_mu held).
 * When a read comes back full, the next one is sent at once and its answer
 * taken on the following call: the server prepares the next batch while
 * this one is handled.  With levels, a read by weight comes first, and
 * only when it finds nothing does one block on every level's stream. */
static int read_new(rhandle *h, rsink *sink, int block_ms)
{
    int rc;
    size_t before = sink->n;
    if (h->levels > 1) {
        if ((rc = read_levels(h, sink)) != 0 || sink->n > before)
            return rc;
    }
    if (h->rd && h->rd->err) {
        redisFree(h->rd);
        h->rd = NULL;
        h->rd_ahead = false; /* its entries are taken over after the
                                visibility timeout */
    }
    if (!h->rd) {
        if ((rc = connect_one(h, &h->rd, true)) != 0)
            return rc;
        const char *id_argv[] = {"CLIENT", "ID"};
        redisReply *r = command(h->rd, 2, id_argv, NULL);
        if (r && r->type == REDIS_REPLY_INTEGER)
            h->rd_client_id = r->integer;
        freeReplyObject(r);
    }
    if (h->rd_ahead) {
        h->rd_ahead = false;
        if ((rc = take_reply(h, sink)) != 0 || sink->n == before)
            return rc;
    } else {
        if ((rc = send_read(h, block_ms)) != 0 ||
            (rc = take_reply(h, sink)) != 0)
            return rc;
    }
    if (h->levels == 1 && sink->n - before == (size_t)h->prefetch && h->rd &&
        !atomic_load(&h->interrupted) && send_read(h, -1) == 0)
        h->rd_ahead = true;
    return 0;
}

/* One trip for new entries: due delayed events are moved to the stream
 * first, and entries idle past the visibility timeout (a consumer that
 * died) are taken over every half timeout (at most every second). */
static int redis_fetch(void *state, evq__delivery *d, size_t max, int wait_ms)
{
    rhandle *h = state;
    rsink sink = {d, 0, max, 0};
    int rc = 0;

    pthread_mutex_lock(&h->rd_mu);
    if (atomic_load(&h->interrupted)) {
        pthread_mutex_unlock(&h->rd_mu);
        return 0;
    }
    int64_t now = now_ms();
    if (now >= atomic_load(&h->next_promote_ms)) {
        int64_t next = promote(h);
        /* Look again within a second even when nothing waits: other
         * processes add delayed events too. */
        atomic_store(&h->next_promote_ms, next < now + 1000 ? next : now + 1000);
    }
    int64_t wake = atomic_load(&h->next_promote_ms);
    if (now >= h->next_reclaim_ms) {
        h->next_reclaim_ms = now + (h->vt_ms < 2000 ? h->vt_ms / 2 : 1000);
        rc = reclaim(h, &sink);
    }
    if (wake > h->next_reclaim_ms)
        wake = h->next_reclaim_ms;
    if (!rc && sink.n == 0) {
        int block = -1; /* -1: do not block */
        if (wait_ms > 0) {
            int64_t until = wake - now;
            if (wait_ms < until)
                until = wait_ms;
            block = until <= 0 ? 1 : (int)until;
        }
        flush_acks(h);
        rc = read_new(h, &sink, block);
    }
    pthread_mutex_unlock(&h->rd_mu);
    if (h->levels > 1 && sink.n > 1)
        qsort(d, sink.n, sizeof *d, by_level);
    return sink.n ? (int)sink.n : rc;
}

/* ---- settle
 * ------------------------------------------------------------------- */

/* Runs settle_lua for entry m: `op` is "touch", "ack" or "nack" (with
 * delay_ms and the attempt count to keep).  EVQ_ESTATE when the entry is
 * no longer this consumer's. */
static int settle(rhandle *h, const char *op, struct rmsg *m, int64_t delay_ms,
                  int attempts)
{
    char count[24], att[16], due[32] = "", id[40] = "";
    snprintf(count, sizeof count, "%lld", m->deliveries);
    snprintf(att, sizeof att, "%d", attempts);
    if (strcmp(op, "nack") == 0 && delay_ms > 0) {
        snprintf(due, sizeof due, "%lld", (long long)(now_ms() + delay_ms));
        evq__uuid7(id);
        if (m->level) /* promote_lua puts it back on its level */
            snprintf(id + strlen(id), sizeof id - strlen(id), "/p%d",
                     m->level);
    }
    const char *argv[] = {"EVAL",      settle_lua, "2",
                          h->streams[m->level], h->delayed, op,
                          h->consumer, m->id,      count,
                          due,         att,        (const char *)m->body,
                          id};
    size_t lens[13];
    for (int i = 0; i < 13; i++)
        lens[i] = i != 11 ? strlen(argv[i]) : op[0] == 'n' ? m->len : 0;
    redisReply *r;
    int rc = run(h, 13, argv, lens, &r, op);
    if (rc)
        return rc;
    bool ours = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    return ours ? 0 : evq__lease_lost(op);
}

/* Acks of deliveries with time left on their lease wait to be sent
 * together (ack_flush_ms; the flusher sees to it): no other consumer can
 * take the entry over before its lease ends.  An ack near or past the end
 * of its lease goes at once, checked against the pending list. */
static int redis_ack(void *state, evq__delivery **d, size_t n)
{
    rhandle *h = state;
    int rc = 0, lost = 0;
    bool due = false, queued = false, flushed = false;
    int64_t margin = h->vt_ms * 1000000 / 2 + h->ack_flush_ms * 1000000LL;
    int64_t now_ns = evq__now_mono_ns();

    for (size_t i = 0; i < n; i++) {
        rmsg *m = d[i]->token;
        if (m->lease_ns - now_ns > margin)
            continue;
        if (!flushed) { /* what waits goes first, in order */
            flush_acks(h);
            flushed = true;
        }
        int src = settle(h, "ack", m, 0, 0);
        if (src == EVQ_ESTATE)
            lost++;
        else if (src && !rc)
            rc = src;
        free(m);
        d[i]->token = NULL;
    }
    pthread_mutex_lock(&h->ack_mu);
    for (size_t i = 0; i < n; i++) {
        rmsg *m = d[i]->token;
        if (!m)
            continue;
        if (evq__grow(&h->acks, &h->cap_acks, h->n_acks, sizeof *h->acks)) {
            if (!rc)
                rc = evq__err(EVQ_ENOMEM, "out of memory");
        } else { /* else its lease runs out: it is delivered again */
            if (h->n_acks == 0)
                h->oldest_ack_ms = now_ms();
            struct rack *a = &h->acks[h->n_acks++];
            memcpy(a->id, m->id, sizeof m->id);
            a->level = m->level;
            a->deliveries = m->deliveries;
            a->lease_ns = m->lease_ns;
            queued = true;
        }
        free(m);
    }
    if (queued)
        due = evq__flush_due(h->n_acks, h->oldest_ack_ms, now_ms(),
                             h->ack_flush_ms, atomic_load(&h->interrupted));
    pthread_mutex_unlock(&h->ack_mu);
    if (due) {
        int frc = flush_acks(h);
        if (!rc)
            rc = frc;
    } else if (queued) {
        evq__flusher_arm(&h->flusher,
                         evq__now_mono_ns() + h->ack_flush_ms * 1000000LL);
    }
    if (!rc && lost)
        rc = evq__lease_lost("ack");
    return rc;
}

static int redis_nack(void *state, evq__delivery *d, int64_t delay_ms)
{
    rhandle *h = state;
    rmsg *m = d->token;
    int rc = 0;

    /* Only the start of an oversize entry was read: it stays pending as
     * stored, and is taken over after the visibility timeout. */
    if (!m->full_len)
        rc = settle(h, "nack", m, delay_ms, m->attempt);
    if (!rc && delay_ms > 0) {
        /* Due soon: let the next dequeue look for it in time. */
        int64_t due_ms = now_ms() + delay_ms;
        int64_t cur = atomic_load(&h->next_promote_ms);
        while (cur > due_ms &&
               !atomic_compare_exchange_weak(&h->next_promote_ms, &cur, due_ms))
            ;
    }
    free(m);
    return rc;
}

static int redis_touch(void *state, evq__delivery *d)
{
    rhandle *h = state;
    rmsg *m = d->token;
    int64_t lease_ns = evq__now_mono_ns() + h->vt_ms * 1000000;
    int rc = settle(h, "touch", m, 0, 0);
    if (!rc)
        m->lease_ns = d->lease_ns = lease_ns;
    return rc;
}

/* Returns to the stream what was read but never delivered, with its
 * attempt count unchanged, unless another consumer has taken it over
 * meanwhile. */
static void redis_hand_back(void *state, evq__delivery *d, size_t n)
{
    rhandle *h = state;
    for (size_t i = 0; i < n; i++) {
        rmsg *m = d[i].token;
        if (!m->full_len) /* else left pending, as stored: see redis_nack */
            settle(h, "nack", m, 0, m->attempt - 1);
        free(m);
    }
}

static int redis_interrupt(void *state)
{
    rhandle *h = state;
    atomic_store(&h->interrupted, true);
    if (h->rd_client_id > 0) {
        char id[32];
        snprintf(id, sizeof id, "%lld", h->rd_client_id);
        const char *argv[] = {"CLIENT", "UNBLOCK", id};
        redisReply *r;
        if (run(h, 3, argv, NULL, &r, "CLIENT UNBLOCK") == 0)
            freeReplyObject(r);
    }
    flush_acks(h);
    return 0;
}

static int redis_stats(void *state, struct evq_queue_stats *out)
{
    rhandle *h = state;
    redisReply *r;
    const char *zcard[] = {"ZCARD", h->delayed};
    long long len = 0, pending = 0;
    int rc = 0;
    flush_acks(h);
    for (int lv = 0; lv < h->levels; lv++) {
        const char *xlen[] = {"XLEN", h->streams[lv]};
        const char *xpend[] = {"XPENDING", h->streams[lv], "evq"};
        if ((rc = run(h, 2, xlen, NULL, &r, "XLEN")) != 0)
            return rc;
        len += r->integer;
        freeReplyObject(r);
        if ((rc = run(h, 3, xpend, NULL, &r, "XPENDING")) != 0)
            return rc;
        if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1)
            pending += r->element[0]->integer;
        freeReplyObject(r);
    }
    if ((rc = run(h, 2, zcard, NULL, &r, "ZCARD")) != 0)
        return rc;
    out->delayed = r->integer;
    freeReplyObject(r);
    /* Acked entries are deleted, so the stream holds ready and pending. */
    out->in_flight = pending;
    out->depth = len > pending ? len - pending : 0;
    return 0;
}

/* Queue `name` holds its stream's entries (ready and pending: acked ones
 * are deleted) and its delayed set's. */
static int redis_count(void *state, const char *name, int64_t *n)
{
    rhandle *h = state;
    char *stream, *delayed;
    redisReply *r;
    int rc = EVQ_ENOMEM;
    *n = -1;
    if (queue_keys(h->prefix, name, &stream, &delayed) == 0) {
        const char *xlen[] = {"XLEN", stream};
        const char *zcard[] = {"ZCARD", delayed};
        if ((rc = run(h, 2, xlen, NULL, &r, "XLEN")) == 0) {
            long long len = r->integer;
            freeReplyObject(r);
            if ((rc = run(h, 2, zcard, NULL, &r, "ZCARD")) == 0) {
                *n = len + r->integer;
                freeReplyObject(r);
            }
        }
    } else {
        evq__err(EVQ_ENOMEM, "out of memory");
    }
    free(stream);
    free(delayed);
    return rc;
}

/* ---- the queue's records: pause state, finished ids ------------------- */

/* The key <stream>:<key> of record `key`; malloc'd, NULL when out of
 * memory (said). */
static char *record_key(rhandle *h, const char *key)
{
    size_t n = strlen(h->stream) + strlen(key) + 2;
    char *k = malloc(n);
    if (!k) {
        evq__err(EVQ_ENOMEM, "out of memory");
        return NULL;
    }
    snprintf(k, n, "%s:%s", h->stream, key);
    return k;
}

/* Deletes the queue's stream (its entries and consumer group) and its
 * delayed set. */
static int redis_destroy(void *state)
{
    rhandle *h = state;
    redisReply *r;
    char *paused = record_key(h, "paused");
    if (!paused)
        return EVQ_ENOMEM;
    char *mark = record_key(h, "priorities");
    const char *del[5 + LEVELS] = {"DEL", h->delayed, paused, mark};
    int argc = mark ? 4 : 3;
    for (int lv = 0; lv < h->levels; lv++)
        del[argc++] = h->streams[lv];
    flush_acks(h);
    int rc = run(h, argc, del, NULL, &r, "DEL");
    if (!rc)
        freeReplyObject(r);
    free(paused);
    free(mark);
    return rc;
}

/* Whether the record is there: 1, 0, or the error. */
static int record_has(rhandle *h, const char *key)
{
    char *k = record_key(h, key);
    if (!k)
        return EVQ_ENOMEM;
    const char *a[] = {"EXISTS", k};
    redisReply *r;
    int rc = run(h, 2, a, NULL, &r, "EXISTS");
    if (!rc) {
        rc = r->type == REDIS_REPLY_INTEGER && r->integer > 0;
        freeReplyObject(r);
    }
    free(k);
    return rc;
}

/* Sets the record (for ttl_ms, 0: for good) or deletes it (`put` false). */
static int record_write(rhandle *h, const char *key,
                        bool put, int64_t ttl_ms)
{
    char *k = record_key(h, key);
    if (!k)
        return EVQ_ENOMEM;
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%lld", (long long)ttl_ms);
    const char *set[] = {"SET", k, "1", "PX", ttl};
    const char *del[] = {"DEL", k};
    redisReply *r;
    int rc = put ? run(h, ttl_ms > 0 ? 5 : 3, set, NULL, &r, "SET")
                 : run(h, 2, del, NULL, &r, "DEL");
    if (!rc)
        freeReplyObject(r);
    free(k);
    return rc;
}

/* SET NX: 1 when written, 0 when the key is there (it expires by
 * itself). */
static int record_claim(rhandle *h, const char *key, int64_t ttl_ms)
{
    char *k = record_key(h, key);
    if (!k)
        return EVQ_ENOMEM;
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%lld", (long long)ttl_ms);
    const char *set[] = {"SET", k, "1", "NX", "PX", ttl};
    redisReply *r;
    int rc = run(h, 6, set, NULL, &r, "SET NX");
    free(k);
    if (rc)
        return rc;
    rc = r->type == REDIS_REPLY_STATUS ? 1 : 0; /* OK, or nil */
    freeReplyObject(r);
    return rc;
}

/* A rate limit's bucket is the hash <stream>:<key>, kept by take_lua. */
static int redis_take(void *state, const char *key, double rate, int burst,
                      int64_t *wait_ms)
{
    rhandle *h = state;
    char *k = record_key(h, key);
    if (!k)
        return EVQ_ENOMEM;
    char r_s[40], b_s[16];
    snprintf(r_s, sizeof r_s, "%.17g", rate);
    snprintf(b_s, sizeof b_s, "%d", burst);
    const char *argv[] = {"EVAL", take_lua, "1", k, r_s, b_s};
    redisReply *r;
    int rc = run(h, 6, argv, NULL, &r, "a rate limit's token");
    free(k);
    if (rc)
        return rc;
    *wait_ms = r->type == REDIS_REPLY_INTEGER && r->integer > 0 ? r->integer
                                                                : 0;
    freeReplyObject(r);
    return 0;
}

/* Record `key` is the key <stream>:<key> (the pause state
 * <stream>:paused, a finished id <stream>:done:<id> expiring with its
 * window). */
static int redis_record(void *state, const char *key, int op, int64_t ttl_ms)
{
    if (op == EVQ__RECORD_HAS)
        return record_has(state, key);
    if (op == EVQ__RECORD_CLAIM)
        return record_claim(state, key, ttl_ms);
    return record_write(state, key, op == EVQ__RECORD_PUT, ttl_ms);
}

static int redis_levels(void *state)
{
    return ((rhandle *)state)->levels;
}

const struct evq_backend_ops evq__backend_redis = {
    .levels = redis_levels,
    .levels_how = "a stream per level needs the queue option "
                  "redis.priorities=true",
    .scheme = "redis",
    .flags = EVQ__PRIORITIES,
    .opts = redis_opts,
    .open = redis_open,
    .enqueue_start = redis_start,
    .enqueue_finish = redis_finish,
    .fetch = redis_fetch,
    .hand_back = redis_hand_back,
    .prefetch_opt = "redis.prefetch",
    .ack = redis_ack,
    .nack = redis_nack,
    .touch = redis_touch,
    .interrupt = redis_interrupt,
    .stats = redis_stats,
    .count = redis_count,
    .close = redis_close,
    .destroy = redis_destroy,
    .record = redis_record,
    .take = redis_take,
};
