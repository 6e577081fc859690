/* Fuzz target: build_dkms_parse() on arbitrary bytes. A failure must come
 * with a display-safe message that names the input; a success must satisfy
 * what dkms.h promises (valid identity and module names, locations without
 * "..", patterns that compile), and build_dkms_applies() must then answer
 * without error. Replayed under ASan/UBSan, so leaks and overruns fail. */
#include "dkms.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int has_dotdot(const char *s)
{
    const char *p = s;

    for (;;) {
        if (p[0] == '.' && p[1] == '.' && (p[2] == '/' || p[2] == '\0'))
            return 1;
        p = strchr(p, '/');
        if (p == NULL)
            return 0;
        p++;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct build_dkms d;
    struct kf_err err;
    char why[256];
    size_t i;
    int rc;

    if (build_dkms_parse((const char *)data, size, "fuzz.conf", &d, &err) != 0) {
        if (strncmp(err.msg, "fuzz.conf", 9) != 0)
            abort();
        for (i = 0; err.msg[i] != '\0'; i++)
            if ((unsigned char)err.msg[i] < 0x20 || (unsigned char)err.msg[i] >= 0x7f)
                abort();
        if (d.package_name != NULL || d.modules != NULL || d.nmodules != 0)
            abort();
        return 0;
    }
    if (d.package_name == NULL || d.package_version == NULL || d.nmodules == 0 ||
        d.nmodules > BUILD_DKMS_MODULES_MAX || d.autoinstall < -1 || d.autoinstall > 1)
        abort();
    if (strlen(d.package_name) > BUILD_DKMS_NAME_MAX ||
        strlen(d.package_version) > BUILD_DKMS_NAME_MAX || strchr(d.package_version, '/') != NULL ||
        d.package_version[0] == '.')
        abort();
    for (i = 0; i < d.nmodules; i++) {
        const struct build_dkms_module *m = &d.modules[i];

        if (!kf_modname_valid(m->name) || (m->dest_name[0] && !kf_modname_valid(m->dest_name)))
            abort();
        if (has_dotdot(m->built_location) || has_dotdot(m->dest_location))
            abort();
    }
    rc = build_dkms_applies(&d, "6.1.0-47-amd64", "x86_64", why, sizeof(why), &err);
    if (rc != 0 && rc != 1)
        abort();
    build_dkms_release(&d);
    return 0;
}
