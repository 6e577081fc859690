/* kfleet hosts: what a pattern selects, with each host's connection settings
 * and groups, so an operator can check an inventory before a run. */
#include "coordinator.h"

#include <stdlib.h>
#include <string.h>

int coord_load_selection(const struct coord_opts *o, struct inventory *inv, size_t **idx, size_t *n)
{
    struct kf_err err;

    kf_err_clear(&err);
    inv_init(inv);
    *idx = NULL;
    *n = 0;
    if (inv_load_file(inv, o->inventory, &err) < 0) {
        fprintf(stderr, "kfleet: %s\n", kf_err_msg(&err));
        return KF_EXIT_USAGE;
    }
    if (inv_select(inv, o->limit, idx, n, &err) < 0) {
        fprintf(stderr, "kfleet: --limit '%s': %s\n", o->limit ? o->limit : "", kf_err_msg(&err));
        inv_release(inv);
        return KF_EXIT_USAGE;
    }
    if (*n == 0) {
        fprintf(stderr, "kfleet: no host in %s matches %s%s%s\n", o->inventory,
                o->limit ? "the pattern '" : "", o->limit ? o->limit : "(the inventory is empty)",
                o->limit ? "'" : "");
        free(*idx);
        *idx = NULL;
        inv_release(inv);
        return KF_EXIT_USAGE;
    }
    return 0;
}

static json_t *host_json(const struct inv_host *h)
{
    json_t *j = json_object(), *groups = json_array();
    size_t i;

    for (i = 0; i < h->ngroups; i++)
        json_array_append_new(groups, json_string(h->groups[i]));
    json_object_set_new(j, "name", json_string(h->name));
    json_object_set_new(j, "address", h->address ? json_string(h->address) : json_null());
    json_object_set_new(j, "port", h->port ? json_integer(h->port) : json_null());
    json_object_set_new(j, "user", h->user ? json_string(h->user) : json_null());
    json_object_set_new(j, "key_file", h->key_file ? json_string(h->key_file) : json_null());
    json_object_set_new(j, "become", json_boolean(h->become));
    json_object_set_new(j, "groups", groups);
    json_object_set(j, "vars", h->vars);
    return j;
}

int cmd_hosts(struct coord_opts *o)
{
    struct inventory inv;
    size_t *idx = NULL, n = 0, i, j;
    int rc;

    rc = coord_load_selection(o, &inv, &idx, &n);
    if (rc != 0)
        return rc;
    if (o->json) {
        json_t *arr = json_array();
        for (i = 0; i < n; i++)
            json_array_append_new(arr, host_json(&inv.hosts[idx[i]]));
        json_dumpf(arr, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(arr);
    } else {
        printf("%-24s %-22s %-10s %-6s %s\n", "HOST", "ADDRESS", "USER", "BECOME", "GROUPS");
        for (i = 0; i < n; i++) {
            const struct inv_host *h = &inv.hosts[idx[i]];
            char addr[300];
            if (h->port)
                snprintf(addr, sizeof(addr), "%s:%d", h->address ? h->address : h->name, h->port);
            else
                snprintf(addr, sizeof(addr), "%s", h->address ? h->address : h->name);
            printf("%-24s %-22s %-10s %-6s ", h->name, addr, h->user ? h->user : "-",
                   h->become ? "yes" : "no");
            for (j = 0; j < h->ngroups; j++)
                printf("%s%s", j ? "," : "", h->groups[j]);
            putchar('\n');
        }
        printf("%zu host%s\n", n, n == 1 ? "" : "s");
    }
    free(idx);
    inv_release(&inv);
    return KF_EXIT_OK;
}
