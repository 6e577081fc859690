/* Loading an Ansible YAML inventory into struct inventory.
 *
 * The format is Ansible's YAML inventory (what `ansible-inventory -i x.yml`
 * reads), so operators reuse the file they already have. The rules below
 * follow Ansible where an operator's file depends on them, and refuse what
 * Ansible only warns about: a deploy tool that guesses puts a driver on the
 * wrong nodes.
 *
 * Structure
 *  - The root is a mapping of group names. A top-level group other than
 *    "all" that no group lists as a child becomes a child of "all". The
 *    groups "all" and "ungrouped" always exist; "ungrouped" is a child of
 *    "all". An empty file or a root that is not a mapping is an error.
 *  - A group is nothing (null) or a mapping with the keys hosts, vars and
 *    children; any other key is an error. hosts maps host names to nothing
 *    or a mapping of variables; vars maps variable names to values;
 *    children maps group names to nothing or a group mapping. As in Ansible,
 *    a section given as one string stands for a mapping of that one key.
 *  - A group may be listed under several parents and defined in several
 *    places: what each place says is merged. "all" cannot be a child. A
 *    group that is its own ancestor is an error naming the cycle.
 *  - A host is in "ungrouped" when it is in no group other than "all" (and
 *    "ungrouped"), which is what Ansible's reconcile step does.
 *  - Hosts and groups are kept in order of first appearance, reading the
 *    file top to bottom. (Ansible reads vars, then children, then hosts of
 *    each group; file order is the one a person can predict.)
 *  - Names are non-empty and have no control characters. A host name may
 *    end in ":PORT" (one colon outside [], digits after it), which sets
 *    ansible_port unless the entry sets it; a name with two or more colons
 *    is an IPv6 address and is kept whole. Ranges in host names are
 *    expanded by inv_expand_range() (range.c).
 *
 * YAML (parsed with libyaml's event parser into a small node tree)
 *  - One document. A duplicate key in any mapping is an error at its second
 *    occurrence (Ansible only warns and keeps the last). Anchors and aliases
 *    work; an alias to a node that is not complete yet (a node containing
 *    itself) and an anchor defined twice are errors. "<<" merge keys work
 *    as in PyYAML: the mapping's own keys win over merged ones, and in a
 *    list of merged mappings the earlier ones win.
 *  - Bounds, so that any input is safe. Errors: nesting deeper than
 *    MAX_DEPTH (64, counted through aliases too); more than MAX_VISITS
 *    (1,000,000) nodes or MAX_BYTES (64 MiB) of scalar text visited once
 *    aliases and merge keys are expanded (each node knows its expanded
 *    size when it completes, so an alias bomb is refused at the variable
 *    that sets it off, before any of it is built); more than MAX_HOSTS
 *    (100,000) hosts; more than MAX_CELLS (5,000,000) host names expanded,
 *    host-group memberships and per-host variable entries; a file over
 *    MAX_FILE (16 MiB). A group definition or a hosts entry that an alias
 *    repeats under the same group is read once.
 *  - Plain (unquoted) scalars resolve as PyYAML's YAML 1.1 resolver does
 *    (the one Ansible uses): ~, null, Null, NULL and empty are null;
 *    yes/no/true/false/on/off in lower, Capitalised or UPPER case are
 *    booleans; integers are decimal, 0x hex, 0b binary, leading-0 octal or
 *    base 60 (1:30), with '_' allowed; floats need a '.' (1.5, .5, 1.0e+3,
 *    1:30.5). Quoted and block scalars are strings. What JSON cannot hold
 *    (integers beyond 64 bits, .inf, .nan) stays a string as written. Tags:
 *    !!str, !!int, !!float, !!bool, !!null, !!seq, !!map, !unsafe (a
 *    string), !vault (kept as {"__ansible_vault": TEXT}, as
 *    `ansible-inventory --list` shows it); any other tag is an error.
 *
 * Variables
 *  - Values are any YAML, stored as jansson values. A host given different
 *    values (json_equal) for one variable in two places is an error naming
 *    both places; the same goes for a group. The same value twice is fine.
 *  - Effective host vars, Ansible's rule: the vars of every group the host
 *    is in, ancestors included, ordered by depth (the longest path from
 *    "all", so "all" comes first), then by ansible_group_priority (an
 *    integer, default 1), then by name; each later group replaces earlier
 *    values key by key (no deep merge), and the host's own vars come last.
 *    Values are shared between hosts by reference: read them, never modify.
 *  - Connection fields come from the effective vars: ansible_host (or
 *    ansible_ssh_host; ansible_host wins when both are set, as in Ansible),
 *    ansible_port (or ansible_ssh_port: an integer or a string of digits,
 *    1..65535), ansible_user (or ansible_ssh_user),
 *    ansible_ssh_private_key_file (a leading "~/" becomes $HOME/),
 *    ansible_become (a boolean, 0 or 1, or one of Ansible's words y, yes,
 *    on, 1, true, t, n, no, off, 0, false, f in any case),
 *    ansible_become_user, ansible_connection, and ansible_ssh_common_args
 *    (kept raw; split into words as a shell would, and the ProxyJump given
 *    by "-J X", "-JX", "-o ProxyJump=X", "-oProxyJump=X" or "-o 'ProxyJump
 *    X'" goes to proxy_jump; the first one wins, as in ssh; "none" = unset).
 *    String fields accept an integer (ansible_user: 1000); null is unset.
 *
 * Every string in struct inventory is owned by it; inv_release frees all. */
#include "inventory.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <pwd.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#define MAX_DEPTH 64
#define MAX_VISITS 1000000
#define MAX_BYTES ((size_t)64 << 20)
#define MAX_FILE ((size_t)16 << 20)
/* Far beyond the fleets kfleet is for, and small enough that the worst
 * input stays well under a gigabyte and a few seconds. */
#define MAX_HOSTS ((size_t)100000)
#define MAX_CELLS ((size_t)5000000)
#define NONE SIZE_MAX
/* Room for a display-safe copy of up to 64 bytes of input. */
#define SHOW 256

#define G_ALL 0
#define G_UNGROUPED 1

/* ------------------------------------------------------------------------ */
/* Small containers                                                          */

/* Returns p grown to hold need elements of size, or NULL (p untouched). */
static void *grow(void *p, size_t *cap, size_t need, size_t size)
{
    size_t ncap;
    void *np;

    if (need <= *cap)
        return p;
    ncap = *cap ? *cap : 4;
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2 / size)
            return NULL;
        ncap *= 2;
    }
    np = realloc(p, ncap * size);
    if (np == NULL)
        return NULL;
    *cap = ncap;
    return np;
}

static uint64_t hash_bytes(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ULL;
    size_t i;

    for (i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* An open-addressing map from a byte string to an index. It does not copy
 * keys: they must outlive the map. */
struct strmap_slot {
    const char *key;
    size_t len;
    size_t val;
};

struct strmap {
    struct strmap_slot *slots;
    size_t cap, n;
};

static void strmap_release(struct strmap *m)
{
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

static struct strmap_slot *strmap_slot(const struct strmap *m, const char *key, size_t len)
{
    size_t i;

    if (m->cap == 0)
        return NULL;
    i = (size_t)hash_bytes(key, len) & (m->cap - 1);
    for (;;) {
        struct strmap_slot *s = &m->slots[i];

        if (s->key == NULL || (s->len == len && memcmp(s->key, key, len) == 0))
            return s;
        i = (i + 1) & (m->cap - 1);
    }
}

static int strmap_get(const struct strmap *m, const char *key, size_t len, size_t *val)
{
    struct strmap_slot *s = strmap_slot(m, key, len);

    if (s == NULL || s->key == NULL)
        return 0;
    *val = s->val;
    return 1;
}

/* Adds key -> val; key must not be in the map. */
static int strmap_put(struct strmap *m, const char *key, size_t len, size_t val)
{
    struct strmap_slot *s;

    if ((m->n + 1) * 2 > m->cap) {
        struct strmap_slot *old = m->slots;
        size_t ocap = m->cap, ncap = m->cap ? m->cap * 2 : 16, i;

        if (ncap > SIZE_MAX / sizeof(*old))
            return KF_ENOMEM;
        m->slots = calloc(ncap, sizeof(*m->slots));
        if (m->slots == NULL) {
            m->slots = old;
            return KF_ENOMEM;
        }
        m->cap = ncap;
        for (i = 0; i < ocap; i++)
            if (old[i].key != NULL)
                *strmap_slot(m, old[i].key, old[i].len) = old[i];
        free(old);
    }
    s = strmap_slot(m, key, len);
    s->key = key;
    s->len = len;
    s->val = val;
    m->n++;
    return 0;
}

/* A set of pairs of indices ("group g has host h"), so that adding one is
 * O(1) whatever the sizes. */
struct pairset {
    uint64_t *slots; /* 0 = empty, else key + 1 */
    size_t cap, n;
};

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static uint64_t *pairset_slot(const struct pairset *s, uint64_t stored)
{
    size_t i = (size_t)mix64(stored) & (s->cap - 1);

    while (s->slots[i] != 0 && s->slots[i] != stored)
        i = (i + 1) & (s->cap - 1);
    return &s->slots[i];
}

/* Adds (a, b); *added says whether it was new. */
static int pairset_add(struct pairset *s, size_t a, size_t b, int *added)
{
    uint64_t stored = (((uint64_t)a << 32) | (uint64_t)b) + 1, *slot;

    if ((s->n + 1) * 2 > s->cap) {
        uint64_t *old = s->slots;
        size_t ocap = s->cap, ncap = s->cap ? s->cap * 2 : 64, i;

        if (ncap > SIZE_MAX / sizeof(*old))
            return KF_ENOMEM;
        s->slots = calloc(ncap, sizeof(*s->slots));
        if (s->slots == NULL) {
            s->slots = old;
            return KF_ENOMEM;
        }
        s->cap = ncap;
        for (i = 0; i < ocap; i++)
            if (old[i] != 0)
                *pairset_slot(s, old[i]) = old[i];
        free(old);
    }
    slot = pairset_slot(s, stored);
    *added = *slot == 0;
    if (*added) {
        *slot = stored;
        s->n++;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The loader's state                                                        */

enum ykind { Y_SCALAR, Y_SEQ, Y_MAP };
enum ytag { T_NONE, T_STR, T_INT, T_FLOAT, T_BOOL, T_NULL, T_MERGE, T_VAULT, T_SEQ, T_MAP };

struct ynode {
    enum ykind kind;
    enum ytag tag;
    int plain; /* a scalar written without quotes */
    struct inv_loc loc;
    char *s; /* scalar text, NUL-terminated (and it may hold NULs) */
    size_t len;
    size_t *kids; /* SEQ: items; MAP: key, value, key, value, ... */
    size_t nkids, kcap;
    /* The size of the tree this node stands for once aliases (and the
     * values of merge keys) are expanded, in nodes and in scalar bytes;
     * saturated just past the bounds. Computed as each node completes. */
    size_t xnodes, xbytes;
};

struct edge {
    size_t to;
    struct inv_loc loc; /* where the child was listed */
};

struct lgroup {
    char *name;
    struct inv_loc loc;
    int toplevel;
    json_t *vars, *vlocs; /* vlocs: name -> [line, col] of its definition */
    struct edge *kids;
    size_t nkids, kcap;
    size_t *parents;
    size_t nparents, pcap;
    size_t *hosts;
    size_t nhosts, hcap;
    size_t depth;
    json_int_t priority;
};

struct lhost {
    char *name;
    struct inv_loc loc;
    json_t *vars, *vlocs;
    size_t *groups; /* direct groups */
    size_t ngroups, gcap;
};

struct pair {
    size_t k, v; /* node indices; v may be NONE (no value) */
};

struct pairs {
    struct pair *p;
    size_t n, cap;
};

struct ld {
    char file[SHOW]; /* display-safe name for messages */
    struct kf_err *err;
    struct ynode *nodes;
    size_t nnodes, ncap, root;
    size_t visits, bytes, cells;
    struct lgroup *g;
    size_t ng, gcap;
    struct strmap gmap;
    struct lhost *h;
    size_t nh, hcap;
    struct strmap hmap;
    struct pairset members, edges;
    /* (group, node) pairs already read: an alias that repeats a group
     * definition or a hosts entry under the same group adds nothing, so it
     * is skipped rather than walked again. */
    struct pairset walked_groups, walked_hosts;
};

static int fail(struct ld *ld, int code, const struct inv_loc *loc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(struct ld *ld, int code, const struct inv_loc *loc, const char *fmt, ...)
{
    char msg[sizeof(ld->err->msg)];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (loc != NULL && loc->line > 0)
        return kf_err_set(ld->err, code, "%s:%d:%d: %s", ld->file, loc->line, loc->col, msg);
    return kf_err_set(ld->err, code, "%s: %s", ld->file, msg);
}

static int nomem(struct ld *ld)
{
    return kf_err_set(ld->err, KF_ENOMEM, "%s: out of memory loading the inventory", ld->file);
}

static const char *show(char *buf, const char *s, size_t n)
{
    return kf_escape_to(buf, SHOW, s, n);
}

static const char *kind_word(const struct ynode *n)
{
    switch (n->kind) {
    case Y_SEQ:
        return "a sequence";
    case Y_MAP:
        return "a mapping";
    default:
        return "a scalar";
    }
}

static void ld_release(struct ld *ld)
{
    size_t i;

    for (i = 0; i < ld->nnodes; i++) {
        free(ld->nodes[i].s);
        free(ld->nodes[i].kids);
    }
    free(ld->nodes);
    for (i = 0; i < ld->ng; i++) {
        struct lgroup *g = &ld->g[i];

        free(g->name);
        json_decref(g->vars);
        json_decref(g->vlocs);
        free(g->kids);
        free(g->parents);
        free(g->hosts);
    }
    free(ld->g);
    for (i = 0; i < ld->nh; i++) {
        free(ld->h[i].name);
        json_decref(ld->h[i].vars);
        json_decref(ld->h[i].vlocs);
        free(ld->h[i].groups);
    }
    free(ld->h);
    strmap_release(&ld->gmap);
    strmap_release(&ld->hmap);
    free(ld->members.slots);
    free(ld->edges.slots);
    free(ld->walked_groups.slots);
    free(ld->walked_hosts.slots);
}

/* Counts a node visit against the alias-bomb bounds. */
static int visit(struct ld *ld, size_t ni)
{
    const struct ynode *n = &ld->nodes[ni];

    ld->visits++;
    if (n->kind == Y_SCALAR)
        ld->bytes += n->len;
    if (ld->visits > MAX_VISITS)
        return fail(ld, KF_EPARSE, &n->loc,
                    "more than %d YAML nodes once aliases and merge keys are expanded "
                    "(an alias bomb?)",
                    MAX_VISITS);
    if (ld->bytes > MAX_BYTES)
        return fail(ld, KF_EPARSE, &n->loc,
                    "more than %zu MiB of YAML text once aliases and merge keys are expanded "
                    "(an alias bomb?)",
                    MAX_BYTES >> 20);
    return 0;
}

/* A value's expanded size is known before it is converted: refuse an alias
 * bomb where it starts rather than after a million nodes of it. The size
 * counts merged mappings whole, so it bounds what converting can visit. */
static int check_expansion(struct ld *ld, size_t ni, const struct inv_loc *loc)
{
    const struct ynode *n = &ld->nodes[ni];

    if (n->xnodes > MAX_VISITS - (ld->visits < MAX_VISITS ? ld->visits : MAX_VISITS))
        return fail(ld, KF_EPARSE, loc,
                    "more than %d YAML nodes once aliases and merge keys are expanded "
                    "(an alias bomb?)",
                    MAX_VISITS);
    if (n->xbytes > MAX_BYTES - (ld->bytes < MAX_BYTES ? ld->bytes : MAX_BYTES))
        return fail(ld, KF_EPARSE, loc,
                    "more than %zu MiB of YAML text once aliases and merge keys are expanded "
                    "(an alias bomb?)",
                    MAX_BYTES >> 20);
    return 0;
}

static int too_deep(struct ld *ld, size_t ni)
{
    return fail(ld, KF_EPARSE, &ld->nodes[ni].loc,
                "nesting deeper than %d levels (aliases included)", MAX_DEPTH);
}

/* ------------------------------------------------------------------------ */
/* YAML: events to nodes                                                     */

struct anchor {
    char *name;
    size_t node;
    int complete; /* aliases may refer only to complete nodes: no cycles */
};

struct composer {
    size_t stack[MAX_DEPTH];
    size_t stack_anchor[MAX_DEPTH]; /* index into anchors, or NONE */
    int depth;
    struct anchor *anchors;
    size_t nanchors, acap;
    struct strmap amap;
};

static void composer_release(struct composer *c)
{
    size_t i;

    for (i = 0; i < c->nanchors; i++)
        free(c->anchors[i].name);
    free(c->anchors);
    strmap_release(&c->amap);
}

static struct inv_loc mark_loc(const yaml_mark_t *m)
{
    struct inv_loc loc;

    loc.line = m->line < INT_MAX ? (int)m->line + 1 : INT_MAX;
    loc.col = m->column < INT_MAX ? (int)m->column + 1 : INT_MAX;
    return loc;
}

static int tag_of(struct ld *ld, const char *tag, enum ykind kind, const struct inv_loc *loc,
                  enum ytag *out)
{
    static const struct {
        const char *tag;
        enum ytag t;
        enum ykind kind;
    } known[] = {
        {"tag:yaml.org,2002:str", T_STR, Y_SCALAR},
        {"tag:yaml.org,2002:int", T_INT, Y_SCALAR},
        {"tag:yaml.org,2002:float", T_FLOAT, Y_SCALAR},
        {"tag:yaml.org,2002:bool", T_BOOL, Y_SCALAR},
        {"tag:yaml.org,2002:null", T_NULL, Y_SCALAR},
        {"tag:yaml.org,2002:merge", T_MERGE, Y_SCALAR},
        {"tag:yaml.org,2002:seq", T_SEQ, Y_SEQ},
        {"tag:yaml.org,2002:map", T_MAP, Y_MAP},
        /* Ansible's own: !unsafe marks a string it must not template. */
        {"!unsafe", T_STR, Y_SCALAR},
        {"!vault", T_VAULT, Y_SCALAR},
        {"!vault-encrypted", T_VAULT, Y_SCALAR},
    };
    char buf[SHOW];
    size_t i;

    *out = T_NONE;
    if (tag == NULL)
        return 0;
    if (strcmp(tag, "!") == 0) {
        /* The non-specific tag: a scalar is a string, anything else as is. */
        *out = kind == Y_SCALAR ? T_STR : T_NONE;
        return 0;
    }
    for (i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        if (strcmp(tag, known[i].tag) == 0 && kind == known[i].kind) {
            *out = known[i].t;
            return 0;
        }
    }
    return fail(ld, KF_EPARSE, loc, "unsupported YAML tag '%s' on %s", show(buf, tag, strlen(tag)),
                kind == Y_SCALAR ? "a scalar"
                : kind == Y_SEQ  ? "a sequence"
                                 : "a mapping");
}

static int new_node(struct ld *ld, enum ykind kind, const yaml_mark_t *mark, size_t *out)
{
    struct ynode *nodes, *n;

    if (ld->nnodes >= MAX_VISITS) {
        struct inv_loc loc = mark_loc(mark);

        return fail(ld, KF_EPARSE, &loc, "more than %d YAML nodes", MAX_VISITS);
    }
    nodes = grow(ld->nodes, &ld->ncap, ld->nnodes + 1, sizeof(*nodes));
    if (nodes == NULL)
        return nomem(ld);
    ld->nodes = nodes;
    n = &ld->nodes[ld->nnodes];
    memset(n, 0, sizeof(*n));
    n->kind = kind;
    n->loc = mark_loc(mark);
    *out = ld->nnodes++;
    return 0;
}

/* Appends node ni to the open collection, or makes it the root. */
static int attach(struct ld *ld, struct composer *c, size_t ni)
{
    struct ynode *parent;
    size_t *kids;

    if (c->depth == 0) {
        ld->root = ni;
        return 0;
    }
    parent = &ld->nodes[c->stack[c->depth - 1]];
    kids = grow(parent->kids, &parent->kcap, parent->nkids + 1, sizeof(*kids));
    if (kids == NULL)
        return nomem(ld);
    parent->kids = kids;
    parent->kids[parent->nkids++] = ni;
    return 0;
}

/* Declares the anchor of node ni (when the node starts, so that a second
 * definition is reported where it is written); *out is its index. */
static int add_anchor(struct ld *ld, struct composer *c, const yaml_char_t *yname, size_t ni,
                      size_t *out)
{
    const char *name = (const char *)yname;
    size_t prev, len;
    struct anchor *a;
    char buf[SHOW];

    *out = NONE;
    if (name == NULL)
        return 0;
    len = strlen(name);
    if (strmap_get(&c->amap, name, len, &prev)) {
        const struct inv_loc *first = &ld->nodes[c->anchors[prev].node].loc;

        return fail(ld, KF_EPARSE, &ld->nodes[ni].loc,
                    "anchor '&%s' defined again (first defined at %d:%d)", show(buf, name, len),
                    first->line, first->col);
    }
    a = grow(c->anchors, &c->acap, c->nanchors + 1, sizeof(*a));
    if (a == NULL)
        return nomem(ld);
    c->anchors = a;
    a = &c->anchors[c->nanchors];
    a->node = ni;
    a->complete = 0;
    if ((a->name = strdup(name)) == NULL)
        return nomem(ld);
    c->nanchors++;
    if (strmap_put(&c->amap, a->name, len, c->nanchors - 1) < 0)
        return nomem(ld);
    *out = c->nanchors - 1;
    return 0;
}

/* Where libyaml reports only a byte offset (reader errors), finds the line
 * and column, counting columns in characters as libyaml's marks do. */
static struct inv_loc offset_loc(const char *data, size_t len, size_t off)
{
    struct inv_loc loc = {1, 1};
    size_t i;

    for (i = 0; i < off && i < len; i++) {
        if (data[i] == '\n') {
            loc.line++;
            loc.col = 1;
        } else if (((unsigned char)data[i] & 0xc0) != 0x80 && loc.col < INT_MAX) {
            loc.col++;
        }
        if (loc.line == INT_MAX)
            break;
    }
    return loc;
}

static int yaml_fail(struct ld *ld, const yaml_parser_t *p, const char *data, size_t len)
{
    const char *problem = p->problem ? p->problem : "malformed YAML";
    struct inv_loc loc, ctx;

    switch (p->error) {
    case YAML_MEMORY_ERROR:
        return nomem(ld);
    case YAML_READER_ERROR:
        loc = offset_loc(data, len, p->problem_offset);
        if (p->problem_value != -1)
            return fail(ld, KF_EPARSE, &loc, "%s (#x%X)", problem, (unsigned)p->problem_value);
        return fail(ld, KF_EPARSE, &loc, "%s", problem);
    default:
        loc = mark_loc(&p->problem_mark);
        if (p->context != NULL) {
            ctx = mark_loc(&p->context_mark);
            return fail(ld, KF_EPARSE, &loc, "%s (%s at %d:%d)", problem, p->context, ctx.line,
                        ctx.col);
        }
        return fail(ld, KF_EPARSE, &loc, "%s", problem);
    }
}

/* Sums the expanded sizes of a complete collection's kids, which are all
 * complete (aliases refer only to complete nodes): linear in the document
 * however often aliases repeat a node. */
static void expanded_size(struct ynode *n, const struct ynode *nodes)
{
    size_t i;

    n->xnodes = 1;
    n->xbytes = 0;
    for (i = 0; i < n->nkids; i++) {
        const struct ynode *k = &nodes[n->kids[i]];

        n->xnodes =
            n->xnodes + k->xnodes > MAX_VISITS ? (size_t)MAX_VISITS + 1 : n->xnodes + k->xnodes;
        n->xbytes = n->xbytes + k->xbytes > MAX_BYTES ? MAX_BYTES + 1 : n->xbytes + k->xbytes;
    }
}

static int compose_event(struct ld *ld, struct composer *c, yaml_event_t *ev, int *ndocs, int *done)
{
    struct inv_loc loc = mark_loc(&ev->start_mark);
    char buf[SHOW];
    enum ytag tag;
    size_t ni, ai;
    int rc = 0;

    switch (ev->type) {
    case YAML_DOCUMENT_START_EVENT:
        if ((*ndocs)++ > 0)
            return fail(ld, KF_EPARSE, &loc,
                        "a second YAML document (an inventory is one document)");
        break;
    case YAML_STREAM_END_EVENT:
        *done = 1;
        break;
    case YAML_ALIAS_EVENT: {
        const char *name = (const char *)ev->data.alias.anchor;

        if (!strmap_get(&c->amap, name, strlen(name), &ai))
            return fail(ld, KF_EPARSE, &loc, "alias '*%s' refers to no anchor defined before it",
                        show(buf, name, strlen(name)));
        if (!c->anchors[ai].complete)
            return fail(ld, KF_EPARSE, &loc,
                        "alias '*%s' is inside the node it refers to (a recursive structure)",
                        show(buf, name, strlen(name)));
        rc = attach(ld, c, c->anchors[ai].node);
        break;
    }
    case YAML_SCALAR_EVENT: {
        struct ynode *n;

        rc = tag_of(ld, (const char *)ev->data.scalar.tag, Y_SCALAR, &loc, &tag);
        if (rc == 0)
            rc = new_node(ld, Y_SCALAR, &ev->start_mark, &ni);
        if (rc < 0)
            return rc;
        n = &ld->nodes[ni];
        n->tag = tag;
        n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        n->s = malloc(ev->data.scalar.length + 1);
        if (n->s == NULL)
            return nomem(ld);
        memcpy(n->s, ev->data.scalar.value, ev->data.scalar.length);
        n->s[ev->data.scalar.length] = '\0';
        n->len = ev->data.scalar.length;
        n->xnodes = 1;
        n->xbytes = n->len < MAX_BYTES ? n->len : MAX_BYTES + 1;
        rc = attach(ld, c, ni);
        if (rc == 0)
            rc = add_anchor(ld, c, ev->data.scalar.anchor, ni, &ai);
        if (rc == 0 && ai != NONE)
            c->anchors[ai].complete = 1;
        break;
    }
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        int is_seq = ev->type == YAML_SEQUENCE_START_EVENT;
        enum ykind kind = is_seq ? Y_SEQ : Y_MAP;
        const yaml_char_t *t = is_seq ? ev->data.sequence_start.tag : ev->data.mapping_start.tag;
        const yaml_char_t *a =
            is_seq ? ev->data.sequence_start.anchor : ev->data.mapping_start.anchor;

        if (c->depth >= MAX_DEPTH)
            return fail(ld, KF_EPARSE, &loc, "nesting deeper than %d levels", MAX_DEPTH);
        rc = tag_of(ld, (const char *)t, kind, &loc, &tag);
        if (rc == 0)
            rc = new_node(ld, kind, &ev->start_mark, &ni);
        if (rc == 0)
            rc = attach(ld, c, ni);
        if (rc == 0)
            rc = add_anchor(ld, c, a, ni, &ai);
        if (rc < 0)
            return rc;
        ld->nodes[ni].tag = tag;
        /* The anchor becomes usable at the end, when the node is complete. */
        c->stack[c->depth] = ni;
        c->stack_anchor[c->depth] = ai;
        c->depth++;
        break;
    }
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        if (c->depth == 0)
            return fail(ld, KF_EPARSE, &loc, "unbalanced end of a collection");
        c->depth--;
        expanded_size(&ld->nodes[c->stack[c->depth]], ld->nodes);
        if (c->stack_anchor[c->depth] != NONE)
            c->anchors[c->stack_anchor[c->depth]].complete = 1;
        break;
    default:
        break;
    }
    return rc;
}

static int compose(struct ld *ld, const char *data, size_t len)
{
    struct composer c;
    yaml_parser_t parser;
    yaml_event_t ev;
    int rc = 0, ndocs = 0, done = 0;

    memset(&c, 0, sizeof(c));
    if (!yaml_parser_initialize(&parser))
        return nomem(ld);
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
    while (!done) {
        if (!yaml_parser_parse(&parser, &ev)) {
            rc = yaml_fail(ld, &parser, data, len);
            goto out;
        }
        rc = compose_event(ld, &c, &ev, &ndocs, &done);
        yaml_event_delete(&ev);
        if (rc < 0)
            goto out;
    }
out:
    composer_release(&c);
    yaml_parser_delete(&parser);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Scalars: YAML 1.1 resolution as PyYAML does it                            */

static int is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

static int all_of(const char *s, size_t n, const char *set)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (s[i] == '\0' || strchr(set, s[i]) == NULL)
            return 0;
    return 1;
}

static int word_is(const char *s, size_t n, const char *w)
{
    return strlen(w) == n && memcmp(s, w, n) == 0;
}

static int is_null_word(const char *s, size_t n)
{
    return n == 0 || word_is(s, n, "~") || word_is(s, n, "null") || word_is(s, n, "Null") ||
           word_is(s, n, "NULL");
}

/* 1 or 0 for YAML 1.1's boolean words, -1 for anything else. */
static int bool_word(const char *s, size_t n)
{
    static const char *const yes[] = {"yes",  "Yes", "YES", "true", "True",
                                      "TRUE", "on",  "On",  "ON"};
    static const char *const no[] = {"no",    "No",  "NO",  "false", "False",
                                     "FALSE", "off", "Off", "OFF"};
    size_t i;

    for (i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        if (word_is(s, n, yes[i]))
            return 1;
    for (i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        if (word_is(s, n, no[i]))
            return 0;
    return -1;
}

/* Matches (":" [0-5]?[0-9])+ at the start of s; returns the bytes taken,
 * 0 if there is no group. */
static size_t sexa_groups(const char *s, size_t n)
{
    size_t k = 0, taken = 0;

    while (k < n && s[k] == ':') {
        if (k + 1 >= n || !is_digit(s[k + 1]))
            break;
        if (k + 2 < n && is_digit(s[k + 2])) {
            if (s[k + 1] > '5')
                break;
            k += 3;
        } else {
            k += 2;
        }
        taken = k;
    }
    return taken;
}

/* PyYAML's int: [-+]?0b[01_]+ | [-+]?0[0-7_]+ | [-+]?(0|[1-9][0-9_]*) |
 * [-+]?0x[0-9a-fA-F_]+ | [-+]?[1-9][0-9_]*(:[0-5]?[0-9])+ */
static int match_int11(const char *s, size_t n)
{
    size_t i = 0, j;

    if (n > 0 && (s[0] == '+' || s[0] == '-'))
        i = 1;
    s += i;
    n -= i;
    if (n == 0)
        return 0;
    if (n >= 3 && s[0] == '0' && s[1] == 'b')
        return all_of(s + 2, n - 2, "01_");
    if (n >= 3 && s[0] == '0' && s[1] == 'x')
        return all_of(s + 2, n - 2, "0123456789abcdefABCDEF_");
    if (s[0] == '0')
        return n == 1 || all_of(s + 1, n - 1, "01234567_");
    if (s[0] < '1' || s[0] > '9')
        return 0;
    for (j = 1; j < n && (is_digit(s[j]) || s[j] == '_'); j++)
        ;
    return j == n || sexa_groups(s + j, n - j) == n - j;
}

/* The value of text that match_int11() accepted; -1 where it does not fit
 * 64 bits or has no digits at all (PyYAML would fail there). */
static int int11_value(const char *s, size_t n, json_int_t *out)
{
    unsigned long long v = 0, part = 0;
    unsigned base = 10;
    size_t i = 0;
    int neg = 0, digits = 0, sexa = memchr(s, ':', n) != NULL;

    if (s[0] == '+' || s[0] == '-') {
        neg = s[0] == '-';
        i = 1;
    }
    if (n - i >= 2 && s[i] == '0' && (s[i + 1] == 'b' || s[i + 1] == 'x')) {
        base = s[i + 1] == 'b' ? 2 : 16;
        i += 2;
    } else if (!sexa && n - i >= 2 && s[i] == '0') {
        base = 8;
    }
    for (; i < n; i++) {
        unsigned d;

        if (s[i] == '_')
            continue;
        if (s[i] == ':') {
            /* Base 60: each group multiplies what came before. */
            if (v > (ULLONG_MAX - part) / 60)
                return -1;
            v = v * 60 + part;
            part = 0;
            continue;
        }
        d = is_digit(s[i]) ? (unsigned)(s[i] - '0')
                           : (unsigned)(tolower((unsigned char)s[i]) - 'a' + 10);
        digits++;
        if (sexa) {
            if (part > (ULLONG_MAX - d) / 10)
                return -1;
            part = part * 10 + d;
        } else {
            if (v > (ULLONG_MAX - d) / base)
                return -1;
            v = v * base + d;
        }
    }
    if (sexa) {
        if (v > (ULLONG_MAX - part) / 60)
            return -1;
        v = v * 60 + part;
    }
    if (digits == 0)
        return -1;
    if (neg) {
        if (v > (unsigned long long)LLONG_MAX + 1)
            return -1;
        *out = v == (unsigned long long)LLONG_MAX + 1 ? LLONG_MIN : -(json_int_t)v;
    } else {
        if (v > (unsigned long long)LLONG_MAX)
            return -1;
        *out = (json_int_t)v;
    }
    return 0;
}

/* [eE][-+][0-9]+ to the end. */
static int exp_tail(const char *s, size_t n)
{
    return n >= 3 && (s[0] == 'e' || s[0] == 'E') && (s[1] == '+' || s[1] == '-') &&
           all_of(s + 2, n - 2, "0123456789");
}

/* PyYAML's float: [-+]?[0-9][0-9_]*\.[0-9_]*([eE][-+][0-9]+)? |
 * \.[0-9_]+([eE][-+][0-9]+)? | [-+]?[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]* |
 * [-+]?\.(inf|Inf|INF) | \.(nan|NaN|NAN). Returns 2 for inf and nan. */
static int match_float11(const char *s, size_t n)
{
    size_t i = 0, j;
    int sign = 0;

    if (word_is(s, n, ".nan") || word_is(s, n, ".NaN") || word_is(s, n, ".NAN"))
        return 2;
    if (n > 0 && (s[0] == '+' || s[0] == '-')) {
        sign = 1;
        i = 1;
    }
    s += i;
    n -= i;
    if (word_is(s, n, ".inf") || word_is(s, n, ".Inf") || word_is(s, n, ".INF"))
        return 2;
    if (n == 0)
        return 0;
    if (s[0] == '.') {
        if (sign)
            return 0;
        for (j = 1; j < n && (is_digit(s[j]) || s[j] == '_'); j++)
            ;
        return j > 1 && (j == n || exp_tail(s + j, n - j));
    }
    if (!is_digit(s[0]))
        return 0;
    for (j = 1; j < n && (is_digit(s[j]) || s[j] == '_'); j++)
        ;
    if (j < n && s[j] == ':') {
        size_t g = sexa_groups(s + j, n - j);

        if (g == 0)
            return 0;
        j += g;
        return j < n && s[j] == '.' && all_of(s + j + 1, n - j - 1, "0123456789_");
    }
    if (j >= n || s[j] != '.')
        return 0;
    for (j++; j < n && (is_digit(s[j]) || s[j] == '_'); j++)
        ;
    return j == n || exp_tail(s + j, n - j);
}

/* strtod() of s (n bytes, '_' dropped) in any locale; -1 if not all of it
 * is a number or it is not finite. */
static int strtod_c(const char *s, size_t n, double *out)
{
    const char *dp = localeconv()->decimal_point;
    size_t dlen = strlen(dp), i, k = 0;
    char tmp[128], *end;
    int digits = 0;

    for (i = 0; i < n; i++) {
        if (s[i] == '_')
            continue;
        if (k + dlen + 1 >= sizeof(tmp))
            return -1;
        if (s[i] == '.') {
            memcpy(tmp + k, dp, dlen);
            k += dlen;
        } else {
            digits += is_digit(s[i]);
            tmp[k++] = s[i];
        }
    }
    tmp[k] = '\0';
    if (digits == 0)
        return -1;
    errno = 0;
    *out = strtod(tmp, &end);
    if (end != tmp + k || !isfinite(*out))
        return -1;
    return 0;
}

static int float11_value(const char *s, size_t n, double *out)
{
    const char *last = NULL;
    double v = 0, frac;
    size_t i;
    int neg = 0;

    if (memchr(s, ':', n) == NULL)
        return strtod_c(s, n, out);
    /* Base 60: integer groups, then the last group with its fraction. */
    for (i = 0; i < n; i++)
        if (s[i] == ':')
            last = s + i + 1;
    if (s[0] == '+' || s[0] == '-') {
        neg = s[0] == '-';
        s++;
        n--;
    }
    for (i = 0; s + i < last; i++) {
        double part = 0;

        for (; s[i] != ':'; i++)
            if (is_digit(s[i]))
                part = part * 10 + (s[i] - '0');
        v = v * 60 + part;
    }
    if (strtod_c(last, (size_t)(s + n - last), &frac) < 0)
        return -1;
    v = v * 60 + frac;
    if (!isfinite(v))
        return -1;
    *out = neg ? -v : v;
    return 0;
}

/* The JSON value of a plain scalar; NULL only when out of memory. */
static json_t *plain_json(const char *s, size_t n)
{
    json_int_t iv;
    double dv;
    int b;

    if (is_null_word(s, n))
        return json_null();
    if ((b = bool_word(s, n)) >= 0)
        return json_boolean(b);
    if (match_int11(s, n) && int11_value(s, n, &iv) == 0)
        return json_integer(iv);
    if (match_float11(s, n) == 1 && float11_value(s, n, &dv) == 0)
        return json_real(dv);
    return json_stringn(s, n);
}

static int scalar_json(struct ld *ld, size_t ni, json_t **out)
{
    const struct ynode *n = &ld->nodes[ni];
    char buf[SHOW];
    json_t *v = NULL;
    int ok = 1;

    switch (n->tag) {
    case T_VAULT:
        v = json_pack("{s:s%}", "__ansible_vault", n->s, n->len);
        break;
    case T_INT:
    case T_FLOAT:
    case T_BOOL:
    case T_NULL:
        v = plain_json(n->s, n->len);
        if (v == NULL)
            break;
        if (n->tag == T_FLOAT && json_is_integer(v)) {
            json_t *r = json_real((double)json_integer_value(v));

            json_decref(v);
            v = r;
            break;
        }
        ok = (n->tag == T_INT && json_is_integer(v)) || (n->tag == T_FLOAT && json_is_real(v)) ||
             (n->tag == T_BOOL && json_is_boolean(v)) || (n->tag == T_NULL && json_is_null(v));
        break;
    case T_NONE:
        v = n->plain ? plain_json(n->s, n->len) : json_stringn(n->s, n->len);
        break;
    default:
        v = json_stringn(n->s, n->len);
        break;
    }
    if (v == NULL)
        return nomem(ld);
    if (!ok) {
        static const char *const names[] = {
            [T_INT] = "!!int", [T_FLOAT] = "!!float", [T_BOOL] = "!!bool", [T_NULL] = "!!null"};

        json_decref(v);
        return fail(ld, KF_EPARSE, &n->loc, "'%s' does not fit its tag %s", show(buf, n->s, n->len),
                    names[n->tag]);
    }
    *out = v;
    return 0;
}

static int is_null_node(const struct ld *ld, size_t ni)
{
    const struct ynode *n;

    if (ni == NONE)
        return 1;
    n = &ld->nodes[ni];
    if (n->kind != Y_SCALAR)
        return 0;
    return (n->tag == T_NULL || (n->tag == T_NONE && n->plain)) && is_null_word(n->s, n->len);
}

/* ------------------------------------------------------------------------ */
/* Mappings, with merge keys; values to JSON                                 */

static int is_merge_key(const struct ynode *k)
{
    if (k->kind != Y_SCALAR)
        return 0;
    return k->tag == T_MERGE || (k->tag == T_NONE && k->plain && word_is(k->s, k->len, "<<"));
}

static int pairs_add(struct ld *ld, struct pairs *ps, size_t k, size_t v)
{
    struct pair *p = grow(ps->p, &ps->cap, ps->n + 1, sizeof(*p));

    if (p == NULL)
        return nomem(ld);
    ps->p = p;
    ps->p[ps->n].k = k;
    ps->p[ps->n].v = v;
    ps->n++;
    return 0;
}

static int map_pairs(struct ld *ld, size_t ni, int depth, struct pairs *out);

/* Appends the pairs of mapping mi (at depth) to out: merging it in. */
static int merge_in(struct ld *ld, size_t mi, int depth, struct pairs *out)
{
    struct pairs sub = {0};
    size_t i;
    int rc;

    if (ld->nodes[mi].kind != Y_MAP)
        return fail(ld, KF_EPARSE, &ld->nodes[mi].loc,
                    "merge key '<<' takes a mapping or a sequence of mappings, not %s",
                    kind_word(&ld->nodes[mi]));
    rc = map_pairs(ld, mi, depth, &sub);
    for (i = 0; rc == 0 && i < sub.n; i++)
        rc = pairs_add(ld, out, sub.p[i].k, sub.p[i].v);
    free(sub.p);
    return rc;
}

/* The pairs of mapping ni with merge keys applied, as PyYAML's
 * flatten_mapping: merged pairs first (for a list, the last mapping first),
 * then the mapping's own; a later pair replaces the value of an earlier one
 * with the same key but keeps its position. out must be empty. */
static int map_pairs(struct ld *ld, size_t ni, int depth, struct pairs *out)
{
    struct strmap seen = {0};
    struct pairs all = {0};
    size_t i, merge = NONE, prev;
    char buf[SHOW];
    int rc = 0;

    if (depth > MAX_DEPTH)
        return too_deep(ld, ni);
    for (i = 0; i + 1 < ld->nodes[ni].nkids; i += 2) {
        size_t ki = ld->nodes[ni].kids[i];
        const struct ynode *k = &ld->nodes[ki];

        if ((rc = visit(ld, ki)) < 0)
            goto out;
        if (k->kind != Y_SCALAR) {
            rc = fail(ld, KF_EPARSE, &k->loc, "a mapping key must be a scalar, not %s",
                      kind_word(k));
            goto out;
        }
        if (is_merge_key(k)) {
            if (merge != NONE) {
                rc = fail(ld, KF_EPARSE, &k->loc, "duplicate key '<<' (first at %d:%d)",
                          ld->nodes[merge].loc.line, ld->nodes[merge].loc.col);
                goto out;
            }
            merge = ki;
            continue;
        }
        if (memchr(k->s, '\0', k->len) != NULL) {
            rc = fail(ld, KF_EPARSE, &k->loc, "a mapping key contains a NUL byte");
            goto out;
        }
        if (strmap_get(&seen, k->s, k->len, &prev)) {
            rc = fail(ld, KF_EPARSE, &k->loc, "duplicate key '%s' (first at %d:%d)",
                      show(buf, k->s, k->len), ld->nodes[prev].loc.line, ld->nodes[prev].loc.col);
            goto out;
        }
        if (strmap_put(&seen, k->s, k->len, ki) < 0) {
            rc = nomem(ld);
            goto out;
        }
    }
    if (merge != NONE) {
        /* The merge key's value follows it in kids. */
        size_t mv = NONE;

        for (i = 0; i + 1 < ld->nodes[ni].nkids; i += 2)
            if (ld->nodes[ni].kids[i] == merge)
                mv = ld->nodes[ni].kids[i + 1];
        if ((rc = check_expansion(ld, mv, &ld->nodes[merge].loc)) < 0 || (rc = visit(ld, mv)) < 0)
            goto out;
        if (ld->nodes[mv].kind == Y_SEQ) {
            if (depth + 1 > MAX_DEPTH) {
                rc = too_deep(ld, mv);
                goto out;
            }
            for (i = ld->nodes[mv].nkids; rc == 0 && i-- > 0;) {
                size_t item = ld->nodes[mv].kids[i];

                if ((rc = visit(ld, item)) == 0)
                    rc = merge_in(ld, item, depth + 2, &all);
            }
        } else {
            rc = merge_in(ld, mv, depth + 1, &all);
        }
        if (rc < 0)
            goto out;
    }
    for (i = 0; i + 1 < ld->nodes[ni].nkids; i += 2) {
        size_t ki = ld->nodes[ni].kids[i];

        if (ki == merge)
            continue;
        if ((rc = pairs_add(ld, &all, ki, ld->nodes[ni].kids[i + 1])) < 0)
            goto out;
    }
    if (merge == NONE) {
        *out = all; /* transferred */
        all.p = NULL;
        goto out;
    }
    strmap_release(&seen);
    for (i = 0; i < all.n; i++) {
        const struct ynode *k = &ld->nodes[all.p[i].k];

        if (strmap_get(&seen, k->s, k->len, &prev)) {
            out->p[prev] = all.p[i];
            continue;
        }
        if (strmap_put(&seen, k->s, k->len, out->n) < 0 ||
            pairs_add(ld, out, all.p[i].k, all.p[i].v) < 0) {
            rc = nomem(ld);
            goto out;
        }
    }
out:
    strmap_release(&seen);
    free(all.p);
    return rc;
}

static int to_json(struct ld *ld, size_t ni, int depth, json_t **out)
{
    struct pairs ps = {0};
    json_t *v = NULL, *item;
    size_t i;
    int rc;

    *out = NULL;
    if ((rc = check_expansion(ld, ni, &ld->nodes[ni].loc)) < 0 || (rc = visit(ld, ni)) < 0)
        return rc;
    /* Depth counts collections, as the composer's bound does. */
    if (ld->nodes[ni].kind != Y_SCALAR && depth > MAX_DEPTH)
        return too_deep(ld, ni);
    switch (ld->nodes[ni].kind) {
    case Y_SCALAR:
        return scalar_json(ld, ni, out);
    case Y_SEQ:
        if ((v = json_array()) == NULL)
            return nomem(ld);
        for (i = 0; i < ld->nodes[ni].nkids; i++) {
            if ((rc = to_json(ld, ld->nodes[ni].kids[i], depth + 1, &item)) < 0)
                goto out;
            if (json_array_append_new(v, item) < 0) {
                rc = nomem(ld);
                goto out;
            }
        }
        break;
    case Y_MAP:
        if ((v = json_object()) == NULL)
            return nomem(ld);
        if ((rc = map_pairs(ld, ni, depth, &ps)) < 0)
            goto out;
        for (i = 0; i < ps.n; i++) {
            const struct ynode *k = &ld->nodes[ps.p[i].k];

            if ((rc = to_json(ld, ps.p[i].v, depth + 1, &item)) < 0)
                goto out;
            if (json_object_setn_new(v, k->s, k->len, item) < 0) {
                rc = nomem(ld);
                goto out;
            }
        }
        break;
    }
    *out = v;
    v = NULL; /* transferred */
out:
    json_decref(v);
    free(ps.p);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* The model: groups, hosts, variables                                      */

static int check_name(struct ld *ld, const char *what, const struct ynode *k)
{
    char buf[SHOW];
    size_t i;

    if (k->len == 0)
        return fail(ld, KF_EPARSE, &k->loc, "empty %s name", what);
    for (i = 0; i < k->len; i++) {
        unsigned char ch = (unsigned char)k->s[i];

        if (ch < 0x20 || ch == 0x7f)
            return fail(ld, KF_EPARSE, &k->loc, "%s name '%s' contains a control character", what,
                        show(buf, k->s, k->len));
    }
    return 0;
}

static int group_get(struct ld *ld, const char *name, size_t len, const struct inv_loc *loc,
                     size_t *out)
{
    struct lgroup *g;

    if (strmap_get(&ld->gmap, name, len, out)) {
        if (ld->g[*out].loc.line == 0 && loc != NULL)
            ld->g[*out].loc = *loc;
        return 0;
    }
    g = grow(ld->g, &ld->gcap, ld->ng + 1, sizeof(*g));
    if (g == NULL)
        return nomem(ld);
    ld->g = g;
    g = &ld->g[ld->ng];
    memset(g, 0, sizeof(*g));
    g->priority = 1;
    if (loc != NULL)
        g->loc = *loc;
    g->name = malloc(len + 1);
    g->vars = json_object();
    g->vlocs = json_object();
    ld->ng++; /* counted now so ld_release frees what was made */
    if (g->name == NULL || g->vars == NULL || g->vlocs == NULL)
        return nomem(ld);
    memcpy(g->name, name, len);
    g->name[len] = '\0';
    if (strmap_put(&ld->gmap, g->name, len, ld->ng - 1) < 0)
        return nomem(ld);
    *out = ld->ng - 1;
    return 0;
}

static int host_get(struct ld *ld, const char *name, const struct inv_loc *loc, size_t *out)
{
    struct lhost *h;
    size_t len = strlen(name);

    if (strmap_get(&ld->hmap, name, len, out))
        return 0;
    if (ld->nh >= MAX_HOSTS)
        return fail(ld, KF_EPARSE, loc, "more than %zu hosts (the most one inventory may hold)",
                    MAX_HOSTS);
    h = grow(ld->h, &ld->hcap, ld->nh + 1, sizeof(*h));
    if (h == NULL)
        return nomem(ld);
    ld->h = h;
    h = &ld->h[ld->nh];
    memset(h, 0, sizeof(*h));
    h->loc = *loc;
    h->name = strdup(name);
    h->vars = json_object();
    h->vlocs = json_object();
    ld->nh++;
    if (h->name == NULL || h->vars == NULL || h->vlocs == NULL)
        return nomem(ld);
    if (strmap_put(&ld->hmap, h->name, len, ld->nh - 1) < 0)
        return nomem(ld);
    *out = ld->nh - 1;
    return 0;
}

static int count_cells(struct ld *ld, size_t n, const struct inv_loc *loc)
{
    ld->cells += n;
    if (ld->cells > MAX_CELLS)
        return fail(ld, KF_EPARSE, loc,
                    "the inventory is too large: more than %zu host memberships and host "
                    "variables",
                    MAX_CELLS);
    return 0;
}

static int add_edge(struct ld *ld, size_t parent, size_t child, const struct inv_loc *loc)
{
    struct lgroup *p = &ld->g[parent], *c = &ld->g[child];
    struct edge *e;
    size_t *pp;
    int added;

    if (pairset_add(&ld->edges, parent, child, &added) < 0)
        return nomem(ld);
    if (!added)
        return 0;
    e = grow(p->kids, &p->kcap, p->nkids + 1, sizeof(*e));
    if (e == NULL)
        return nomem(ld);
    p->kids = e;
    p->kids[p->nkids].to = child;
    p->kids[p->nkids].loc = *loc;
    p->nkids++;
    pp = grow(c->parents, &c->pcap, c->nparents + 1, sizeof(*pp));
    if (pp == NULL)
        return nomem(ld);
    c->parents = pp;
    c->parents[c->nparents++] = parent;
    return 0;
}

static int add_member(struct ld *ld, size_t gi, size_t hi, const struct inv_loc *loc)
{
    struct lgroup *g = &ld->g[gi];
    struct lhost *h = &ld->h[hi];
    size_t *p;
    int added, rc;

    if (pairset_add(&ld->members, gi, hi, &added) < 0)
        return nomem(ld);
    if (!added)
        return 0;
    if ((rc = count_cells(ld, 1, loc)) < 0)
        return rc;
    p = grow(g->hosts, &g->hcap, g->nhosts + 1, sizeof(*p));
    if (p == NULL)
        return nomem(ld);
    g->hosts = p;
    g->hosts[g->nhosts++] = hi;
    p = grow(h->groups, &h->gcap, h->ngroups + 1, sizeof(*p));
    if (p == NULL)
        return nomem(ld);
    h->groups = p;
    h->groups[h->ngroups++] = gi;
    return 0;
}

/* Where variable name was set, from the [line, col] kept beside it. */
static struct inv_loc var_loc(json_t *vlocs, const char *name)
{
    json_t *where = json_object_get(vlocs, name);
    struct inv_loc loc;

    loc.line = (int)json_integer_value(json_array_get(where, 0));
    loc.col = (int)json_integer_value(json_array_get(where, 1));
    return loc;
}

/* Sets vars[name] = v (a reference is taken) unless a different value is
 * already there, which is an error naming both places. */
static int set_var(struct ld *ld, json_t *vars, json_t *vlocs, const char *owner, const char *name,
                   json_t *v, const struct inv_loc *loc)
{
    json_t *old = json_object_get(vars, name);
    struct inv_loc first;
    char buf[SHOW];

    if (old != NULL) {
        if (json_equal(old, v))
            return 0;
        first = var_loc(vlocs, name);
        return fail(ld, KF_EPARSE, loc,
                    "%s: variable '%s' is given a different value than at %d:%d", owner,
                    show(buf, name, strlen(name)), first.line, first.col);
    }
    if (json_object_set(vars, name, v) < 0 ||
        json_object_set_new(vlocs, name, json_pack("[ii]", loc->line, loc->col)) < 0)
        return nomem(ld);
    return 0;
}

/* A section's pairs: a mapping, nothing, or one string standing for a
 * mapping with that key (Ansible allows "hosts: gpu01"). */
static int section_pairs(struct ld *ld, size_t ni, int depth, const char *owner,
                         const char *section, struct pairs *out)
{
    const struct ynode *n;
    json_t *v;
    int rc, is_str;

    if (is_null_node(ld, ni))
        return 0;
    n = &ld->nodes[ni];
    if (n->kind == Y_MAP)
        return map_pairs(ld, ni, depth, out);
    if (n->kind == Y_SCALAR) {
        if ((rc = scalar_json(ld, ni, &v)) < 0)
            return rc;
        is_str = json_is_string(v) && memchr(n->s, '\0', n->len) == NULL;
        json_decref(v);
        if (is_str)
            return pairs_add(ld, out, ni, NONE);
    }
    return fail(ld, KF_EPARSE, &n->loc, "%s: '%s' must be a mapping, not %s", owner, section,
                kind_word(n));
}

/* Converts a mapping of variables; vars and vlocs get name -> value and
 * name -> [line, col]. */
static int read_vars(struct ld *ld, size_t ni, int depth, const char *owner, const char *section,
                     json_t *vars, json_t *vlocs)
{
    struct pairs ps = {0};
    json_t *v = NULL;
    size_t i;
    int rc;

    if ((rc = section_pairs(ld, ni, depth, owner, section, &ps)) < 0)
        goto out;
    for (i = 0; i < ps.n; i++) {
        const struct ynode *k = &ld->nodes[ps.p[i].k];

        if (ps.p[i].v == NONE) {
            v = json_null();
        } else if ((rc = check_expansion(ld, ps.p[i].v, &k->loc)) < 0 ||
                   (rc = to_json(ld, ps.p[i].v, depth + 1, &v)) < 0) {
            /* Checked here too so that a bomb is reported at the variable
             * that sets it off, not where its anchor was defined. */
            goto out;
        }
        if (v == NULL) {
            rc = nomem(ld);
            goto out;
        }
        /* Keys are free of NULs here: map_pairs refused them. */
        if ((rc = set_var(ld, vars, vlocs, owner, k->s, v, &k->loc)) < 0)
            goto out;
        json_decref(v);
        v = NULL;
    }
out:
    json_decref(v);
    free(ps.p);
    return rc;
}

/* Splits "name:port" (one colon outside [], digits after it). */
static int split_port(const char *s, size_t len, size_t *name_len, long *port)
{
    size_t i, colon = NONE, ncolons = 0;
    int inbr = 0;

    *name_len = len;
    *port = -1;
    for (i = 0; i < len; i++) {
        if (s[i] == '[')
            inbr = 1;
        else if (s[i] == ']')
            inbr = 0;
        else if (s[i] == ':' && !inbr) {
            ncolons++;
            colon = i;
        }
    }
    if (ncolons != 1 || colon == 0 || colon + 1 == len || len - colon - 1 > 5 ||
        !all_of(s + colon + 1, len - colon - 1, "0123456789"))
        return 0;
    *name_len = colon;
    *port = strtol(s + colon + 1, NULL, 10);
    return 1;
}

static int walk_hosts(struct ld *ld, size_t gi, size_t ni, int depth)
{
    char owner[SHOW + 16], buf[SHOW];
    struct pairs ps = {0};
    json_t *vars = NULL, *vlocs = NULL;
    char **names = NULL, *pattern = NULL;
    size_t nnames = 0, i, j, name_len;
    long port;
    int rc, added;

    snprintf(owner, sizeof(owner), "group '%s'", show(buf, ld->g[gi].name, strlen(ld->g[gi].name)));
    if ((rc = section_pairs(ld, ni, depth, owner, "hosts", &ps)) < 0)
        goto out;
    for (i = 0; i < ps.n; i++) {
        const struct ynode *k = &ld->nodes[ps.p[i].k];
        char hshow[SHOW + 16];
        const char *vkey;
        size_t vi = ps.p[i].v, hi = 0;
        json_t *val;

        if ((rc = check_name(ld, "host", k)) < 0)
            goto out;
        if (pairset_add(&ld->walked_hosts, gi, ps.p[i].k, &added) < 0) {
            rc = nomem(ld);
            goto out;
        }
        if (!added)
            continue;
        split_port(k->s, k->len, &name_len, &port);
        free(pattern);
        if ((pattern = strndup(k->s, name_len)) == NULL) {
            rc = nomem(ld);
            goto out;
        }
        kf_strv_free(names, nnames);
        names = NULL;
        nnames = 0;
        if ((rc = inv_expand_range(pattern, &names, &nnames, ld->err)) < 0) {
            if (rc == KF_EINVAL) {
                rc = KF_EPARSE;
                ld->err->code = rc;
            }
            kf_err_prefix(ld->err, "%s:%d:%d: ", ld->file, k->loc.line, k->loc.col);
            goto out;
        }
        /* Names count against the size bound even when the hosts exist
         * already: an alias can put one big range under many groups. */
        if ((rc = count_cells(ld, nnames, &k->loc)) < 0)
            goto out;

        json_decref(vars);
        json_decref(vlocs);
        vars = json_object();
        vlocs = json_object();
        if (vars == NULL || vlocs == NULL) {
            rc = nomem(ld);
            goto out;
        }
        snprintf(hshow, sizeof(hshow), "host '%s'", show(buf, k->s, k->len));
        if (!is_null_node(ld, vi)) {
            if (ld->nodes[vi].kind != Y_MAP) {
                rc = fail(ld, KF_EPARSE, &ld->nodes[vi].loc,
                          "%s: expected a mapping of variables or nothing, not %s", hshow,
                          kind_word(&ld->nodes[vi]));
                goto out;
            }
            if ((rc = read_vars(ld, vi, depth + 1, hshow, "vars", vars, vlocs)) < 0)
                goto out;
        }
        if (port >= 0 && json_object_get(vars, "ansible_port") == NULL) {
            json_t *pv = json_integer(port);

            rc = pv ? set_var(ld, vars, vlocs, hshow, "ansible_port", pv, &k->loc) : nomem(ld);
            json_decref(pv);
            if (rc < 0)
                goto out;
        }

        for (j = 0; j < nnames; j++) {
            struct lhost *h;

            if ((rc = host_get(ld, names[j], &k->loc, &hi)) < 0 ||
                (rc = add_member(ld, gi, hi, &k->loc)) < 0 ||
                (rc = count_cells(ld, json_object_size(vars), &k->loc)) < 0)
                goto out;
            h = &ld->h[hi];
            snprintf(hshow, sizeof(hshow), "host '%s'", show(buf, h->name, strlen(h->name)));
            json_object_foreach(vars, vkey, val)
            {
                struct inv_loc vloc = var_loc(vlocs, vkey);

                if ((rc = set_var(ld, h->vars, h->vlocs, hshow, vkey, val, &vloc)) < 0)
                    goto out;
            }
        }
    }
out:
    json_decref(vars);
    json_decref(vlocs);
    kf_strv_free(names, nnames);
    free(pattern);
    free(ps.p);
    return rc;
}

static int walk_group(struct ld *ld, size_t ki, size_t vi, size_t parent, int depth);

static int walk_children(struct ld *ld, size_t gi, size_t ni, int depth)
{
    char owner[SHOW + 16], buf[SHOW];
    struct pairs ps = {0};
    size_t i;
    int rc;

    snprintf(owner, sizeof(owner), "group '%s'", show(buf, ld->g[gi].name, strlen(ld->g[gi].name)));
    if ((rc = section_pairs(ld, ni, depth, owner, "children", &ps)) < 0)
        goto out;
    for (i = 0; i < ps.n; i++) {
        const struct ynode *k = &ld->nodes[ps.p[i].k];

        if (word_is(k->s, k->len, "all")) {
            rc = fail(ld, KF_EPARSE, &k->loc, "%s: 'all' cannot be a child group", owner);
            goto out;
        }
        if ((rc = walk_group(ld, ps.p[i].k, ps.p[i].v, gi, depth + 1)) < 0)
            goto out;
    }
out:
    free(ps.p);
    return rc;
}

/* A group: key node ki names it, vi (or NONE) is its definition. */
static int walk_group(struct ld *ld, size_t ki, size_t vi, size_t parent, int depth)
{
    const struct ynode *k = &ld->nodes[ki];
    char owner[SHOW + 16], buf[SHOW];
    struct pairs ps = {0};
    size_t gi, i;
    int rc, added;

    if ((rc = check_name(ld, "group", k)) < 0)
        return rc;
    if ((rc = group_get(ld, k->s, k->len, &k->loc, &gi)) < 0)
        return rc;
    if (parent == NONE)
        ld->g[gi].toplevel = 1;
    else if ((rc = add_edge(ld, parent, gi, &k->loc)) < 0)
        return rc;
    if (is_null_node(ld, vi))
        return 0;
    if (pairset_add(&ld->walked_groups, gi, vi, &added) < 0)
        return nomem(ld);
    if (!added)
        return 0;
    if ((rc = visit(ld, vi)) < 0)
        return rc;
    snprintf(owner, sizeof(owner), "group '%s'", show(buf, k->s, k->len));
    if (ld->nodes[vi].kind != Y_MAP)
        return fail(ld, KF_EPARSE, &ld->nodes[vi].loc,
                    "%s: expected a mapping with hosts, vars or children, not %s", owner,
                    kind_word(&ld->nodes[vi]));
    if ((rc = map_pairs(ld, vi, depth, &ps)) < 0)
        goto out;
    for (i = 0; i < ps.n; i++) {
        const struct ynode *key = &ld->nodes[ps.p[i].k];
        size_t v = ps.p[i].v;

        if ((rc = visit(ld, v)) < 0)
            goto out;
        if (word_is(key->s, key->len, "hosts")) {
            rc = walk_hosts(ld, gi, v, depth + 1);
        } else if (word_is(key->s, key->len, "vars")) {
            rc = read_vars(ld, v, depth + 1, owner, "vars", ld->g[gi].vars, ld->g[gi].vlocs);
        } else if (word_is(key->s, key->len, "children")) {
            rc = walk_children(ld, gi, v, depth + 1);
        } else {
            rc = fail(ld, KF_EPARSE, &key->loc,
                      "%s: unknown key '%s' (expected hosts, vars or children)", owner,
                      show(buf, key->s, key->len));
        }
        if (rc < 0)
            goto out;
    }
out:
    free(ps.p);
    return rc;
}

static int walk_root(struct ld *ld)
{
    struct pairs ps = {0};
    struct inv_loc start = {1, 1};
    size_t i;
    int rc;

    if (ld->root == NONE || is_null_node(ld, ld->root))
        return fail(ld, KF_EPARSE, ld->root == NONE ? &start : &ld->nodes[ld->root].loc,
                    "empty inventory (expected a mapping of groups, such as 'all:')");
    if ((rc = visit(ld, ld->root)) < 0)
        return rc;
    if (ld->nodes[ld->root].kind != Y_MAP)
        return fail(ld, KF_EPARSE, &ld->nodes[ld->root].loc,
                    "expected a mapping of groups at the top (such as 'all:'), not %s",
                    kind_word(&ld->nodes[ld->root]));
    if ((rc = map_pairs(ld, ld->root, 1, &ps)) < 0)
        goto out;
    for (i = 0; i < ps.n; i++)
        if ((rc = walk_group(ld, ps.p[i].k, ps.p[i].v, NONE, 2)) < 0)
            goto out;
out:
    free(ps.p);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* After reading: cycles, implicit groups, depths, effective variables       */

/* Depth-first over children with an explicit stack (a chain of groups can
 * be as long as the file allows), reporting the first cycle found. */
static int check_cycles(struct ld *ld)
{
    struct frame {
        size_t g, next;
    } *stack = NULL;
    unsigned char *color = NULL; /* 0 new, 1 on the stack, 2 done */
    size_t root, top = 0;
    int rc = 0;

    color = calloc(ld->ng ? ld->ng : 1, 1);
    stack = calloc(ld->ng ? ld->ng : 1, sizeof(*stack));
    if (color == NULL || stack == NULL) {
        rc = nomem(ld);
        goto out;
    }
    for (root = 0; root < ld->ng; root++) {
        if (color[root] != 0)
            continue;
        color[root] = 1;
        stack[0].g = root;
        stack[0].next = 0;
        top = 1;
        while (top > 0) {
            struct frame *f = &stack[top - 1];
            struct lgroup *g = &ld->g[f->g];
            size_t c, i;

            if (f->next == g->nkids) {
                color[f->g] = 2;
                top--;
                continue;
            }
            c = g->kids[f->next].to;
            f->next++;
            if (color[c] == 0) {
                color[c] = 1;
                stack[top].g = c;
                stack[top].next = 0;
                top++;
            } else if (color[c] == 1) {
                struct buf path;
                char buf[SHOW];

                buf_init(&path, 300);
                for (i = 0; i < top && stack[i].g != c; i++)
                    ;
                for (; i < top; i++) {
                    const char *n = ld->g[stack[i].g].name;

                    (void)buf_printf(&path, "%s -> ", show(buf, n, strlen(n)));
                }
                (void)buf_puts(&path, show(buf, ld->g[c].name, strlen(ld->g[c].name)));
                rc = fail(ld, KF_EPARSE, &g->kids[f->next - 1].loc,
                          "group '%s': cycle in children: %s", show(buf, g->name, strlen(g->name)),
                          buf_cstr(&path));
                buf_release(&path);
                goto out;
            }
        }
    }
out:
    free(color);
    free(stack);
    return rc;
}

/* Ansible's reconcile step: parentless groups under "all", "ungrouped"
 * under "all", and "ungrouped" holding exactly the hosts in no other group. */
static int reconcile(struct ld *ld)
{
    struct lgroup *ug;
    size_t i, j, n;
    int rc;

    for (i = 1; i < ld->ng; i++) {
        if (ld->g[i].nparents == 0 || i == G_UNGROUPED) {
            struct inv_loc loc = ld->g[i].loc;

            if ((rc = add_edge(ld, G_ALL, i, &loc)) < 0)
                return rc;
        }
    }
    ug = &ld->g[G_UNGROUPED];
    ug->nhosts = 0;
    for (i = 0; i < ld->nh; i++) {
        struct lhost *h = &ld->h[i];
        size_t other = 0;

        for (j = 0; j < h->ngroups; j++)
            other += h->groups[j] != G_ALL && h->groups[j] != G_UNGROUPED;
        /* Drop the direct link to ungrouped; added back below if due. */
        for (j = n = 0; j < h->ngroups; j++)
            if (h->groups[j] != G_UNGROUPED)
                h->groups[n++] = h->groups[j];
        h->ngroups = n;
        if (other == 0) {
            size_t *p = grow(ug->hosts, &ug->hcap, ug->nhosts + 1, sizeof(*p));

            if (p == NULL)
                return nomem(ld);
            ug->hosts = p;
            ug->hosts[ug->nhosts++] = i;
            p = grow(h->groups, &h->gcap, h->ngroups + 1, sizeof(*p));
            if (p == NULL)
                return nomem(ld);
            h->groups = p;
            h->groups[h->ngroups++] = G_UNGROUPED;
        }
    }
    return 0;
}

/* Depth = the longest path from "all" (Ansible's Group.depth), by Kahn's
 * topological order; the graph is acyclic by now. */
static int compute_depths(struct ld *ld)
{
    size_t *indeg = NULL, *queue = NULL, head = 0, tail = 0, i, k;
    int rc = 0;

    indeg = calloc(ld->ng, sizeof(*indeg));
    queue = calloc(ld->ng, sizeof(*queue));
    if (indeg == NULL || queue == NULL) {
        rc = nomem(ld);
        goto out;
    }
    for (i = 0; i < ld->ng; i++)
        indeg[i] = ld->g[i].nparents;
    for (i = 0; i < ld->ng; i++)
        if (indeg[i] == 0)
            queue[tail++] = i;
    while (head < tail) {
        struct lgroup *g = &ld->g[queue[head++]];

        for (k = 0; k < g->nkids; k++) {
            struct lgroup *c = &ld->g[g->kids[k].to];

            if (c->depth < g->depth + 1)
                c->depth = g->depth + 1;
            if (--indeg[g->kids[k].to] == 0)
                queue[tail++] = g->kids[k].to;
        }
    }
out:
    free(indeg);
    free(queue);
    return rc;
}

static int read_priorities(struct ld *ld)
{
    char buf[SHOW], gbuf[SHOW];
    size_t i;

    for (i = 0; i < ld->ng; i++) {
        struct lgroup *g = &ld->g[i];
        json_t *v = json_object_get(g->vars, "ansible_group_priority");
        const char *s;
        size_t len;

        if (v == NULL || json_is_null(v))
            continue;
        if (json_is_integer(v)) {
            g->priority = json_integer_value(v);
            continue;
        }
        s = json_is_string(v) ? json_string_value(v) : "";
        len = json_is_string(v) ? json_string_length(v) : 0;
        if (len > 0 && len <= 18 && all_of(s, len, "0123456789")) {
            g->priority = strtoll(s, NULL, 10);
            continue;
        }
        {
            struct inv_loc loc = var_loc(g->vlocs, "ansible_group_priority");
            char *dump = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);

            (void)show(buf, dump ? dump : "?", dump ? strlen(dump) : 1);
            free(dump);
            return fail(ld, KF_EPARSE, &loc,
                        "group '%s': ansible_group_priority %s is not an integer",
                        show(gbuf, g->name, strlen(g->name)), buf);
        }
    }
    return 0;
}

struct keyed {
    size_t a;
    json_int_t b;
    const char *name;
    size_t idx;
};

/* By (a, b, name): precedence order (depth, priority, name). */
static int keyed_cmp(const void *x, const void *y)
{
    const struct keyed *p = x, *q = y;

    if (p->a != q->a)
        return p->a < q->a ? -1 : 1;
    if (p->b != q->b)
        return p->b < q->b ? -1 : 1;
    return strcmp(p->name, q->name);
}

static char *var_dump(json_t *v, char *buf)
{
    char *dump = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);

    show(buf, dump ? dump : "?", dump ? strlen(dump) : 1);
    free(dump);
    return buf;
}

/* Everything about one host that depends on its ancestry. */
struct hctx {
    struct ld *ld;
    size_t hi;
    struct keyed *anc; /* groups in precedence order */
    size_t nanc;
    struct inv_host *out;
    char hname[SHOW];
};

/* Where the effective value of name came from. */
static struct inv_loc eff_loc(struct hctx *hc, const char *name)
{
    struct lhost *h = &hc->ld->h[hc->hi];
    struct inv_loc none = {0, 0};
    size_t i;

    if (json_object_get(h->vlocs, name) != NULL)
        return var_loc(h->vlocs, name);
    for (i = hc->nanc; i-- > 0;) {
        struct lgroup *g = &hc->ld->g[hc->anc[i].idx];

        if (json_object_get(g->vlocs, name) != NULL)
            return var_loc(g->vlocs, name);
    }
    return none;
}

/* The value of the first of names that is set, and which name it was. */
static json_t *eff_get(struct hctx *hc, const char *primary, const char *alias, const char **which)
{
    json_t *v = json_object_get(hc->out->vars, primary);

    *which = primary;
    if (v == NULL && alias != NULL) {
        v = json_object_get(hc->out->vars, alias);
        *which = alias;
    }
    return v != NULL && json_is_null(v) ? NULL : v;
}

static int conn_string(struct hctx *hc, const char *primary, const char *alias, char **out)
{
    const char *which;
    json_t *v = eff_get(hc, primary, alias, &which);
    char buf[SHOW], num[32];
    struct inv_loc loc;

    *out = NULL;
    if (v == NULL)
        return 0;
    if (json_is_string(v) && strlen(json_string_value(v)) == json_string_length(v)) {
        *out = strdup(json_string_value(v));
    } else if (json_is_integer(v)) {
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        *out = strdup(num);
    } else {
        loc = eff_loc(hc, which);
        return fail(hc->ld, KF_EPARSE, &loc, "host '%s': %s must be a string, not %s", hc->hname,
                    which, var_dump(v, buf));
    }
    return *out ? 0 : nomem(hc->ld);
}

static int conn_port(struct hctx *hc)
{
    const char *which;
    json_t *v = eff_get(hc, "ansible_port", "ansible_ssh_port", &which);
    long long port = -1;
    struct inv_loc loc;
    char buf[SHOW];

    if (v == NULL)
        return 0;
    if (json_is_integer(v)) {
        port = json_integer_value(v);
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t len = json_string_length(v);

        if (len > 0 && len <= 5 && all_of(s, len, "0123456789"))
            port = strtoll(s, NULL, 10);
    }
    if (port < 1 || port > 65535) {
        loc = eff_loc(hc, which);
        return fail(hc->ld, KF_EPARSE, &loc,
                    "host '%s': %s %s is not a port number (expected 1..65535)", hc->hname, which,
                    var_dump(v, buf));
    }
    hc->out->port = (int)port;
    return 0;
}

static int conn_become(struct hctx *hc)
{
    static const char *const yes[] = {"y", "yes", "on", "1", "true", "t"};
    static const char *const no[] = {"n", "no", "off", "0", "false", "f"};
    const char *which;
    json_t *v = eff_get(hc, "ansible_become", NULL, &which);
    struct inv_loc loc;
    char buf[SHOW];
    size_t i;

    if (v == NULL)
        return 0;
    if (json_is_boolean(v)) {
        hc->out->become = json_is_true(v);
        return 0;
    }
    if (json_is_integer(v) && (json_integer_value(v) == 0 || json_integer_value(v) == 1)) {
        hc->out->become = (int)json_integer_value(v);
        return 0;
    }
    if (json_is_string(v)) {
        for (i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
            if (strcasecmp(json_string_value(v), yes[i]) == 0) {
                hc->out->become = 1;
                return 0;
            }
            if (strcasecmp(json_string_value(v), no[i]) == 0) {
                hc->out->become = 0;
                return 0;
            }
        }
    }
    loc = eff_loc(hc, which);
    return fail(hc->ld, KF_EPARSE, &loc,
                "host '%s': ansible_become %s is not a boolean (expected true/false or yes/no)",
                hc->hname, var_dump(v, buf));
}

static int conn_key_file(struct hctx *hc)
{
    const char *home = getenv("HOME");
    struct passwd *pw;
    char *k, *full;
    int rc;

    /* ~ is the user's home: $HOME, else the password database (a service
     * started without HOME). */
    if (home == NULL || home[0] == '\0') {
        pw = getpwuid(getuid());
        home = pw ? pw->pw_dir : NULL;
    }

    if ((rc = conn_string(hc, "ansible_ssh_private_key_file", NULL, &k)) < 0 || k == NULL)
        return rc;
    if (home != NULL && home[0] != '\0' && k[0] == '~' && (k[1] == '/' || k[1] == '\0')) {
        full = malloc(strlen(home) + strlen(k));
        if (full == NULL) {
            free(k);
            return nomem(hc->ld);
        }
        sprintf(full, "%s%s", home, k + 1);
        free(k);
        k = full;
    }
    hc->out->key_file = k;
    return 0;
}

/* Splits s into words as a POSIX shell would (quotes and backslashes; no
 * expansions) separated by NULs in words. Returns KF_EPARSE on an
 * unterminated quote or a trailing backslash, KF_ENOMEM, or 0. */
static int shell_words(const char *s, struct buf *words, size_t *nwords)
{
    int inword = 0, rc = 0;

    *nwords = 0;
    while (*s != '\0' && rc == 0) {
        char ch = *s;

        if (ch == ' ' || ch == '\t' || ch == '\n') {
            if (inword)
                rc = buf_append(words, "", 1);
            inword = 0;
            s++;
            continue;
        }
        if (!inword)
            (*nwords)++;
        inword = 1;
        if (ch == '\'') {
            const char *e = strchr(s + 1, '\'');

            if (e == NULL)
                return KF_EPARSE;
            rc = buf_append(words, s + 1, (size_t)(e - s - 1));
            s = e + 1;
        } else if (ch == '"') {
            for (s++; *s != '"' && rc == 0; s++) {
                if (*s == '\0')
                    return KF_EPARSE;
                if (*s == '\\' && s[1] != '\0' && strchr("$`\"\\\n", s[1]) != NULL)
                    s++;
                rc = buf_append(words, s, 1);
            }
            s++;
        } else if (ch == '\\') {
            if (s[1] == '\0')
                return KF_EPARSE;
            rc = buf_append(words, s + 1, 1);
            s += 2;
        } else {
            rc = buf_append(words, s, 1);
            s++;
        }
    }
    if (rc == 0 && inword)
        rc = buf_append(words, "", 1);
    return rc;
}

/* If opt (an -o argument) is "ProxyJump=X" or "ProxyJump X", the X. */
static const char *proxy_from_option(const char *opt)
{
    static const char kw[] = "ProxyJump";
    const char *p;

    if (strncasecmp(opt, kw, sizeof(kw) - 1) != 0)
        return NULL;
    p = opt + sizeof(kw) - 1;
    if (*p != '=' && *p != ' ' && *p != '\t')
        return NULL;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '=')
        p++;
    while (*p == ' ' || *p == '\t')
        p++;
    return *p ? p : NULL;
}

static int conn_ssh_args(struct hctx *hc)
{
    /* ssh's options that take an argument (OpenSSH's getopt string). */
    static const char with_arg[] = "bceilmopBDEFIJLOPQRSWw";
    const char *proxy = NULL, *w, *end;
    struct buf words;
    struct inv_loc loc;
    size_t nwords, i;
    char *raw;
    int rc;

    if ((rc = conn_string(hc, "ansible_ssh_common_args", NULL, &raw)) < 0 || raw == NULL)
        return rc;
    hc->out->ssh_common_args = raw;
    buf_init(&words, 0);
    rc = shell_words(raw, &words, &nwords);
    if (rc < 0 && rc != KF_EPARSE) {
        rc = nomem(hc->ld);
        goto out;
    }
    if (rc < 0) {
        loc = eff_loc(hc, "ansible_ssh_common_args");
        rc = fail(hc->ld, KF_EPARSE, &loc,
                  "host '%s': ansible_ssh_common_args has an unterminated quote or a trailing "
                  "backslash",
                  hc->hname);
        goto out;
    }
    if (nwords == 0)
        goto out;
    /* Walk the words as ssh's getopt would, so "-l -J" is a user named -J. */
    w = words.data;
    end = words.data + words.len;
    for (i = 0; i < nwords && proxy == NULL; i++) {
        const char *p;

        if (w[0] == '-' && w[1] != '-') {
            for (p = w + 1; *p != '\0'; p++) {
                const char *arg;

                if (strchr(with_arg, *p) == NULL)
                    continue;
                if (p[1] != '\0') {
                    arg = p + 1;
                } else if (i + 1 < nwords) {
                    arg = w + strlen(w) + 1;
                    w = arg;
                    i++;
                } else {
                    break;
                }
                if (*p == 'J' && *arg != '\0' && proxy == NULL)
                    proxy = arg;
                else if (*p == 'o' && proxy == NULL)
                    proxy = proxy_from_option(arg);
                break;
            }
        }
        w += strlen(w) + 1;
        if (w >= end)
            break;
    }
    if (proxy != NULL && strcasecmp(proxy, "none") != 0) {
        hc->out->proxy_jump = strdup(proxy);
        if (hc->out->proxy_jump == NULL)
            rc = nomem(hc->ld);
    }
out:
    buf_release(&words);
    return rc;
}

static int resolve_conn(struct hctx *hc)
{
    int rc;

    if ((rc = conn_string(hc, "ansible_host", "ansible_ssh_host", &hc->out->address)) < 0 ||
        (rc = conn_port(hc)) < 0 ||
        (rc = conn_string(hc, "ansible_user", "ansible_ssh_user", &hc->out->user)) < 0 ||
        (rc = conn_key_file(hc)) < 0 || (rc = conn_become(hc)) < 0 ||
        (rc = conn_string(hc, "ansible_become_user", NULL, &hc->out->become_user)) < 0 ||
        (rc = conn_string(hc, "ansible_connection", NULL, &hc->out->connection)) < 0 ||
        (rc = conn_ssh_args(hc)) < 0)
        return rc;
    return 0;
}

static void host_release(struct inv_host *h)
{
    size_t i;

    free(h->name);
    json_decref(h->vars);
    for (i = 0; i < h->ngroups; i++)
        free(h->groups[i]);
    free(h->groups);
    free(h->address);
    free(h->user);
    free(h->key_file);
    free(h->become_user);
    free(h->connection);
    free(h->proxy_jump);
    free(h->ssh_common_args);
    memset(h, 0, sizeof(*h));
}

static int build_host(struct ld *ld, size_t hi, size_t *stamp, struct keyed *anc,
                      struct inv_host *out)
{
    struct lhost *h = &ld->h[hi];
    struct hctx hc;
    size_t n = 0, i, k;
    int rc;

    /* Every group the host is in: its direct groups and their ancestors,
     * found breadth-first with a per-host stamp instead of a cleared set. */
    for (i = 0; i < h->ngroups; i++) {
        if (stamp[h->groups[i]] != hi + 1) {
            stamp[h->groups[i]] = hi + 1;
            anc[n++].idx = h->groups[i];
        }
    }
    for (i = 0; i < n; i++) {
        struct lgroup *g = &ld->g[anc[i].idx];

        for (k = 0; k < g->nparents; k++) {
            if (stamp[g->parents[k]] != hi + 1) {
                stamp[g->parents[k]] = hi + 1;
                anc[n++].idx = g->parents[k];
            }
        }
    }
    for (i = 0; i < n; i++) {
        struct lgroup *g = &ld->g[anc[i].idx];

        anc[i].a = g->depth;
        anc[i].b = g->priority;
        anc[i].name = g->name;
    }
    qsort(anc, n, sizeof(*anc), keyed_cmp);

    memset(out, 0, sizeof(*out));
    out->loc = h->loc;
    out->name = strdup(h->name);
    out->vars = json_object();
    out->groups = calloc(n ? n : 1, sizeof(*out->groups));
    if (out->name == NULL || out->vars == NULL || out->groups == NULL)
        return nomem(ld);
    for (i = 0; i < n; i++)
        if (json_object_update(out->vars, ld->g[anc[i].idx].vars) < 0)
            return nomem(ld);
    if (json_object_update(out->vars, h->vars) < 0)
        return nomem(ld);
    if ((rc = count_cells(ld, n + json_object_size(out->vars), &h->loc)) < 0)
        return rc;

    hc.ld = ld;
    hc.hi = hi;
    hc.anc = anc;
    hc.nanc = n;
    hc.out = out;
    show(hc.hname, h->name, strlen(h->name));
    if ((rc = resolve_conn(&hc)) < 0)
        return rc;

    /* groups, sorted by name: a second sort, by name alone. */
    for (i = 0; i < n; i++) {
        anc[i].a = 0;
        anc[i].b = 0;
    }
    qsort(anc, n, sizeof(*anc), keyed_cmp);
    for (i = 0; i < n; i++) {
        if ((out->groups[i] = strdup(anc[i].name)) == NULL)
            return nomem(ld);
        out->ngroups++;
    }
    return 0;
}

static int build(struct ld *ld, struct inventory *inv)
{
    size_t *stamp = NULL, i, k;
    struct keyed *anc = NULL;
    int rc = 0;

    inv->groups = calloc(ld->ng, sizeof(*inv->groups));
    inv->hosts = calloc(ld->nh ? ld->nh : 1, sizeof(*inv->hosts));
    stamp = calloc(ld->ng, sizeof(*stamp));
    anc = calloc(ld->ng, sizeof(*anc));
    if (inv->groups == NULL || inv->hosts == NULL || stamp == NULL || anc == NULL) {
        rc = nomem(ld);
        goto out;
    }
    for (i = 0; i < ld->ng; i++) {
        struct lgroup *lg = &ld->g[i];
        struct inv_group *g = &inv->groups[i];

        inv->ngroups++;
        g->loc = lg->loc;
        g->name = strdup(lg->name);
        g->vars = json_incref(lg->vars);
        g->children = calloc(lg->nkids ? lg->nkids : 1, sizeof(*g->children));
        g->hosts = calloc(lg->nhosts ? lg->nhosts : 1, sizeof(*g->hosts));
        if (g->name == NULL || g->children == NULL || g->hosts == NULL) {
            rc = nomem(ld);
            goto out;
        }
        for (k = 0; k < lg->nkids; k++) {
            if ((g->children[k] = strdup(ld->g[lg->kids[k].to].name)) == NULL) {
                rc = nomem(ld);
                goto out;
            }
            g->nchildren++;
        }
        for (k = 0; k < lg->nhosts; k++) {
            if ((g->hosts[k] = strdup(ld->h[lg->hosts[k]].name)) == NULL) {
                rc = nomem(ld);
                goto out;
            }
            g->nhosts++;
        }
    }
    for (i = 0; i < ld->nh; i++) {
        inv->nhosts++;
        if ((rc = build_host(ld, i, stamp, anc, &inv->hosts[i])) < 0)
            goto out;
    }
out:
    free(stamp);
    free(anc);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Public                                                                    */

void inv_init(struct inventory *inv)
{
    memset(inv, 0, sizeof(*inv));
}

void inv_release(struct inventory *inv)
{
    size_t i, k;

    if (inv == NULL)
        return;
    for (i = 0; i < inv->nhosts; i++)
        host_release(&inv->hosts[i]);
    free(inv->hosts);
    for (i = 0; i < inv->ngroups; i++) {
        struct inv_group *g = &inv->groups[i];

        free(g->name);
        json_decref(g->vars);
        for (k = 0; k < g->nchildren; k++)
            free(g->children[k]);
        free(g->children);
        for (k = 0; k < g->nhosts; k++)
            free(g->hosts[k]);
        free(g->hosts);
    }
    free(inv->groups);
    free(inv->path);
    inv_init(inv);
}

int inv_load_buffer(struct inventory *inv, const char *name, const char *data, size_t len,
                    struct kf_err *err)
{
    struct kf_err local;
    struct inventory out;
    struct ld ld;
    size_t gi;
    int rc;

    inv_init(inv);
    inv_init(&out);
    if (err == NULL)
        err = &local;
    kf_err_clear(err);
    if (name == NULL)
        name = "<inventory>";
    if (data == NULL) {
        data = "";
        len = 0;
    }
    memset(&ld, 0, sizeof(ld));
    ld.err = err;
    ld.root = NONE;
    kf_escape_to(ld.file, sizeof(ld.file), name, strlen(name));

    if ((rc = group_get(&ld, "all", 3, NULL, &gi)) < 0 ||
        (rc = group_get(&ld, "ungrouped", 9, NULL, &gi)) < 0)
        goto out;
    if ((rc = compose(&ld, data, len)) < 0 || (rc = walk_root(&ld)) < 0 ||
        (rc = check_cycles(&ld)) < 0 || (rc = reconcile(&ld)) < 0 ||
        (rc = compute_depths(&ld)) < 0 || (rc = read_priorities(&ld)) < 0 ||
        (rc = build(&ld, &out)) < 0)
        goto out;
    if ((out.path = strdup(name)) == NULL) {
        rc = nomem(&ld);
        goto out;
    }
    *inv = out;
    inv_init(&out); /* transferred */
out:
    inv_release(&out);
    ld_release(&ld);
    return rc;
}

/* Reads a whole YAML file (at most MAX_FILE bytes) into b; `what` names the
 * file's role in messages ("inventory", "configuration"). */
static int read_yaml_file(const char *path, const char *what, struct buf *b, struct kf_err *err)
{
    char show_path[SHOW];
    FILE *f = NULL;
    int rc = 0, e;

    if (path == NULL)
        return kf_err_set(err, KF_EINVAL, "%s path is NULL", what);
    kf_escape_to(show_path, sizeof(show_path), path, strlen(path));
    f = fopen(path, "rb");
    if (f == NULL) {
        e = errno;
        return kf_err_set(err, e == ENOENT ? KF_ENOENT : KF_EIO, "%s: cannot read %s: %s",
                          show_path, what, strerror(e));
    }
    for (;;) {
        char chunk[65536];
        size_t got = fread(chunk, 1, sizeof(chunk), f);

        if (got > 0 && (rc = buf_append(b, chunk, got)) < 0) {
            if (rc == KF_ETRUNC)
                rc = kf_err_set(err, KF_EPARSE, "%s: %s larger than %zu MiB", show_path, what,
                                MAX_FILE >> 20);
            else
                rc = kf_err_set(err, rc, "%s: out of memory reading %s", show_path, what);
            goto out;
        }
        if (got < sizeof(chunk)) {
            if (ferror(f)) {
                e = errno;
                rc =
                    kf_err_set(err, KF_EIO, "%s: cannot read %s: %s", show_path, what, strerror(e));
                goto out;
            }
            break;
        }
    }
out:
    fclose(f);
    return rc;
}

int inv_load_file(struct inventory *inv, const char *path, struct kf_err *err)
{
    struct buf b;
    int rc;

    inv_init(inv);
    kf_err_clear(err);
    buf_init(&b, MAX_FILE);
    rc = read_yaml_file(path, "inventory", &b, err);
    if (rc == 0)
        rc = inv_load_buffer(inv, path, b.data ? b.data : "", b.len, err);
    buf_release(&b);
    return rc;
}

int inv_yaml_to_json(const char *name, const char *data, size_t len, json_t **out,
                     struct kf_err *err)
{
    struct kf_err local;
    struct ld ld;
    int rc;

    *out = NULL;
    if (err == NULL)
        err = &local;
    kf_err_clear(err);
    memset(&ld, 0, sizeof(ld));
    ld.err = err;
    ld.root = NONE;
    kf_escape_to(ld.file, sizeof(ld.file), name ? name : "<yaml>", strlen(name ? name : "<yaml>"));
    rc = compose(&ld, data ? data : "", data ? len : 0);
    if (rc == 0) {
        if (ld.root == NONE)
            *out = json_null(); /* an empty document */
        else
            rc = to_json(&ld, ld.root, 0, out);
    }
    ld_release(&ld);
    return rc;
}

int inv_yaml_load_file(const char *path, json_t **out, struct kf_err *err)
{
    struct buf b;
    int rc;

    *out = NULL;
    kf_err_clear(err);
    buf_init(&b, MAX_FILE);
    rc = read_yaml_file(path, "configuration", &b, err);
    if (rc == 0)
        rc = inv_yaml_to_json(path, b.data ? b.data : "", b.len, out, err);
    buf_release(&b);
    return rc;
}

const struct inv_host *inv_find_host(const struct inventory *inv, const char *name)
{
    size_t i;

    if (inv == NULL || name == NULL)
        return NULL;
    for (i = 0; i < inv->nhosts; i++)
        if (strcmp(inv->hosts[i].name, name) == 0)
            return &inv->hosts[i];
    return NULL;
}

const struct inv_group *inv_find_group(const struct inventory *inv, const char *name)
{
    size_t i;

    if (inv == NULL || name == NULL)
        return NULL;
    for (i = 0; i < inv->ngroups; i++)
        if (strcmp(inv->groups[i].name, name) == 0)
            return &inv->groups[i];
    return NULL;
}
