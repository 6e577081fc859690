/* kfleet.yml: build profiles, the container runtime, builder workers, the
 * artifact store and signing. Read with the inventory's YAML rules
 * (inv_yaml_load_file), then checked key by key: an unknown key, a wrong
 * type or a bad value is an error naming the file and the key path
 * ("kfleet.yml: profiles.nvidia.flavor: expected open or proprietary, got
 * 'closed'"). Every key and its default is documented in
 * contrib/kfleet.yml. */
#include "coordinator.h"

#include <stdlib.h>
#include <string.h>

static const char *const nvidia_modules[] = {"nvidia", "nvidia-modeset", "nvidia-drm",
                                             "nvidia-uvm"};

struct cfg_ctx {
    const char *file;
    struct kf_err *err;
};

static int bad(struct cfg_ctx *x, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int bad(struct cfg_ctx *x, const char *path, const char *fmt, ...)
{
    char msg[400];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return kf_err_set(x->err, KF_ECONFIG, "%s: %s: %s", x->file, path, msg);
}

/* Only the listed keys may appear in obj. */
static int only_keys(struct cfg_ctx *x, const char *path, json_t *obj, const char *const *keys)
{
    const char *k;
    json_t *v;
    char buf[300];
    size_t i;

    json_object_foreach(obj, k, v)
    {
        int known = 0;
        for (i = 0; keys[i] != NULL; i++)
            if (strcmp(k, keys[i]) == 0)
                known = 1;
        if (!known) {
            struct buf list;
            buf_init(&list, 0);
            for (i = 0; keys[i] != NULL; i++)
                buf_printf(&list, "%s%s", i ? ", " : "", keys[i]);
            snprintf(buf, sizeof(buf), "%s%s%s", path, path[0] ? "." : "",
                     kf_escape_to((char[128]){0}, 128, k, strlen(k)));
            bad(x, buf, "unknown key (known: %s)", buf_cstr(&list));
            buf_release(&list);
            return KF_ECONFIG;
        }
    }
    return 0;
}

static int get_string(struct cfg_ctx *x, json_t *obj, const char *path, const char *key, char **out)
{
    json_t *v = json_object_get(obj, key);
    char p[300];

    if (v == NULL || json_is_null(v))
        return 0;
    snprintf(p, sizeof(p), "%s.%s", path, key);
    if (!json_is_string(v))
        return bad(x, p, "expected a string");
    free(*out);
    *out = strdup(json_string_value(v));
    return *out ? 0 : kf_err_set(x->err, KF_ENOMEM, "out of memory");
}

static int get_uint(struct cfg_ctx *x, json_t *obj, const char *path, const char *key, unsigned min,
                    unsigned max, unsigned *out)
{
    json_t *v = json_object_get(obj, key);
    char p[300];

    if (v == NULL || json_is_null(v))
        return 0;
    snprintf(p, sizeof(p), "%s.%s", path, key);
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return bad(x, p, "expected a whole number from %u to %u", min, max);
    *out = (unsigned)json_integer_value(v);
    return 0;
}

static int get_bool(struct cfg_ctx *x, json_t *obj, const char *path, const char *key, int *out)
{
    json_t *v = json_object_get(obj, key);
    char p[300];

    if (v == NULL || json_is_null(v))
        return 0;
    snprintf(p, sizeof(p), "%s.%s", path, key);
    if (!json_is_boolean(v))
        return bad(x, p, "expected true or false");
    *out = json_is_true(v);
    return 0;
}

/* A list of strings, each checked by valid() when given. */
static int get_strv(struct cfg_ctx *x, json_t *obj, const char *path, const char *key,
                    int (*valid)(const char *), const char *what, char ***out, size_t *n)
{
    json_t *v = json_object_get(obj, key), *item;
    char p[300];
    size_t i;

    if (v == NULL || json_is_null(v))
        return 0;
    snprintf(p, sizeof(p), "%s.%s", path, key);
    if (!json_is_array(v))
        return bad(x, p, "expected a list");
    kf_strv_free(*out, *n);
    *out = calloc(json_array_size(v) + 1, sizeof(char *));
    *n = 0;
    if (*out == NULL)
        return kf_err_set(x->err, KF_ENOMEM, "out of memory");
    json_array_foreach(v, i, item)
    {
        if (!json_is_string(item))
            return bad(x, p, "item %zu: expected a string", i + 1);
        if (valid != NULL && !valid(json_string_value(item)))
            return bad(x, p, "item %zu: '%s' is not %s", i + 1,
                       kf_escape_to((char[128]){0}, 128, json_string_value(item),
                                    strlen(json_string_value(item))),
                       what);
        (*out)[i] = strdup(json_string_value(item));
        if ((*out)[i] == NULL)
            return kf_err_set(x->err, KF_ENOMEM, "out of memory");
        (*n)++;
    }
    return 0;
}

static int kernel_bound_valid(const char *s)
{
    size_t n = strlen(s);

    return n > 0 && n < 32 && strspn(s, "0123456789.") == n && s[0] != '.' && s[n - 1] != '.';
}

static int arch_valid(const char *s)
{
    size_t n = strlen(s);

    return n > 0 && n < 32 &&
           strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") == n;
}

static int make_var_name_valid(const char *s)
{
    size_t n = strlen(s);

    return n > 0 && n < 64 && !(s[0] >= '0' && s[0] <= '9') &&
           strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") == n;
}

static void profile_release(struct coord_profile *p)
{
    size_t i;

    free(p->name);
    free(p->source);
    free(p->kernel_min);
    free(p->kernel_max);
    free(p->headers_debian);
    free(p->headers_rhel);
    kf_strv_free(p->modules, p->nmodules);
    kf_strv_free(p->arches, p->narches);
    for (i = 0; i < p->nmake_vars; i++) {
        free(p->make_vars[i].name);
        free(p->make_vars[i].value);
    }
    free(p->make_vars);
}

static int parse_profile(struct cfg_ctx *x, const char *name, json_t *v, struct coord_profile *p)
{
    static const char *const keys[] = {"type",      "source",         "flavor",          "modules",
                                       "peermem",   "kernels",        "headers",         "arch",
                                       "make_vars", "stub_threshold", "userspace_check", NULL};
    static const char *const kkeys[] = {"min", "max", NULL};
    static const char *const hkeys[] = {"debian", "rhel", NULL};
    char path[200], *type = NULL, *flavor = NULL;
    json_t *k, *mv;
    int rc;

    memset(p, 0, sizeof(*p));
    snprintf(path, sizeof(path), "profiles.%s", name);
    p->name = strdup(name);
    if (p->name == NULL)
        return kf_err_set(x->err, KF_ENOMEM, "out of memory");
    if (!kf_modname_valid(name))
        return bad(x, path, "a profile name is letters, digits, '-' and '_'");
    if (!json_is_object(v))
        return bad(x, path, "expected a mapping");
    if ((rc = only_keys(x, path, v, keys)) < 0 || (rc = get_string(x, v, path, "type", &type)) < 0)
        return rc;
    if (type == NULL) {
        rc = bad(x, path, "'type' is required: nvidia-run, nvidia-open or kmod");
        goto out;
    }
    if (strcmp(type, "nvidia-run") == 0) {
        p->type = PROFILE_NVIDIA_RUN;
    } else if (strcmp(type, "nvidia-open") == 0) {
        p->type = PROFILE_NVIDIA_OPEN;
    } else if (strcmp(type, "kmod") == 0) {
        p->type = PROFILE_KMOD;
    } else {
        rc = bad(x, path, "type: expected nvidia-run, nvidia-open or kmod, got '%s'",
                 kf_escape_to((char[128]){0}, 128, type, strlen(type)));
        goto out;
    }
    p->open = 1; /* NVIDIA's recommendation for Turing and newer */
    /* Only NVIDIA's modules pair with NVIDIA's userspace driver. */
    p->userspace_check = p->type != PROFILE_KMOD;
    if ((rc = get_string(x, v, path, "flavor", &flavor)) < 0)
        goto out;
    if (flavor != NULL) {
        if (p->type != PROFILE_NVIDIA_RUN) {
            rc = bad(x, path, "flavor: only an nvidia-run profile has a flavor");
            goto out;
        }
        if (strcmp(flavor, "open") != 0 && strcmp(flavor, "proprietary") != 0) {
            rc = bad(x, path, "flavor: expected open or proprietary, got '%s'",
                     kf_escape_to((char[128]){0}, 128, flavor, strlen(flavor)));
            goto out;
        }
        p->open = strcmp(flavor, "open") == 0;
    }
    if ((rc = get_string(x, v, path, "source", &p->source)) < 0 ||
        (rc = get_bool(x, v, path, "peermem", &p->peermem)) < 0 ||
        (rc = get_uint(x, v, path, "stub_threshold", 1, 1u << 30, &p->stub_threshold)) < 0 ||
        (rc = get_bool(x, v, path, "userspace_check", &p->userspace_check)) < 0 ||
        (rc = get_strv(x, v, path, "modules", kf_modname_valid, "a module name", &p->modules,
                       &p->nmodules)) < 0 ||
        (rc = get_strv(x, v, path, "arch", arch_valid, "an architecture like x86_64", &p->arches,
                       &p->narches)) < 0)
        goto out;
    if (p->nmodules == 0 && p->type != PROFILE_KMOD) {
        size_t i, n = sizeof(nvidia_modules) / sizeof(nvidia_modules[0]);
        p->modules = calloc(n + 2, sizeof(char *));
        if (p->modules == NULL) {
            rc = kf_err_set(x->err, KF_ENOMEM, "out of memory");
            goto out;
        }
        for (i = 0; i < n; i++)
            p->modules[p->nmodules++] = strdup(nvidia_modules[i]);
        if (p->peermem)
            p->modules[p->nmodules++] = strdup("nvidia-peermem");
        for (i = 0; i < p->nmodules; i++)
            if (p->modules[i] == NULL) {
                rc = kf_err_set(x->err, KF_ENOMEM, "out of memory");
                goto out;
            }
    }
    /* A kmod profile without modules takes a dkms.conf's BUILT_MODULE_NAME
     * list, or every module its build makes. */
    k = json_object_get(v, "kernels");
    if (k != NULL && !json_is_null(k)) {
        char kp[240];
        snprintf(kp, sizeof(kp), "%s.kernels", path);
        if (!json_is_object(k)) {
            rc = bad(x, kp, "expected a mapping with min and/or max");
            goto out;
        }
        if ((rc = only_keys(x, kp, k, kkeys)) < 0)
            goto out;
        /* Versions written as numbers (min: 5.15) arrive as reals: ask for
         * quotes rather than guess what 6.10 meant. */
        if ((json_object_get(k, "min") && !json_is_string(json_object_get(k, "min"))) ||
            (json_object_get(k, "max") && !json_is_string(json_object_get(k, "max")))) {
            rc = bad(x, kp, "write versions in quotes, like min: \"5.15\"");
            goto out;
        }
        if ((rc = get_string(x, k, kp, "min", &p->kernel_min)) < 0 ||
            (rc = get_string(x, k, kp, "max", &p->kernel_max)) < 0)
            goto out;
        if ((p->kernel_min && !kernel_bound_valid(p->kernel_min)) ||
            (p->kernel_max && !kernel_bound_valid(p->kernel_max))) {
            rc = bad(x, kp, "a bound is a version like \"5.15\" or \"6.12.38\"");
            goto out;
        }
    }
    k = json_object_get(v, "headers");
    if (k != NULL && !json_is_null(k)) {
        char hp[240];
        snprintf(hp, sizeof(hp), "%s.headers", path);
        if (!json_is_object(k)) {
            rc = bad(x, hp, "expected a mapping of distro family to package pattern");
            goto out;
        }
        if ((rc = only_keys(x, hp, k, hkeys)) < 0 ||
            (rc = get_string(x, k, hp, "debian", &p->headers_debian)) < 0 ||
            (rc = get_string(x, k, hp, "rhel", &p->headers_rhel)) < 0)
            goto out;
    }
    if ((p->headers_debian == NULL &&
         (p->headers_debian = strdup("linux-headers-{kernel}")) == NULL) ||
        (p->headers_rhel == NULL && (p->headers_rhel = strdup("kernel-devel-{kernel}")) == NULL)) {
        rc = kf_err_set(x->err, KF_ENOMEM, "out of memory");
        goto out;
    }
    if (strstr(p->headers_debian, "{kernel}") == NULL ||
        strstr(p->headers_rhel, "{kernel}") == NULL) {
        rc = bad(x, path, "headers: each pattern must contain {kernel}");
        goto out;
    }
    mv = json_object_get(v, "make_vars");
    if (mv != NULL && !json_is_null(mv)) {
        const char *mk;
        json_t *mval;
        char mp[240];
        snprintf(mp, sizeof(mp), "%s.make_vars", path);
        if (!json_is_object(mv)) {
            rc = bad(x, mp, "expected a mapping of NAME: value");
            goto out;
        }
        p->make_vars = calloc(json_object_size(mv) + 1, sizeof(*p->make_vars));
        if (p->make_vars == NULL) {
            rc = kf_err_set(x->err, KF_ENOMEM, "out of memory");
            goto out;
        }
        json_object_foreach(mv, mk, mval)
        {
            if (!make_var_name_valid(mk)) {
                rc = bad(x, mp, "'%s' is not a make variable name",
                         kf_escape_to((char[128]){0}, 128, mk, strlen(mk)));
                goto out;
            }
            if (!json_is_string(mval) && !json_is_integer(mval)) {
                rc = bad(x, mp, "%s: expected a string or a number", mk);
                goto out;
            }
            p->make_vars[p->nmake_vars].name = strdup(mk);
            p->make_vars[p->nmake_vars].value =
                json_is_string(mval) ? strdup(json_string_value(mval)) : NULL;
            if (json_is_integer(mval)) {
                char num[32];
                snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(mval));
                p->make_vars[p->nmake_vars].value = strdup(num);
            }
            p->nmake_vars++;
            if (p->make_vars[p->nmake_vars - 1].name == NULL ||
                p->make_vars[p->nmake_vars - 1].value == NULL) {
                rc = kf_err_set(x->err, KF_ENOMEM, "out of memory");
                goto out;
            }
        }
    }
    rc = 0;
out:
    free(type);
    free(flavor);
    return rc;
}

void coord_config_init(struct coord_config *c)
{
    memset(c, 0, sizeof(*c));
    c->build_timeout = 3600;
    c->build_retries = 2;
}

void coord_config_release(struct coord_config *c)
{
    size_t i;

    if (c == NULL)
        return;
    for (i = 0; i < c->nprofiles; i++)
        profile_release(&c->profiles[i]);
    free(c->profiles);
    for (i = 0; i < c->nbuilders; i++) {
        free(c->builders[i].name);
        free(c->builders[i].host);
        free(c->builders[i].cache);
    }
    free(c->builders);
    free(c->deploy.smi);
    free(c->deploy.verify);
    free(c->deploy.drain.command);
    free(c->deploy.undrain.command);
    free(c->path);
    free(c->store);
    free(c->runtime);
    kf_strv_free(c->run_args, c->nrun_args);
    free(c->sign_key);
    free(c->sign_cert);
    free(c->sign_hash);
    coord_config_init(c);
}

static int parse_hook(struct cfg_ctx *x, json_t *v, const char *path, struct coord_hook_config *h)
{
    static const char *const keys[] = {"command", "on", "timeout", NULL};
    char *on = NULL;
    int rc;

    if (v == NULL || json_is_null(v))
        return 0;
    if (json_is_string(v)) {
        h->command = strdup(json_string_value(v));
        return h->command ? 0 : kf_err_set(x->err, KF_ENOMEM, "out of memory");
    }
    if (!json_is_object(v))
        return bad(x, path, "expected a command, or a mapping with command, on and timeout");
    if ((rc = only_keys(x, path, v, keys)) < 0 ||
        (rc = get_string(x, v, path, "command", &h->command)) < 0 ||
        (rc = get_string(x, v, path, "on", &on)) < 0 ||
        (rc = get_uint(x, v, path, "timeout", 1, 24 * 3600, &h->timeout)) < 0)
        goto out;
    if (h->command == NULL || h->command[0] == '\0') {
        rc = bad(x, path, "command: required (use {host} for the node's inventory name)");
        goto out;
    }
    if (on != NULL && strcmp(on, "node") != 0 && strcmp(on, "control") != 0) {
        rc = bad(x, path, "on: expected control (the control host) or node, got '%s'",
                 kf_escape_to((char[128]){0}, 128, on, strlen(on)));
        goto out;
    }
    h->on_node = on != NULL && strcmp(on, "node") == 0;
out:
    free(on);
    return rc;
}

/* deploy: node-side verification, drain hooks, transfers. */
static int parse_deploy(struct cfg_ctx *x, json_t *v, struct coord_deploy_config *d)
{
    static const char *const keys[] = {
        "smi", "verify", "drain", "undrain", "transfer_forks", "transfer_timeout", NULL};
    int rc;

    d->transfer_forks = 16;
    d->transfer_timeout = 600;
    if (v == NULL || json_is_null(v))
        goto defaults;
    if (!json_is_object(v))
        return bad(x, "deploy", "expected a mapping");
    if ((rc = only_keys(x, "deploy", v, keys)) < 0 ||
        (rc = get_string(x, v, "deploy", "smi", &d->smi)) < 0 ||
        (rc = get_string(x, v, "deploy", "verify", &d->verify)) < 0 ||
        (rc = parse_hook(x, json_object_get(v, "drain"), "deploy.drain", &d->drain)) < 0 ||
        (rc = parse_hook(x, json_object_get(v, "undrain"), "deploy.undrain", &d->undrain)) < 0 ||
        (rc = get_uint(x, v, "deploy", "transfer_forks", 1, 10000, &d->transfer_forks)) < 0 ||
        (rc = get_uint(x, v, "deploy", "transfer_timeout", 1, 24 * 3600, &d->transfer_timeout)) < 0)
        return rc;
    if (d->smi != NULL && strcmp(d->smi, "auto") != 0 && strcmp(d->smi, "require") != 0 &&
        strcmp(d->smi, "skip") != 0)
        return bad(x, "deploy.smi", "expected auto, require or skip, got '%s'",
                   kf_escape_to((char[128]){0}, 128, d->smi, strlen(d->smi)));
defaults:
    if (d->smi == NULL && (d->smi = strdup("auto")) == NULL)
        return kf_err_set(x->err, KF_ENOMEM, "out of memory");
    if (d->drain.timeout == 0)
        d->drain.timeout = 600;
    if (d->undrain.timeout == 0)
        d->undrain.timeout = 600;
    return 0;
}

static int parse_root(struct cfg_ctx *x, json_t *root, struct coord_config *c)
{
    static const char *const keys[] = {"store",   "container", "builders", "build",
                                       "signing", "profiles",  "deploy",   NULL};
    static const char *const bdkeys[] = {"timeout", "retries", NULL};
    static const char *const ckeys[] = {"runtime", "run_args", NULL};
    static const char *const skeys[] = {"key", "cert", "hash", NULL};
    static const char *const bkeys[] = {"name", "host", "slots", "jobs", "cache", NULL};
    json_t *v, *item;
    const char *name;
    size_t i;
    int rc;

    if (json_is_null(root))
        return 0; /* an empty file: every default */
    if (!json_is_object(root))
        return bad(x, "(top)", "expected a mapping of settings");
    if ((rc = only_keys(x, "", root, keys)) < 0 ||
        (rc = get_string(x, root, "(top)", "store", &c->store)) < 0)
        return rc;

    v = json_object_get(root, "container");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_object(v))
            return bad(x, "container", "expected a mapping");
        if ((rc = only_keys(x, "container", v, ckeys)) < 0 ||
            (rc = get_string(x, v, "container", "runtime", &c->runtime)) < 0 ||
            (rc = get_strv(x, v, "container", "run_args", NULL, NULL, &c->run_args,
                           &c->nrun_args)) < 0)
            return rc;
    }

    v = json_object_get(root, "build");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_object(v))
            return bad(x, "build", "expected a mapping with timeout and retries");
        if ((rc = only_keys(x, "build", v, bdkeys)) < 0 ||
            (rc = get_uint(x, v, "build", "timeout", 60, 7 * 24 * 3600, &c->build_timeout)) < 0 ||
            (rc = get_uint(x, v, "build", "retries", 0, 10, &c->build_retries)) < 0)
            return rc;
    }

    v = json_object_get(root, "signing");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_object(v))
            return bad(x, "signing", "expected a mapping with key and cert");
        if ((rc = only_keys(x, "signing", v, skeys)) < 0 ||
            (rc = get_string(x, v, "signing", "key", &c->sign_key)) < 0 ||
            (rc = get_string(x, v, "signing", "cert", &c->sign_cert)) < 0 ||
            (rc = get_string(x, v, "signing", "hash", &c->sign_hash)) < 0)
            return rc;
        if ((c->sign_key == NULL) != (c->sign_cert == NULL))
            return bad(x, "signing", "give both key and cert");
        if (c->sign_hash && strcmp(c->sign_hash, "sha256") && strcmp(c->sign_hash, "sha384") &&
            strcmp(c->sign_hash, "sha512"))
            return bad(x, "signing.hash", "expected sha256, sha384 or sha512");
    }

    v = json_object_get(root, "builders");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_array(v))
            return bad(x, "builders", "expected a list");
        c->builders = calloc(json_array_size(v) + 1, sizeof(*c->builders));
        if (c->builders == NULL)
            return kf_err_set(x->err, KF_ENOMEM, "out of memory");
        json_array_foreach(v, i, item)
        {
            struct coord_builder *b = &c->builders[c->nbuilders++];
            char bp[64];
            snprintf(bp, sizeof(bp), "builders[%zu]", i + 1);
            b->slots = 1;
            if (!json_is_object(item))
                return bad(x, bp, "expected a mapping with name, host and slots");
            if ((rc = only_keys(x, bp, item, bkeys)) < 0 ||
                (rc = get_string(x, item, bp, "name", &b->name)) < 0 ||
                (rc = get_string(x, item, bp, "host", &b->host)) < 0 ||
                (rc = get_uint(x, item, bp, "slots", 1, 256, &b->slots)) < 0 ||
                (rc = get_uint(x, item, bp, "jobs", 0, 1024, &b->jobs)) < 0 ||
                (rc = get_string(x, item, bp, "cache", &b->cache)) < 0)
                return rc;
            if (b->cache != NULL && b->cache[0] != '/')
                return bad(x, bp, "cache: expected an absolute path on the builder");
            if (b->host == NULL && (b->host = strdup("local")) == NULL)
                return kf_err_set(x->err, KF_ENOMEM, "out of memory");
            if (b->name == NULL && (b->name = strdup(b->host)) == NULL)
                return kf_err_set(x->err, KF_ENOMEM, "out of memory");
        }
    }

    if ((rc = parse_deploy(x, json_object_get(root, "deploy"), &c->deploy)) < 0)
        return rc;

    v = json_object_get(root, "profiles");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_object(v))
            return bad(x, "profiles", "expected a mapping of profile name to settings");
        c->profiles = calloc(json_object_size(v) + 1, sizeof(*c->profiles));
        if (c->profiles == NULL)
            return kf_err_set(x->err, KF_ENOMEM, "out of memory");
        json_object_foreach(v, name, item)
        {
            rc = parse_profile(x, name, item, &c->profiles[c->nprofiles]);
            c->nprofiles++; /* released even when half parsed */
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

int coord_config_load(struct coord_config *c, const char *path, const char *state_dir,
                      struct kf_err *err)
{
    struct cfg_ctx x;
    json_t *root = NULL;
    char show[256];
    int rc;

    coord_config_init(c);
    kf_escape_to(show, sizeof(show), path, strlen(path));
    x.file = show;
    x.err = err;
    rc = inv_yaml_load_file(path, &root, err);
    if (rc == KF_ENOENT) {
        /* No file is not an error: the defaults describe a local podman
         * builder and the built-in NVIDIA profiles. */
        kf_err_clear(err);
        rc = 0;
    } else if (rc == 0) {
        rc = parse_root(&x, root, c);
    }
    json_decref(root);
    if (rc == 0 && (c->path = strdup(path)) == NULL)
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
    if (rc == 0 && c->store == NULL) {
        size_t n = strlen(state_dir) + 8;
        c->store = malloc(n);
        if (c->store != NULL)
            snprintf(c->store, n, "%s/store", state_dir);
        else
            rc = kf_err_set(err, KF_ENOMEM, "out of memory");
    }
    if (rc == 0 && c->nprofiles == 0) {
        /* Built in: the NVIDIA driver's open kernel modules from a .run
         * package (the source is given when building). */
        json_t *nv = json_pack("{s:s}", "type", "nvidia-run");
        c->profiles = calloc(1, sizeof(*c->profiles));
        if (nv == NULL || c->profiles == NULL)
            rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        else {
            rc = parse_profile(&x, "nvidia", nv, &c->profiles[0]);
            c->nprofiles = 1; /* released even when half parsed */
        }
        json_decref(nv);
    }
    if (rc == 0 && c->deploy.smi == NULL)
        rc = parse_deploy(&x, NULL, &c->deploy);
    if (rc == 0 && c->runtime == NULL && (c->runtime = strdup("podman")) == NULL)
        rc = kf_err_set(err, KF_ENOMEM, "out of memory");
    if (rc == 0 && c->nbuilders == 0) {
        c->builders = calloc(1, sizeof(*c->builders));
        if (c->builders == NULL || (c->builders[0].name = strdup("local")) == NULL ||
            (c->builders[0].host = strdup("local")) == NULL)
            rc = kf_err_set(err, KF_ENOMEM, "out of memory");
        else
            c->builders[0].slots = 1, c->nbuilders = 1;
    }
    if (rc < 0)
        coord_config_release(c);
    return rc;
}

const struct coord_profile *coord_config_profile(const struct coord_config *c, const char *name)
{
    size_t i;

    for (i = 0; i < c->nprofiles; i++)
        if (strcmp(c->profiles[i].name, name) == 0)
            return &c->profiles[i];
    return NULL;
}

const struct coord_profile *coord_config_select_profile(const struct coord_config *c,
                                                        const char *name, struct kf_err *err)
{
    const struct coord_profile *p = coord_config_profile(c, name ? name : "nvidia");
    struct buf names;
    size_t i;

    if (p == NULL && name == NULL && c->nprofiles == 1)
        p = &c->profiles[0];
    if (p != NULL)
        return p;
    buf_init(&names, 0);
    for (i = 0; i < c->nprofiles; i++)
        buf_printf(&names, "%s%s", i ? ", " : "", c->profiles[i].name);
    kf_err_set(err, KF_ECONFIG, "%s: no profile '%s' (profiles: %s)%s", c->path ? c->path : "",
               name ? name : "nvidia", names.len ? buf_cstr(&names) : "none",
               name ? "" : "; name one with --profile");
    buf_release(&names);
    return NULL;
}
