/* Staged rollouts: the stage list (--stages) and failure budgets
 * (--max-fail, --max-fail-total). Pure functions, tested on their own. */
#include "coordinator.h"

#include <stdlib.h>
#include <string.h>

/* "5" or "20%": a whole number, optionally a percent sign. */
static int parse_amount(const char *s, size_t n, unsigned *value, int *percent)
{
    unsigned long v = 0;
    size_t i;

    *percent = n > 0 && s[n - 1] == '%';
    if (*percent)
        n--;
    if (n == 0 || n > 9)
        return -1;
    for (i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    *value = (unsigned)v;
    return 0;
}

int coord_stages_parse(const char *s, struct coord_stage_spec *out, size_t *n, struct kf_err *err)
{
    const char *p = s;
    size_t count = 0;

    *n = 0;
    if (s == NULL || *s == '\0')
        return kf_err_set(err, KF_EINVAL, "--stages: empty (example: --stages 1,5,20%%,100%%)");
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        struct coord_stage_spec sp;
        char shown[64];

        kf_escape_to(shown, sizeof(shown), p, len);
        if (count == COORD_MAX_STAGE_SPECS)
            return kf_err_set(err, KF_EINVAL, "--stages: more than %d entries",
                              COORD_MAX_STAGE_SPECS);
        if (parse_amount(p, len, &sp.value, &sp.percent) < 0)
            return kf_err_set(err, KF_EINVAL,
                              "--stages: entry %zu '%s' is not a count (5) or a percentage (20%%)",
                              count + 1, shown);
        if (sp.percent && (sp.value < 1 || sp.value > 100))
            return kf_err_set(err, KF_EINVAL,
                              "--stages: entry %zu '%s': a percentage is 1%% to 100%%", count + 1,
                              shown);
        if (!sp.percent && sp.value < 1)
            return kf_err_set(err, KF_EINVAL,
                              "--stages: entry %zu '%s': a stage has at least one node", count + 1,
                              shown);
        out[count++] = sp;
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    *n = count;
    return 0;
}

int coord_stages_split(const struct coord_stage_spec *specs, size_t nspecs, size_t total,
                       size_t *sizes, size_t max)
{
    size_t left = total, ns = 0, i = 0;

    while (left > 0) {
        const struct coord_stage_spec *sp = &specs[i < nspecs ? i : nspecs - 1];
        size_t want =
            sp->percent ? (size_t)((unsigned long long)total * sp->value / 100) : sp->value;
        if (want < 1)
            want = 1;
        if (want > left)
            want = left;
        if (ns == max)
            return KF_EINVAL;
        sizes[ns++] = want;
        left -= want;
        i++;
    }
    return (int)ns;
}

int coord_budget_parse(const char *s, struct coord_budget *b, struct kf_err *err)
{
    memset(b, 0, sizeof(*b));
    if (s == NULL || parse_amount(s, strlen(s), &b->value, &b->percent) < 0 ||
        (b->percent && b->value > 100))
        return kf_err_set(err, KF_EINVAL,
                          "expected a number of nodes (2) or a percentage (5%%), got '%s'",
                          s ? s : "");
    b->set = 1;
    return 0;
}

size_t coord_budget_allowed(const struct coord_budget *b, size_t n)
{
    if (!b->set)
        return (size_t)-1;
    if (b->percent)
        return (size_t)((unsigned long long)n * b->value / 100);
    return b->value;
}

const char *coord_budget_str(const struct coord_budget *b, char *out, size_t outsz)
{
    if (!b->set)
        snprintf(out, outsz, "unlimited");
    else
        snprintf(out, outsz, "%u%s", b->value, b->percent ? "%" : "");
    return out;
}
