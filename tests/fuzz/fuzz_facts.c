/* Fuzz target: inv_facts_parse() on arbitrary bytes, with the nonce the
 * fixtures and seeds use, so mutations of real probe output keep reaching
 * the section parsers. On success the facts must satisfy what the header
 * promises (valid running kernel, bounded lists) and convert to JSON. */
#include "inventory.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_NONCE "5f0c9a3e71d24b86"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct inv_facts f;
    struct kf_err err;
    json_t *j;
    size_t i, running = 0;

    if (inv_facts_parse((const char *)data, size, FUZZ_NONCE, &f, &err) != 0) {
        /* Messages quote node data: they must be display-safe. */
        for (i = 0; err.msg[i] != '\0'; i++)
            if ((unsigned char)err.msg[i] < 0x20 || (unsigned char)err.msg[i] >= 0x7f)
                abort();
        return 0;
    }
    if (!kf_krel_valid(f.kernel) || f.nkernels == 0 || f.nkernels > INV_FACTS_MAX_KERNELS ||
        f.ngpus > INV_FACTS_MAX_GPUS)
        abort();
    for (i = 0; i < f.nkernels; i++) {
        if (!kf_krel_valid(f.kernels[i].release))
            abort();
        running += f.kernels[i].running;
    }
    if (running != 1)
        abort();
    if ((f.loaded_driver[0] && !kf_driver_version_valid(f.loaded_driver)) ||
        (f.userspace_driver[0] && !kf_driver_version_valid(f.userspace_driver)) ||
        (f.kfleet_driver[0] && !kf_driver_version_valid(f.kfleet_driver)) ||
        (f.kfleet_release[0] && !kf_krel_valid(f.kfleet_release)))
        abort();
    j = inv_facts_to_json(&f);
    if (j == NULL)
        abort();
    json_decref(j);
    return 0;
}
