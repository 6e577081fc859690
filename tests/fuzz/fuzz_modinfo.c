/* Fuzz target: build_modinfo_parse() and build_sig_trailer_parse() on
 * arbitrary bytes, i.e. on whatever a build container left in a .ko. On
 * success the result must satisfy what builder.h promises (terminated,
 * printable fields, a valid name, ELF class 32 or 64, a trailer inside the
 * input); on failure the message must be display-safe. Seeds are made by
 * tests/fixtures/ko/make-fuzz-seeds.py from the .ko fixtures. */
#include "builder.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_msg(const struct kf_err *err)
{
    size_t i;

    for (i = 0; err->msg[i] != '\0'; i++)
        if ((unsigned char)err->msg[i] < 0x20 || (unsigned char)err->msg[i] >= 0x7f)
            abort();
}

static void check_field(const char *s, size_t size)
{
    const char *end = memchr(s, '\0', size);
    const char *p;

    if (end == NULL)
        abort();
    for (p = s; p < end; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct build_modinfo mi;
    struct kf_err err;
    size_t module_len, sig_len;

    if (build_modinfo_parse(data, size, "fuzz.ko", &mi, &err) == 0) {
        check_field(mi.name, sizeof(mi.name));
        check_field(mi.version, sizeof(mi.version));
        check_field(mi.vermagic, sizeof(mi.vermagic));
        check_field(mi.srcversion, sizeof(mi.srcversion));
        check_field(mi.license, sizeof(mi.license));
        check_field(mi.depends, sizeof(mi.depends));
        if (mi.name[0] != '\0' && !kf_modname_valid(mi.name))
            abort();
        if (mi.elf_class != 32 && mi.elf_class != 64)
            abort();
        if (mi.depends[0] != '\0' && !mi.has_depends)
            abort();
        (void)build_vermagic_matches(mi.vermagic, "6.1.0-41-amd64");
    } else {
        check_msg(&err);
        if (mi.vermagic[0] != '\0' || mi.name[0] != '\0')
            abort(); /* nothing half-filled on failure */
    }
    if (build_sig_trailer_parse(data, size, "fuzz.ko", &module_len, &sig_len, &err) == 0) {
        if (sig_len == 0 || module_len + sig_len + 12 + BUILD_SIG_MARKER_LEN != size)
            abort();
    } else {
        check_msg(&err);
    }
    return 0;
}
