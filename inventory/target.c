/* From an inventory host to an SSH target, with the connection settings
 * kfleet does not support refused in words an operator can act on. */
#include "inventory.h"

#include <string.h>

int inv_host_ssh_target(const struct inv_host *h, struct ssh_target *t, char *why, size_t n)
{
    memset(t, 0, sizeof(*t));
    if (h->connection != NULL && strcmp(h->connection, "ssh") != 0 &&
        strcmp(h->connection, "paramiko") != 0) {
        snprintf(why, n, "ansible_connection '%s' is not supported: kfleet reaches nodes over ssh",
                 h->connection);
        return KF_EUNSUPPORTED;
    }
    if (h->proxy_jump != NULL) {
        snprintf(why, n,
                 "ansible_ssh_common_args asks for ProxyJump=%s; kfleet does not support jump "
                 "hosts yet: reach the node directly",
                 h->proxy_jump);
        return KF_EUNSUPPORTED;
    }
    t->name = h->name;
    t->dest = h->address;
    t->port = h->port;
    t->user = h->user;
    t->key_file = h->key_file;
    return 0;
}
