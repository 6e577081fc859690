/* dkms.conf without bash: a scanner for the assignment subset described in
 * dkms.h, the few variables kfleet needs from it, and DKMS's exclusivity
 * test.
 *
 * The scanner keeps bash's meaning for what it accepts and refuses the
 * rest at the first byte it cannot be sure of: a dkms.conf that reads
 * differently here and in the container would make kfleet plan one package
 * and build another. Each value is collected after quote removal together
 * with the spans of its active $-references (unquoted or double-quoted), so
 * a '$' that bash holds literally (single-quoted or escaped) is never taken
 * for a reference. */
#include "dkms.h"

#include <errno.h>
#include <fcntl.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ${...} inside ${...}: deeper nesting is refused, so recursion is bounded. */
#define BRACE_NESTING_MAX 8

/* The four arrays that describe the modules, by field. */
enum { F_NAME, F_BUILT, F_DEST, F_DEST_NAME, F_COUNT };

static const char *const field_var[F_COUNT] = {"BUILT_MODULE_NAME", "BUILT_MODULE_LOCATION",
                                               "DEST_MODULE_LOCATION", "DEST_MODULE_NAME"};

/* One module index while the file is read: its fields and the line of the
 * assignment that set each (0 = unset). */
struct slot {
    char *f[F_COUNT];
    unsigned line[F_COUNT];
};

/* An active $-reference in the current value: its text is val[off, off+len)
 * and the parameter's name val[name_off, name_off+name_len). simple: $NAME
 * or ${NAME}, nothing else. */
struct ref {
    size_t off, len;
    size_t name_off, name_len;
    int simple;
};

struct parser {
    const char *p;
    size_t len, pos;
    unsigned line;  /* line of p[pos], from 1 */
    unsigned vline; /* line where the current assignment starts */
    const char *what;
    struct kf_err *err;
    struct buf val; /* the current value, after quote removal */
    struct ref *refs;
    size_t nrefs, refcap;
    struct slot *slots;                          /* BUILD_DKMS_MODULES_MAX */
    unsigned make_line[BUILD_DKMS_MODULES_MAX];  /* MAKE[n], n > 0 */
    unsigned match_line[BUILD_DKMS_MODULES_MAX]; /* MAKE_MATCH[n], n > 0 */
    struct build_dkms *d;
};

/* ------------------------------------------------------------------------ */
/* Characters and messages                                                   */

static int is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static int is_alpha(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_alnum(int c)
{
    return is_alpha(c) || is_digit(c);
}

static int is_name_start(int c)
{
    return is_alpha(c) || c == '_';
}

static int is_name_char(int c)
{
    return is_alnum(c) || c == '_';
}

static int is_blank(int c)
{
    return c == ' ' || c == '\t';
}

/* bash's special parameters: $@ $* $# $? $- $$ $! (and $0-$9 are digits). */
static int is_special(int c)
{
    return c > 0 && strchr("@*#?-$!", c) != NULL;
}

static int cur(const struct parser *ps)
{
    return ps->pos < ps->len ? (unsigned char)ps->p[ps->pos] : -1;
}

static int peek(const struct parser *ps, size_t k)
{
    return ps->pos + k < ps->len ? (unsigned char)ps->p[ps->pos + k] : -1;
}

/* Consumes one byte, counting lines. */
static void adv(struct parser *ps)
{
    if (ps->p[ps->pos] == '\n')
        ps->line++;
    ps->pos++;
}

static int fail(struct parser *ps, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* KF_EPARSE with "WHAT:LINE: message". */
static int fail(struct parser *ps, unsigned line, const char *fmt, ...)
{
    char msg[400];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return kf_err_set(ps->err, KF_EPARSE, "%s:%u: %s", ps->what, line, msg);
}

static int nomem(struct parser *ps)
{
    return kf_err_set(ps->err, KF_ENOMEM, "%s: out of memory", ps->what);
}

/* The physical line that holds p[pos], display-safe, for messages. */
static int shell_code(struct parser *ps, const char *why)
{
    char shown[320];
    size_t a = ps->pos, b = ps->pos;

    while (a > 0 && ps->p[a - 1] != '\n')
        a--;
    while (b < ps->len && ps->p[b] != '\n')
        b++;
    kf_escape_to(shown, sizeof(shown), ps->p + a, b - a);
    if (why != NULL)
        return fail(ps, ps->line,
                    "kfleet reads dkms.conf assignments only; this line is shell code (%s): %s",
                    why, shown);
    return fail(ps, ps->line,
                "kfleet reads dkms.conf assignments only; this line is shell code: %s", shown);
}

/* A value for a message: as it is when it is printable ASCII (a pattern
 * like ^5\. stays readable), else escaped. */
static const char *show(char *out, size_t outsz, const char *s)
{
    const unsigned char *q;

    for (q = (const unsigned char *)s; *q != '\0'; q++)
        if (*q < 0x20 || *q >= 0x7f)
            return kf_escape_to(out, outsz, s, strlen(s));
    if (strlen(s) >= outsz && outsz > 4) {
        snprintf(out, outsz - 3, "%s", s);
        strcat(out, "...");
        return out;
    }
    snprintf(out, outsz, "%s", s);
    return out;
}

/* ------------------------------------------------------------------------ */
/* Scanning a value                                                          */

static int put(struct parser *ps, const char *s, size_t n)
{
    if (ps->val.len + n > BUILD_DKMS_VALUE_MAX)
        return fail(ps, ps->vline, "a value longer than %d bytes", BUILD_DKMS_VALUE_MAX);
    if (buf_append(&ps->val, s, n) != 0)
        return nomem(ps);
    return 0;
}

static int put1(struct parser *ps, int c)
{
    char ch = (char)c;

    return put(ps, &ch, 1);
}

static int add_ref(struct parser *ps, size_t off, size_t name_off, size_t name_len, int simple)
{
    struct ref *r;

    if (ps->nrefs == ps->refcap) {
        size_t cap = ps->refcap ? ps->refcap * 2 : 8;
        r = realloc(ps->refs, cap * sizeof(*r));
        if (r == NULL)
            return nomem(ps);
        ps->refs = r;
        ps->refcap = cap;
    }
    r = &ps->refs[ps->nrefs++];
    r->off = off;
    r->len = ps->val.len - off;
    r->name_off = name_off;
    r->name_len = name_len;
    r->simple = simple;
    return 0;
}

/* Copies the current byte to the value and consumes it. */
static int take(struct parser *ps)
{
    int rc = put1(ps, cur(ps));

    if (rc == 0)
        adv(ps);
    return rc;
}

static int bad_brace(struct parser *ps, const char *why)
{
    return fail(ps, ps->line, "${...} %s is not supported by kfleet", why);
}

/* ${...} at p[pos]; copied verbatim. Only the outermost one is recorded as a
 * reference. bash's own grammar is larger: kfleet takes the forms that can
 * neither assign (${X=y}, ${X:=y}, arithmetic in a subscript or an offset,
 * which may assign too) nor run anything, and that need no quote handling. */
static int scan_brace(struct parser *ps, int depth, int record)
{
    size_t off = ps->val.len, name_off, name_len;
    unsigned line0 = ps->line;
    int simple = 1, c, n, rc;

    if (depth >= BRACE_NESTING_MAX)
        return bad_brace(ps, "nested this deeply");
    if ((rc = put(ps, "${", 2)) != 0)
        return rc;
    ps->pos += 2;

    /* ${#X} (length) and ${!X} (indirection). */
    c = cur(ps);
    n = peek(ps, 1);
    if ((c == '#' || c == '!') && n != '}' && (is_name_start(n) || is_digit(n) || is_special(n))) {
        if ((rc = take(ps)) != 0)
            return rc;
        simple = 0;
    }

    name_off = ps->val.len;
    c = cur(ps);
    if (is_name_start(c)) {
        while (is_name_char(cur(ps)))
            if ((rc = take(ps)) != 0)
                return rc;
    } else if (is_digit(c)) {
        simple = 0;
        while (is_digit(cur(ps)))
            if ((rc = take(ps)) != 0)
                return rc;
    } else if (is_special(c)) {
        simple = 0;
        if ((rc = take(ps)) != 0)
            return rc;
    } else {
        return bad_brace(ps, "without a parameter name");
    }
    name_len = ps->val.len - name_off;

    if (cur(ps) == '[') {
        simple = 0;
        if ((rc = take(ps)) != 0)
            return rc;
        c = cur(ps);
        if (c == '@' || c == '*') {
            if ((rc = take(ps)) != 0)
                return rc;
        } else if (is_digit(c)) {
            while (is_digit(cur(ps)))
                if ((rc = take(ps)) != 0)
                    return rc;
        }
        if (cur(ps) != ']')
            return bad_brace(ps, "with a subscript that is not a number (arithmetic)");
        if ((rc = take(ps)) != 0)
            return rc;
    }

    c = cur(ps);
    if (c == '}') {
        if ((rc = take(ps)) != 0)
            return rc;
        goto done;
    }
    simple = 0;
    n = peek(ps, 1);
    if (c == '=' || (c == ':' && n == '='))
        return bad_brace(ps, "that assigns a variable");
    if (c == ':' && n != '-' && n != '+' && n != '?') {
        /* ${X:offset:length}: both are arithmetic; plain numbers only. */
        for (;;) {
            c = cur(ps);
            if (c == '}')
                break;
            if (c < 0 || c == '\n')
                return fail(ps, line0, "unterminated ${...}");
            if (!is_digit(c) && c != ':' && c != '-' && c != ' ')
                return bad_brace(ps, "with an offset that is not a number (arithmetic)");
            if ((rc = take(ps)) != 0)
                return rc;
        }
        if ((rc = take(ps)) != 0)
            return rc;
        goto done;
    }
    if (c == ':') {
        if ((rc = take(ps)) != 0)
            return rc;
    } else if (c < 0 || strchr("-+?#%/^,@", c) == NULL) {
        return bad_brace(ps, "with this operator");
    }
    if ((rc = take(ps)) != 0)
        return rc;

    /* The word or pattern, up to the closing brace. */
    for (;;) {
        c = cur(ps);
        n = peek(ps, 1);
        if (c < 0)
            return fail(ps, line0, "unterminated ${...}");
        if (c == '}') {
            if ((rc = take(ps)) != 0)
                return rc;
            break;
        }
        if (c == '$' && n == '{') {
            if ((rc = scan_brace(ps, depth + 1, 0)) != 0)
                return rc;
            continue;
        }
        if (c == '`' || (c == '$' && n == '('))
            return shell_code(ps, "command substitution");
        if (c == '$' && n == '[')
            return shell_code(ps, "arithmetic expansion");
        if (c == '\'' || c == '"' || c == '\\')
            return bad_brace(ps, "with quotes or backslashes inside");
        if (c == '{')
            return bad_brace(ps, "with a brace inside");
        if (c == '\n')
            return bad_brace(ps, "across lines");
        if ((rc = take(ps)) != 0)
            return rc;
    }
done:
    return record ? add_ref(ps, off, name_off, name_len, simple) : 0;
}

/* '$' at p[pos], unquoted or inside double quotes. bash removes a
 * backslash-newline before it reads a parameter name, so "$PACKAGE_\<newline>
 * VERSION" names PACKAGE_VERSION: kfleet refuses a line continuation
 * inside or right after a name rather than follow it. */
static int scan_dollar(struct parser *ps, int in_dq)
{
    size_t off = ps->val.len, k;
    int n = peek(ps, 1), rc;

    if (n == '\\' && peek(ps, 2) == '\n')
        return fail(ps, ps->line, "a line continuation right after '$' is not supported by kfleet");
    if (n == '(')
        return shell_code(ps, "command substitution");
    if (n == '[')
        return shell_code(ps, "arithmetic expansion");
    if (n == '{')
        return scan_brace(ps, 0, 1);
    if (!in_dq && (n == '\'' || n == '"'))
        return fail(ps, ps->line, "$'...' and $\"...\" strings are not supported by kfleet");
    if (is_name_start(n)) {
        if ((rc = take(ps)) != 0)
            return rc;
        while (is_name_char(cur(ps)))
            if ((rc = take(ps)) != 0)
                return rc;
        for (k = ps->pos; k + 1 < ps->len && ps->p[k] == '\\' && ps->p[k + 1] == '\n';)
            k += 2;
        if (k > ps->pos && k < ps->len && is_name_char((unsigned char)ps->p[k]))
            return fail(ps, ps->line,
                        "a $NAME split by a line continuation is not supported by kfleet");
        return add_ref(ps, off, off + 1, ps->val.len - off - 1, 1);
    }
    if (is_digit(n) || is_special(n)) {
        if ((rc = take(ps)) != 0 || (rc = take(ps)) != 0)
            return rc;
        return add_ref(ps, off, off + 1, 1, 0);
    }
    /* "$" before anything else is a plain dollar sign (a regex's anchor). */
    return take(ps);
}

/* "..." at p[pos]: a backslash escapes only $ ` " \ and newline. */
static int scan_dquote(struct parser *ps)
{
    unsigned qline = ps->line;
    int c, n, rc;

    ps->pos++;
    for (;;) {
        c = cur(ps);
        if (c < 0)
            return fail(ps, qline, "unterminated double quote");
        if (c == '"') {
            ps->pos++;
            return 0;
        }
        if (c == '\\') {
            n = peek(ps, 1);
            if (n == '\n') {
                ps->pos++;
                adv(ps);
                continue;
            }
            if (n == '$' || n == '`' || n == '"' || n == '\\') {
                ps->pos++;
                rc = take(ps);
            } else {
                rc = take(ps); /* the backslash stays */
            }
        } else if (c == '`') {
            return shell_code(ps, "command substitution");
        } else if (c == '$') {
            rc = scan_dollar(ps, 1);
        } else {
            rc = take(ps);
        }
        if (rc != 0)
            return rc;
    }
}

/* The value of an assignment, from p[pos] to the first unquoted blank or
 * newline, into ps->val and ps->refs. */
static int scan_value(struct parser *ps)
{
    unsigned qline;
    size_t start;
    int c, n, rc, tilde_ok = 1;

    buf_reset(&ps->val);
    ps->nrefs = 0;
    for (;;) {
        c = cur(ps);
        if (c < 0 || is_blank(c) || c == '\n')
            return 0;
        if (c == '~' && tilde_ok)
            return fail(ps, ps->line,
                        "an unquoted ~ at the start of a value or after ':' is tilde expansion, "
                        "which kfleet does not do; quote it");
        switch (c) {
        case '\\':
            n = peek(ps, 1);
            if (n == '\n') { /* line continuation */
                ps->pos++;
                adv(ps);
                continue;
            }
            ps->pos++;
            /* A backslash at the very end of the file stays, as in bash. */
            rc = n < 0 ? put1(ps, '\\') : take(ps);
            break;
        case '\'':
            qline = ps->line;
            start = ++ps->pos;
            while (cur(ps) != '\'') {
                if (cur(ps) < 0)
                    return fail(ps, qline, "unterminated single quote");
                adv(ps);
            }
            rc = put(ps, ps->p + start, ps->pos - start);
            ps->pos++;
            break;
        case '"':
            rc = scan_dquote(ps);
            break;
        case '`':
            return shell_code(ps, "command substitution");
        case '$':
            rc = scan_dollar(ps, 0);
            break;
        case '(':
            if (ps->val.len == 0 && ps->nrefs == 0)
                return shell_code(ps, "an array assignment");
            return shell_code(ps, NULL);
        case ';':
        case '&':
        case '|':
        case '<':
        case '>':
        case ')':
            return shell_code(ps, NULL);
        default:
            rc = take(ps);
            break;
        }
        if (rc != 0)
            return rc;
        tilde_ok = c == ':';
    }
}

/* ------------------------------------------------------------------------ */
/* Values kfleet uses                                                        */

enum { R_IDENT, R_LOCATION };

/* Whether the n bytes at s are the variable name var. */
static int same_var(const char *s, size_t n, const char *var)
{
    return n == strlen(var) && memcmp(s, var, n) == 0;
}

/* The current value with $PACKAGE_NAME and $PACKAGE_VERSION replaced by
 * their values. R_IDENT: any other reference is an error. R_LOCATION: other
 * simple references stay verbatim; complex ones and literal '$' are errors.
 * label names the variable in messages. */
static int resolve(struct parser *ps, int mode, const char *label, char **out)
{
    const char *v = buf_cstr(&ps->val);
    struct buf b;
    size_t at = 0, i, end;
    char shown[160];
    int rc = 0;

    *out = NULL;
    buf_init(&b, 0);
    for (i = 0; i <= ps->nrefs; i++) {
        const struct ref *r = i < ps->nrefs ? &ps->refs[i] : NULL;
        const char *name, *value = NULL;

        end = r != NULL ? r->off : ps->val.len;
        if (mode == R_LOCATION && memchr(v + at, '$', end - at) != NULL) {
            rc = fail(ps, ps->vline,
                      "%s: a quoted or escaped '$' is not allowed in a location (a $NAME "
                      "reference is)",
                      label);
            goto out;
        }
        if (buf_append(&b, v + at, end - at) != 0) {
            rc = nomem(ps);
            goto out;
        }
        if (r == NULL)
            break;
        name = v + r->name_off;
        if (r->simple && same_var(name, r->name_len, "PACKAGE_NAME")) {
            value = ps->d->package_name;
            if (value == NULL) {
                rc = fail(ps, ps->vline, "%s: $PACKAGE_NAME is used before it is assigned", label);
                goto out;
            }
        } else if (r->simple && same_var(name, r->name_len, "PACKAGE_VERSION")) {
            value = ps->d->package_version;
            if (value == NULL) {
                rc = fail(ps, ps->vline, "%s: $PACKAGE_VERSION is used before it is assigned",
                          label);
                goto out;
            }
        } else if (mode == R_LOCATION && r->simple) {
            value = NULL; /* kept for DKMS */
        } else {
            rc = fail(ps, ps->vline,
                      "%s: kfleet does not expand %s here (only $PACKAGE_NAME and "
                      "$PACKAGE_VERSION%s)",
                      label, kf_escape_to(shown, sizeof(shown), v + r->off, r->len),
                      mode == R_LOCATION ? ", and $NAME kept for DKMS" : "");
            goto out;
        }
        if (value != NULL)
            rc = buf_puts(&b, value);
        else
            rc = buf_append(&b, v + r->off, r->len);
        if (rc != 0) {
            rc = nomem(ps);
            goto out;
        }
        at = r->off + r->len;
    }
    if (b.len > BUILD_DKMS_VALUE_MAX) {
        rc = fail(ps, ps->vline, "%s: a value longer than %d bytes", label, BUILD_DKMS_VALUE_MAX);
        goto out;
    }
    *out = buf_detach(&b, NULL);
    if (*out == NULL)
        rc = nomem(ps);
out:
    buf_release(&b);
    return rc;
}

/* PACKAGE_NAME: a path component and a word in commands. */
static int package_name_valid(const char *s)
{
    size_t i, n = strlen(s);

    if (n == 0 || n > BUILD_DKMS_NAME_MAX || !is_alnum((unsigned char)s[0]))
        return 0;
    for (i = 0; i < n; i++)
        if (!is_alnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-')
            return 0;
    return 1;
}

/* PACKAGE_VERSION: a path component too; the first character rules out
 * "." and "..". */
static int package_version_valid(const char *s)
{
    size_t i, n = strlen(s);

    if (n == 0 || n > BUILD_DKMS_NAME_MAX || !is_alnum((unsigned char)s[0]))
        return 0;
    for (i = 0; i < n; i++)
        if (!is_alnum((unsigned char)s[i]) && strchr(".+~_-", s[i]) == NULL)
            return 0;
    return 1;
}

/* A location after resolve(): NULL when it is fine, else what is wrong. */
static const char *location_problem(const char *s, int dest)
{
    const char *q, *comp = s;

    if (dest && s[0] != '\0') {
        /* DKMS's own check: a location under /lib/modules/KERNEL. */
        static const char *const tops[] = {"/kernel", "/updates", "/extra"};
        size_t i, n;
        int ok = 0;

        for (i = 0; i < sizeof(tops) / sizeof(tops[0]); i++) {
            n = strlen(tops[i]);
            if (strncmp(s, tops[i], n) == 0 && (s[n] == '\0' || s[n] == '/'))
                ok = 1;
        }
        if (!ok)
            return "a destination must start with /kernel, /updates or /extra";
    }
    for (q = s;; q++) {
        if (*q == '/' || *q == '\0') {
            if (q - comp == 2 && comp[0] == '.' && comp[1] == '.')
                return "a location may not have a '..' component";
            if (*q == '\0')
                return NULL;
            comp = q + 1;
        } else if (*q == '$') {
            /* A reference resolve() kept: $NAME or ${NAME}. */
            int brace = q[1] == '{';

            q += brace ? 2 : 1;
            while (is_name_char((unsigned char)q[1]))
                q++;
            if (brace)
                q++;
        } else if (!is_alnum((unsigned char)*q) && strchr("._+~-", *q) == NULL) {
            return "a location may hold only letters, digits, . _ + ~ - and /";
        }
    }
}

static int regex_check(struct parser *ps, const char *var, const char *re)
{
    char shown[200], msg[160];
    const unsigned char *q;
    regex_t rx;
    int rc;

    for (q = (const unsigned char *)re; *q != '\0'; q++)
        if (*q < 0x20 || *q >= 0x7f)
            return fail(ps, ps->vline, "%s \"%s\": a pattern must be printable ASCII", var,
                        show(shown, sizeof(shown), re));
    rc = regcomp(&rx, re, REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
        regerror(rc, &rx, msg, sizeof(msg));
        return fail(ps, ps->vline, "%s \"%s\" is not a valid extended regular expression: %s", var,
                    show(shown, sizeof(shown), re), msg);
    }
    regfree(&rx);
    return 0;
}

static void replace(char **slot, char *v)
{
    free(*slot);
    *slot = v;
}

/* MAKE[n] with MAKE_MATCH[n], n > 0, in either order. */
static int make_match(struct parser *ps, int is_match, unsigned idx)
{
    unsigned *mine = is_match ? ps->match_line : ps->make_line;
    unsigned *other = is_match ? ps->make_line : ps->match_line;

    mine[idx] = ps->vline;
    if (other[idx] != 0)
        return fail(ps, ps->vline,
                    "%s[%u] with %s[%u] (line %u) selects a make command by kernel, which kfleet "
                    "does not support",
                    is_match ? "MAKE_MATCH" : "MAKE", idx, is_match ? "MAKE" : "MAKE_MATCH", idx,
                    other[idx]);
    return 0;
}

/* Applies NAME[idx]=value (the value in ps->val) to what kfleet keeps. */
static int assign(struct parser *ps, const char *nm, size_t nlen, unsigned idx)
{
    struct build_dkms *d = ps->d;
    char label[64], shown[160], *v = NULL;
    const char *problem;
    int f, rc;

    if (same_var(nm, nlen, "MAKE") && idx > 0)
        return make_match(ps, 0, idx);
    if (same_var(nm, nlen, "MAKE_MATCH") && idx > 0)
        return make_match(ps, 1, idx);
    for (f = 0; f < F_COUNT; f++)
        if (same_var(nm, nlen, field_var[f]))
            break;
    if (f < F_COUNT) {
        struct slot *s = &ps->slots[idx];

        snprintf(label, sizeof(label), "%s[%u]", field_var[f], idx);
        rc = resolve(ps, f == F_BUILT || f == F_DEST ? R_LOCATION : R_IDENT, label, &v);
        if (rc != 0)
            return rc;
        if (f == F_NAME || f == F_DEST_NAME) {
            if ((f == F_NAME || v[0] != '\0') && !kf_modname_valid(v)) {
                rc = fail(ps, ps->vline,
                          "%s \"%s\" is not a valid module name (1 to %d of A-Z a-z 0-9 _ -)",
                          label, show(shown, sizeof(shown), v), KF_MODNAME_MAX);
                free(v);
                return rc;
            }
        } else if ((problem = location_problem(v, f == F_DEST)) != NULL) {
            rc =
                fail(ps, ps->vline, "%s \"%s\": %s", label, show(shown, sizeof(shown), v), problem);
            free(v);
            return rc;
        }
        replace(&s->f[f], v);
        s->line[f] = ps->vline;
        return 0;
    }

    /* The rest are plain variables: NAME[n] for n > 0 is another element,
     * which DKMS does not read. */
    if (idx > 0)
        return 0;
    if (same_var(nm, nlen, "PACKAGE_NAME") || same_var(nm, nlen, "PACKAGE_VERSION")) {
        int is_name = nlen == strlen("PACKAGE_NAME");
        const char *var = is_name ? "PACKAGE_NAME" : "PACKAGE_VERSION";

        if ((rc = resolve(ps, R_IDENT, var, &v)) != 0)
            return rc;
        if (is_name ? !package_name_valid(v) : !package_version_valid(v)) {
            rc = fail(ps, ps->vline,
                      "%s \"%s\" is not valid (1 to %d of %s, starting with a letter or digit)",
                      var, show(shown, sizeof(shown), v), BUILD_DKMS_NAME_MAX,
                      is_name ? "A-Z a-z 0-9 _ -" : "A-Z a-z 0-9 . + ~ _ -");
            free(v);
            return rc;
        }
        replace(is_name ? &d->package_name : &d->package_version, v);
        return 0;
    }
    if (same_var(nm, nlen, "MAKE") || same_var(nm, nlen, "CLEAN")) {
        /* Kept as bash holds it: the container's bash expands it. */
        v = strdup(buf_cstr(&ps->val));
        if (v == NULL)
            return nomem(ps);
        replace(nlen == 4 ? &d->make : &d->clean, v);
        return 0;
    }
    if (same_var(nm, nlen, "BUILD_EXCLUSIVE_KERNEL") ||
        same_var(nm, nlen, "BUILD_EXCLUSIVE_ARCH")) {
        int kernel = nlen == strlen("BUILD_EXCLUSIVE_KERNEL");
        const char *var = kernel ? "BUILD_EXCLUSIVE_KERNEL" : "BUILD_EXCLUSIVE_ARCH";

        if ((rc = resolve(ps, R_IDENT, var, &v)) != 0)
            return rc;
        if (v[0] != '\0' && (rc = regex_check(ps, var, v)) != 0) {
            free(v);
            return rc;
        }
        if (v[0] == '\0') { /* DKMS ignores an empty one */
            free(v);
            v = NULL;
        }
        replace(kernel ? &d->exclusive_kernel : &d->exclusive_arch, v);
        return 0;
    }
    if (same_var(nm, nlen, "AUTOINSTALL")) {
        if ((rc = resolve(ps, R_IDENT, "AUTOINSTALL", &v)) != 0)
            return rc;
        d->autoinstall = v[0] == 'y' || v[0] == 'Y'; /* DKMS: =~ ^(Y|y) */
        free(v);
        return 0;
    }
    return 0; /* a variable kfleet does not use */
}

/* ------------------------------------------------------------------------ */
/* Lines                                                                     */

/* Blanks and backslash-newlines. */
static void skip_blanks(struct parser *ps)
{
    for (;;) {
        if (is_blank(cur(ps)))
            ps->pos++;
        else if (cur(ps) == '\\' && peek(ps, 1) == '\n') {
            ps->pos++;
            adv(ps);
        } else
            return;
    }
}

/* The variables bash itself makes read-only (bash -c 'readonly -p'). */
static int readonly_var(const char *s, size_t n)
{
    static const char *const ro[] = {"BASHOPTS", "BASH_VERSINFO", "EUID",
                                     "PPID",     "SHELLOPTS",     "UID"};
    size_t i;

    for (i = 0; i < sizeof(ro) / sizeof(ro[0]); i++)
        if (same_var(s, n, ro[i]))
            return 1;
    return 0;
}

/* NAME=VALUE or NAME[N]=VALUE at p[pos]; exported: after "export", where
 * bash refuses a subscript ("not a valid identifier"). */
static int parse_assignment(struct parser *ps, int exported)
{
    size_t start = ps->pos, nlen, dstart, k;
    unsigned idx = 0;
    int rc;

    if (!is_name_start(cur(ps)))
        return shell_code(ps, NULL);
    ps->vline = ps->line;
    while (is_name_char(cur(ps)))
        ps->pos++;
    nlen = ps->pos - start;
    if (readonly_var(ps->p + start, nlen))
        return fail(ps, ps->line,
                    "%.*s is read-only in bash: assigning it fails and skips the rest of the line",
                    (int)nlen, ps->p + start);
    if (cur(ps) == '[' && exported)
        return fail(ps, ps->line,
                    "export NAME[N]=... is an error in bash (not a valid identifier): nothing "
                    "is assigned");
    if (cur(ps) == '[') {
        dstart = ++ps->pos;
        while (is_digit(cur(ps)))
            ps->pos++;
        if (ps->pos == dstart || cur(ps) != ']')
            return fail(ps, ps->line,
                        "an array index must be a decimal number (kfleet does not evaluate "
                        "arithmetic)");
        if (ps->pos - dstart > 1 && ps->p[dstart] == '0')
            return fail(ps, ps->line,
                        "an array index with a leading zero (bash reads it as octal)");
        for (k = dstart; k < ps->pos && idx < BUILD_DKMS_MODULES_MAX; k++)
            idx = idx * 10 + (unsigned)(ps->p[k] - '0');
        if (idx >= BUILD_DKMS_MODULES_MAX)
            return fail(ps, ps->line, "array index %.*s is out of range (0 to %d)",
                        (int)(ps->pos - dstart > 12 ? 12 : ps->pos - dstart), ps->p + dstart,
                        BUILD_DKMS_MODULES_MAX - 1);
        ps->pos++;
    }
    if (cur(ps) == '+' && peek(ps, 1) == '=')
        return fail(ps, ps->line, "%.*s+=: appending is not supported by kfleet",
                    (int)(nlen > 64 ? 64 : nlen), ps->p + start);
    if (cur(ps) != '=') {
        size_t k2 = ps->pos;

        while (k2 < ps->len && is_blank((unsigned char)ps->p[k2]))
            k2++;
        if (k2 > ps->pos && k2 < ps->len && ps->p[k2] == '=')
            return shell_code(ps, "an assignment has no blanks around '='");
        return shell_code(ps, NULL);
    }
    ps->pos++;
    if ((rc = scan_value(ps)) != 0)
        return rc;
    return assign(ps, ps->p + start, nlen, idx);
}

/* One or more assignments, optionally after "export". */
static int parse_statement(struct parser *ps)
{
    int c, rc, exported = 0;

    if (ps->len - ps->pos > 6 && memcmp(ps->p + ps->pos, "export", 6) == 0 &&
        is_blank((unsigned char)ps->p[ps->pos + 6])) {
        ps->pos += 6;
        exported = 1;
        skip_blanks(ps);
    }
    for (;;) {
        if ((rc = parse_assignment(ps, exported)) != 0)
            return rc;
        skip_blanks(ps);
        c = cur(ps);
        if (c < 0 || c == '\n' || c == '#')
            return 0;
    }
}

/* Bytes bash would take but no dkms.conf has: NUL (bash drops it, so the
 * file means something else than it shows) and control characters, among
 * them the CR of DOS line endings (bash keeps it in values). */
static int check_bytes(struct parser *ps)
{
    unsigned line = 1;
    size_t i;

    for (i = 0; i < ps->len; i++) {
        unsigned char c = (unsigned char)ps->p[i];

        if (c == '\n')
            line++;
        else if (c == 0)
            return fail(ps, line, "a NUL byte");
        else if (c == '\r')
            return fail(ps, line, "a carriage return (DOS line endings): bash would keep it");
        else if ((c < 0x20 && c != '\t') || c == 0x7f)
            return fail(ps, line, "control character \\x%02x", c);
    }
    return 0;
}

/* After the last line: the package and its modules are complete. */
static int finish(struct parser *ps)
{
    struct build_dkms *d = ps->d;
    size_t n = 0, i, j;
    char shown[160];
    int f;

    if (d->package_name == NULL)
        return kf_err_set(ps->err, KF_EPARSE, "%s: PACKAGE_NAME is not set", ps->what);
    if (d->package_version == NULL)
        return kf_err_set(ps->err, KF_EPARSE, "%s: PACKAGE_VERSION is not set", ps->what);
    for (i = 0; i < BUILD_DKMS_MODULES_MAX; i++)
        for (f = 0; f < F_COUNT; f++)
            if (ps->slots[i].line[f] != 0)
                n = i + 1;
    if (n == 0)
        return kf_err_set(ps->err, KF_EPARSE, "%s: no module: BUILT_MODULE_NAME[0] is not set",
                          ps->what);

    for (i = 0; i < n; i++) {
        const struct slot *s = &ps->slots[i];

        if (s->f[F_NAME] != NULL)
            continue;
        for (f = 0; f < F_COUNT; f++)
            if (s->line[f] != 0)
                return fail(ps, s->line[f], "%s[%zu] is set but BUILT_MODULE_NAME[%zu] is not",
                            field_var[f], i, i);
        /* A gap: DKMS counts the elements and reads indices 0 to count-1. */
        for (j = i + 1; j < n; j++)
            for (f = 0; f < F_COUNT; f++)
                if (ps->slots[j].line[f] != 0)
                    return fail(ps, ps->slots[j].line[f],
                                "%s[%zu] is set but BUILT_MODULE_NAME[%zu] is missing: module "
                                "indices must run from 0 without gaps",
                                field_var[f], j, i);
    }

    for (i = 0; i < n; i++) {
        const struct slot *a = &ps->slots[i];
        const char *ia =
            a->f[F_DEST_NAME] != NULL && a->f[F_DEST_NAME][0] ? a->f[F_DEST_NAME] : a->f[F_NAME];

        for (j = 0; j < i; j++) {
            const struct slot *b = &ps->slots[j];
            const char *ib = b->f[F_DEST_NAME] != NULL && b->f[F_DEST_NAME][0] ? b->f[F_DEST_NAME]
                                                                               : b->f[F_NAME];
            size_t k;

            if (strcmp(a->f[F_NAME], b->f[F_NAME]) == 0)
                return fail(ps, a->line[F_NAME],
                            "BUILT_MODULE_NAME[%zu] \"%s\" repeats BUILT_MODULE_NAME[%zu]", i,
                            show(shown, sizeof(shown), a->f[F_NAME]), j);
            /* The kernel takes '-' and '_' in module names alike. */
            for (k = 0; ia[k] != '\0' && ib[k] != '\0'; k++)
                if (ia[k] != ib[k] &&
                    !((ia[k] == '-' || ia[k] == '_') && (ib[k] == '-' || ib[k] == '_')))
                    break;
            if (ia[k] == '\0' && ib[k] == '\0')
                return fail(ps, a->line[F_DEST_NAME] ? a->line[F_DEST_NAME] : a->line[F_NAME],
                            "modules %zu and %zu would both be installed as %s", j, i,
                            show(shown, sizeof(shown), ia));
        }
    }

    d->modules = calloc(n, sizeof(*d->modules));
    if (d->modules == NULL)
        return nomem(ps);
    d->nmodules = n;
    for (i = 0; i < n; i++) {
        struct slot *s = &ps->slots[i];
        char **out[F_COUNT] = {&d->modules[i].name, &d->modules[i].built_location,
                               &d->modules[i].dest_location, &d->modules[i].dest_name};

        for (f = 0; f < F_COUNT; f++) {
            if (s->f[f] == NULL && (s->f[f] = strdup("")) == NULL)
                return nomem(ps);
            *out[f] = s->f[f]; /* transferred */
            s->f[f] = NULL;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Public functions                                                          */

void build_dkms_init(struct build_dkms *d)
{
    memset(d, 0, sizeof(*d));
    d->autoinstall = -1;
}

void build_dkms_release(struct build_dkms *d)
{
    size_t i;

    if (d == NULL)
        return;
    for (i = 0; i < d->nmodules; i++) {
        free(d->modules[i].name);
        free(d->modules[i].built_location);
        free(d->modules[i].dest_location);
        free(d->modules[i].dest_name);
    }
    free(d->modules);
    free(d->package_name);
    free(d->package_version);
    free(d->make);
    free(d->clean);
    free(d->exclusive_kernel);
    free(d->exclusive_arch);
    build_dkms_init(d);
}

int build_dkms_parse(const char *text, size_t len, const char *what, struct build_dkms *d,
                     struct kf_err *err)
{
    struct parser ps;
    size_t i;
    int c, f, rc = 0;

    if (d != NULL)
        build_dkms_init(d);
    kf_err_clear(err);
    if (d == NULL || (text == NULL && len > 0))
        return kf_err_set(err, KF_EINVAL, "build_dkms_parse: no %s", d == NULL ? "result" : "text");
    if (what == NULL)
        what = "dkms.conf";
    if (len > BUILD_DKMS_FILE_MAX)
        return kf_err_set(err, KF_EPARSE, "%s: %zu bytes: a dkms.conf may have at most %d", what,
                          len, BUILD_DKMS_FILE_MAX);

    memset(&ps, 0, sizeof(ps));
    ps.p = text != NULL ? text : "";
    ps.len = len;
    ps.line = 1;
    ps.what = what;
    ps.err = err;
    ps.d = d;
    buf_init(&ps.val, 0);
    ps.slots = calloc(BUILD_DKMS_MODULES_MAX, sizeof(*ps.slots));
    if (ps.slots == NULL) {
        rc = nomem(&ps);
        goto out;
    }
    if ((rc = check_bytes(&ps)) != 0)
        goto out;

    while (ps.pos < ps.len) {
        skip_blanks(&ps);
        c = cur(&ps);
        if (c < 0)
            break;
        if (c == '\n') {
            adv(&ps);
        } else if (c == '#') {
            /* A comment ends at the newline, backslash or not. */
            while (ps.pos < ps.len && ps.p[ps.pos] != '\n')
                ps.pos++;
        } else if ((rc = parse_statement(&ps)) != 0) {
            goto out;
        }
    }
    rc = finish(&ps);
out:
    for (i = 0; ps.slots != NULL && i < BUILD_DKMS_MODULES_MAX; i++)
        for (f = 0; f < F_COUNT; f++)
            free(ps.slots[i].f[f]);
    free(ps.slots);
    free(ps.refs);
    buf_release(&ps.val);
    if (rc != 0)
        build_dkms_release(d);
    return rc;
}

int build_dkms_load(const char *path, struct build_dkms *d, struct kf_err *err)
{
    struct stat st;
    char *data = NULL;
    size_t n = 0;
    ssize_t r;
    int fd = -1, rc = 0;

    if (d != NULL)
        build_dkms_init(d);
    if (path == NULL || d == NULL)
        return kf_err_set(err, KF_EINVAL, "build_dkms_load: no %s",
                          path == NULL ? "path" : "result");
    /* O_NONBLOCK: a FIFO in place of the file must not hang us. */
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        rc = kf_err_set(err, errno == ENOENT ? KF_ENOENT : KF_EIO, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (fstat(fd, &st) != 0) {
        rc = kf_err_set(err, KF_EIO, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = kf_err_set(err, KF_EINVAL, "%s: not a regular file", path);
        goto out;
    }
    if (st.st_size > BUILD_DKMS_FILE_MAX) {
        rc = kf_err_set(err, KF_EPARSE, "%s: %lld bytes: a dkms.conf may have at most %d", path,
                        (long long)st.st_size, BUILD_DKMS_FILE_MAX);
        goto out;
    }
    /* One byte more than allowed, so a file that grew is noticed. */
    data = malloc(BUILD_DKMS_FILE_MAX + 1);
    if (data == NULL) {
        rc = kf_err_set(err, KF_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    while (n < BUILD_DKMS_FILE_MAX + 1) {
        r = read(fd, data + n, BUILD_DKMS_FILE_MAX + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = kf_err_set(err, KF_EIO, "%s: read: %s", path, strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    if (n > BUILD_DKMS_FILE_MAX) {
        rc = kf_err_set(err, KF_EPARSE, "%s: more than %d bytes: a dkms.conf may have at most %d",
                        path, BUILD_DKMS_FILE_MAX, BUILD_DKMS_FILE_MAX);
        goto out;
    }
    rc = build_dkms_parse(data, n, path, d, err);
out:
    free(data);
    if (fd >= 0)
        close(fd);
    return rc;
}

/* One BUILD_EXCLUSIVE_* test: 1, 0 (why filled) or a negative code. */
static int exclusive_ok(const struct build_dkms *d, const char *var, const char *re,
                        const char *subject, char *why, size_t whysz, struct kf_err *err)
{
    char shown_re[200], shown_s[100], msg[160];
    regex_t rx;
    int rc;

    if (re == NULL || re[0] == '\0')
        return 1;
    rc = regcomp(&rx, re, REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
        regerror(rc, &rx, msg, sizeof(msg));
        return kf_err_set(err, KF_EINVAL,
                          "%s: %s \"%s\" is not a valid extended regular expression: %s",
                          d->package_name != NULL ? d->package_name : "dkms.conf", var,
                          show(shown_re, sizeof(shown_re), re), msg);
    }
    rc = regexec(&rx, subject, 0, NULL, 0);
    if (rc != 0 && rc != REG_NOMATCH)
        regerror(rc, &rx, msg, sizeof(msg));
    regfree(&rx);
    if (rc == 0)
        return 1;
    if (rc != REG_NOMATCH)
        return kf_err_set(err, KF_EINVAL, "%s: %s \"%s\": %s",
                          d->package_name != NULL ? d->package_name : "dkms.conf", var,
                          show(shown_re, sizeof(shown_re), re), msg);
    if (why != NULL && whysz > 0)
        snprintf(why, whysz, "%s \"%s\" does not match %s", var,
                 show(shown_re, sizeof(shown_re), re),
                 kf_escape_to(shown_s, sizeof(shown_s), subject, strlen(subject)));
    return 0;
}

int build_dkms_applies(const struct build_dkms *d, const char *kernel, const char *arch, char *why,
                       size_t whysz, struct kf_err *err)
{
    int rc;

    if (why != NULL && whysz > 0)
        why[0] = '\0';
    if (d == NULL || kernel == NULL || arch == NULL)
        return kf_err_set(err, KF_EINVAL, "build_dkms_applies: no %s",
                          d == NULL        ? "package"
                          : kernel == NULL ? "kernel"
                                           : "architecture");
    rc = exclusive_ok(d, "BUILD_EXCLUSIVE_KERNEL", d->exclusive_kernel, kernel, why, whysz, err);
    if (rc != 1)
        return rc;
    return exclusive_ok(d, "BUILD_EXCLUSIVE_ARCH", d->exclusive_arch, arch, why, whysz, err);
}
