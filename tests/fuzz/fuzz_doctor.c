/* Fuzz target: deploy_doctor_analyze() on arbitrary bytes, with the nonce
 * the fixtures and seeds use (so mutations of real probe output reach the
 * doctor's section parsers) and a context with a driver and a store. On
 * failure the message must be display-safe; on success every finding must
 * be printable ASCII, one per code, and convert to JSON. */
#include "doctor.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_NONCE "5f0c9a3e71d24b86"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_text(const char *s)
{
    if (s == NULL)
        abort();
    for (; *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct deploy_doctor_package pk[] = {
        {"550.54.15", "6.1.0-50-amd64", "x86_64"},
        {"570.133.07", "5.15.0-107-generic", NULL},
    };
    struct deploy_doctor_ctx ctx = {
        size % 2 ? "550.54.15" : NULL, size % 3 ? NULL : "kfleet-core", NULL, pk, 2,
        (int)(size % 5 != 0)};
    struct deploy_doctor_report r;
    struct kf_err err;
    size_t i, j, count = 0;
    json_t *js;

    deploy_doctor_report_init(&r);
    if (deploy_doctor_analyze((const char *)data, size, FUZZ_NONCE, &ctx, &r, &err) != 0) {
        check_text(err.msg);
        if (r.n != 0 || r.findings != NULL)
            abort();
        return 0;
    }
    if (!kf_krel_valid(r.facts.kernel))
        abort();
    for (i = 0; i < r.n; i++) {
        const struct deploy_doctor_finding *f = &r.findings[i];
        check_text(f->title);
        check_text(f->evidence);
        check_text(f->fix);
        if ((unsigned)f->severity >= DEPLOY_DOCTOR_NSEVERITIES || f->title[0] == '\0' ||
            strlen(f->evidence) > 4096)
            abort();
        for (j = 0; j < i; j++)
            if (strcmp(r.findings[j].code, f->code) == 0)
                abort();
    }
    for (i = 0; i < DEPLOY_DOCTOR_NSEVERITIES; i++)
        count += r.count[i];
    if (count != r.n)
        abort();
    js = deploy_doctor_findings_json(&r);
    if (js == NULL || json_array_size(js) != r.n)
        abort();
    json_decref(js);
    deploy_doctor_report_release(&r);
    return 0;
}
