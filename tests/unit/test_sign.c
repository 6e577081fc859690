/* Module signing and signing keys: round trips for RSA and ECDSA P-384,
 * tampering, wrong certificates, refused key types, the byte layout of the
 * trailer checked by hand, and two independent checks: the openssl command
 * line's CMS verification, and the kernel's own scripts/sign-file when a
 * kernel headers package provides it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "builder.h"
#include "testutil.h"

#include <glob.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */

/* A module to sign: the nvidia-uvm.ko fixture, copied. */
static const char *module_copy(const char *name)
{
    char from[1024];
    const char *to = kft_tmp(name);
    unsigned char *p;
    size_t n;

    snprintf(from, sizeof(from), "%s/ko/nvidia-uvm.ko", KF_FIXTURES);
    p = kft_read_all(from, &n);
    kft_write_all(to, p, n);
    free(p);
    return to;
}

/* Keys made once per type for the whole run (RSA generation is slow under
 * ASan); dir is kft_tmpdir/keys-TYPE. */
static const char *keydir(const char *type)
{
    static char dirs[4][256];
    static const char *types[4];
    struct kf_err err;
    int i;

    for (i = 0; i < 4 && types[i] != NULL; i++)
        if (strcmp(types[i], type) == 0)
            return dirs[i];
    assert_true(i < 4);
    snprintf(dirs[i], sizeof(dirs[i]), "%s/keys-%s", kft_tmpdir, type);
    if (build_keys_new(dirs[i], type, "kfleet test signing key", 30, NULL, &err) != 0)
        fail_msg("keys_new %s: %s", type, err.msg);
    types[i] = type;
    return dirs[i];
}

static const char *key_of(const char *type)
{
    static char p[4][300];
    static int next;

    next = (next + 1) % 4;
    snprintf(p[next], sizeof(p[next]), "%s/signing_key.pem", keydir(type));
    return p[next];
}

static const char *cert_of(const char *type, const char *ext)
{
    static char p[4][300];
    static int next;

    next = (next + 1) % 4;
    snprintf(p[next], sizeof(p[next]), "%s/signing_cert.%s", keydir(type), ext);
    return p[next];
}

/* Runs a shell command line; returns its exit status. */

/* ------------------------------------------------------------------------ */
/* Keys                                                                      */

static void check_cert(const char *der_path, int want_ec)
{
    size_t n;
    unsigned char *der = kft_read_all(der_path, &n);
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)n);
    EVP_PKEY *pk;

    assert_non_null(x);
    assert_int_equal(X509_get_version(x), X509_VERSION_3);
    /* extension flags: CA:FALSE, digitalSignature, codeSigning, SKI. */
    assert_true(X509_get_extension_flags(x) & EXFLAG_BCONS);
    assert_false(X509_get_extension_flags(x) & EXFLAG_CA);
    assert_true(X509_get_key_usage(x) & KU_DIGITAL_SIGNATURE);
    assert_false(X509_get_key_usage(x) & KU_KEY_CERT_SIGN);
    assert_true(X509_get_extended_key_usage(x) & XKU_CODE_SIGN);
    assert_non_null(X509_get0_subject_key_id(x));
    assert_non_null(X509_get0_authority_key_id(x));
    pk = X509_get0_pubkey(x);
    assert_int_equal(EVP_PKEY_get_base_id(pk), want_ec ? EVP_PKEY_EC : EVP_PKEY_RSA);
    assert_int_equal(X509_verify(x, pk), 1); /* self-signed */
    assert_int_equal(X509_NAME_cmp(X509_get_subject_name(x), X509_get_issuer_name(x)), 0);
    X509_free(x);
    free(der);
}

static void test_keys_new(void **state)
{
    struct stat st;
    struct kf_err err;
    struct buf cmd;
    char subject[256], keyid[128], want[512];

    (void)state;
    buf_init(&cmd, 0);
    assert_int_equal(build_keys_new(kft_tmp("k1"), "p384", "Fleet MOK", 3650, &cmd, &err), 0);
    snprintf(want, sizeof(want), "mokutil --import '%s/k1/signing_cert.der'", kft_tmpdir);
    assert_string_equal(buf_cstr(&cmd), want);
    assert_int_equal(stat(kft_tmp("k1/signing_key.pem"), &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(kft_tmp("k1/signing_cert.der"), &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    assert_int_equal(stat(kft_tmp("k1"), &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    check_cert(kft_tmp("k1/signing_cert.der"), 1);

    /* The key loads back, and the PEM certificate is the DER one. */
    {
        size_t n;
        unsigned char *pem = kft_read_all(kft_tmp("k1/signing_key.pem"), &n);
        BIO *b = BIO_new_mem_buf(pem, (int)n);
        EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
        assert_non_null(k);
        EVP_PKEY_free(k);
        BIO_free(b);
        free(pem);
    }
    assert_int_equal(build_cert_describe(kft_tmp("k1/signing_cert.pem"), subject, sizeof(subject),
                                         keyid, sizeof(keyid), &err),
                     0);
    assert_string_equal(subject, "CN=Fleet MOK");
    assert_int_equal(strlen(keyid), 40); /* SHA-1 key identifier */
    {
        char s2[256], k2[128];
        assert_int_equal(build_cert_describe(kft_tmp("k1/signing_cert.der"), s2, sizeof(s2), k2,
                                             sizeof(k2), &err),
                         0);
        assert_string_equal(s2, subject);
        assert_string_equal(k2, keyid);
        assert_int_equal(
            build_cert_describe(kft_tmp("k1/signing_cert.der"), s2, 4, k2, sizeof(k2), &err),
            KF_ETRUNC);
    }

    /* Never replaces a key. */
    buf_reset(&cmd);
    assert_int_equal(build_keys_new(kft_tmp("k1"), "p384", "Again", 30, &cmd, &err), KF_EEXIST);
    assert_non_null(strstr(err.msg, "already exists"));
    assert_int_equal(cmd.len, 0);

    /* Bad arguments cost no key generation and leave nothing. */
    assert_int_equal(build_keys_new(kft_tmp("k2"), "ed25519", "x", 30, NULL, &err), KF_EINVAL);
    assert_non_null(strstr(err.msg, "Ed25519"));
    assert_int_equal(build_keys_new(kft_tmp("k2"), "rsa", "", 30, NULL, &err), KF_EINVAL);
    assert_int_equal(build_keys_new(kft_tmp("k2"), "rsa", "a\nb", 30, NULL, &err), KF_EINVAL);
    assert_int_equal(build_keys_new(kft_tmp("k2"), "rsa", "x", 0, NULL, &err), KF_EINVAL);
    assert_int_equal(access(kft_tmp("k2"), F_OK), -1);
    assert_int_equal(build_keys_new(kft_tmp("no/such/dir"), "p384", "x", 1, NULL, &err), KF_EIO);

    /* RSA (2048 for speed; "rsa" is 4096). */
    check_cert(cert_of("rsa2048", "der"), 0);
    buf_release(&cmd);
}

/* ------------------------------------------------------------------------ */
/* Signing                                                                   */

/* Checks the trailer byte by byte, as the kernel reads it. */
static void check_layout(const char *unsigned_path, const char *signed_path, size_t *sig_len)
{
    size_t n0, n1, sl;
    unsigned char *u = kft_read_all(unsigned_path, &n0), *s = kft_read_all(signed_path, &n1);
    const unsigned char *ms;

    assert_true(n1 > n0 + 40);
    assert_memory_equal(s, u, n0); /* the module bytes, unchanged, first */
    assert_memory_equal(s + n1 - 28, "~Module signature appended~\n", 28);
    ms = s + n1 - 28 - 12;
    assert_int_equal(ms[0], 0); /* algo */
    assert_int_equal(ms[1], 0); /* hash */
    assert_int_equal(ms[2], 2); /* id_type PKEY_ID_PKCS7 */
    assert_int_equal(ms[3], 0); /* signer_len */
    assert_int_equal(ms[4], 0); /* key_id_len */
    assert_int_equal(ms[5] | ms[6] | ms[7], 0);
    sl = (size_t)ms[8] << 24 | (size_t)ms[9] << 16 | (size_t)ms[10] << 8 | ms[11];
    assert_int_equal(n0 + sl + 12 + 28, n1);
    assert_int_equal(s[n0], 0x30); /* a DER SEQUENCE */
    *sig_len = sl;
    free(u);
    free(s);
}

/* The independent check: openssl cms -verify on the detached signature. */
static void openssl_verify(const char *signed_path, const char *unsigned_path, size_t sig_len,
                           const char *cert_pem, int expect_ok)
{
    size_t n0, n1;
    unsigned char *s;

    if (!kft_have("openssl")) {
        print_message("openssl command not found: CLI cross-check skipped\n");
        return;
    }
    s = kft_read_all(signed_path, &n1);
    n0 = n1 - sig_len - 40;
    kft_write_all(kft_tmp("sig.der"), s + n0, sig_len);
    free(s);
    assert_int_equal(kft_sh("openssl cms -verify -binary -inform DER -in '%s' -content '%s' "
                            "-certfile '%s' -nointern -noverify -out /dev/null 2>/dev/null",
                            kft_tmp("sig.der"), unsigned_path, cert_pem) == 0,
                     expect_ok);
}

static void round_trip(const char *type, const char *hash)
{
    const char *mod = module_copy("m.ko"), *out = kft_tmp("m-signed.ko");
    struct build_modinfo mi;
    struct kf_err err;
    size_t sig_len;
    struct stat st;

    if (build_sign_module(mod, out, key_of(type), cert_of(type, "der"), hash, &err) != 0)
        fail_msg("sign %s/%s: %s", type, hash ? hash : "default", err.msg);
    assert_int_equal(build_verify_module_signature(out, cert_of(type, "der"), &err), 0);
    assert_int_equal(build_verify_module_signature(out, cert_of(type, "pem"), &err), 0);
    check_layout(mod, out, &sig_len);
    openssl_verify(out, mod, sig_len, cert_of(type, "pem"), 1);
    assert_int_equal(build_modinfo_read(out, &mi, &err), 0);
    assert_true(mi.has_signature);
    assert_string_equal(mi.name, "nvidia_uvm");
    assert_int_equal(stat(out, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);

    /* The other key's certificate: not the signer. */
    assert_int_equal(build_verify_module_signature(
                         out, cert_of(strcmp(type, "p384") == 0 ? "rsa2048" : "p384", "der"), &err),
                     KF_EAUTH);
    openssl_verify(out, mod, sig_len,
                   cert_of(strcmp(type, "p384") == 0 ? "rsa2048" : "p384", "pem"), 0);
}

static void test_sign_rsa(void **state)
{
    (void)state;
    round_trip("rsa2048", NULL);
    round_trip("rsa2048", "sha512");
}

static void test_sign_p384(void **state)
{
    (void)state;
    round_trip("p384", "sha384");
    round_trip("p384", "sha256");
}

static void test_tamper(void **state)
{
    const char *mod = module_copy("t.ko"), *out = kft_tmp("t-signed.ko");
    struct kf_err err;
    unsigned char *p;
    size_t n, i;

    (void)state;
    assert_int_equal(
        build_sign_module(mod, out, key_of("p384"), cert_of("p384", "pem"), NULL, &err), 0);
    p = kft_read_all(out, &n);
    /* One byte of the module's payload string, then one of the CMS. */
    {
        unsigned char *hit = memmem(p, n, "kfleet-fixture-payload", 22);
        assert_non_null(hit);
        hit[0] ^= 1;
        kft_write_all(kft_tmp("t-bad.ko"), p, n);
        assert_int_equal(
            build_verify_module_signature(kft_tmp("t-bad.ko"), cert_of("p384", "der"), &err),
            KF_EAUTH);
        assert_non_null(strstr(err.msg, "does not verify"));
        hit[0] ^= 1;
    }
    /* The last bytes of the DER are the signature value itself. */
    i = n - 28 - 12 - 3;
    p[i] ^= 0x55;
    kft_write_all(kft_tmp("t-bad.ko"), p, n);
    assert_true(build_verify_module_signature(kft_tmp("t-bad.ko"), cert_of("p384", "der"), &err) <
                0);
    p[i] ^= 0x55;
    /* A signature length that covers the whole file. */
    p[n - 28 - 4] = 0x7f;
    kft_write_all(kft_tmp("t-bad.ko"), p, n);
    assert_int_equal(
        build_verify_module_signature(kft_tmp("t-bad.ko"), cert_of("p384", "der"), &err),
        KF_EPARSE);
    free(p);
    /* Unsigned: not found. */
    assert_int_equal(build_verify_module_signature(mod, cert_of("p384", "der"), &err), KF_ENOENT);
}

static void test_refusals(void **state)
{
    const char *mod = module_copy("r.ko");
    struct kf_err err;
    char ed_key[300], ed_cert[300];

    (void)state;
    /* Already signed: refused, the file is untouched. */
    assert_int_equal(
        build_sign_module(mod, NULL, key_of("p384"), cert_of("p384", "der"), NULL, &err), 0);
    {
        size_t n0, n1;
        unsigned char *a = kft_read_all(mod, &n0), *b;
        assert_int_equal(
            build_sign_module(mod, NULL, key_of("p384"), cert_of("p384", "der"), NULL, &err),
            KF_EEXIST);
        assert_non_null(strstr(err.msg, "already signed"));
        b = kft_read_all(mod, &n1);
        assert_int_equal(n0, n1);
        assert_memory_equal(a, b, n0);
        free(a);
        free(b);
    }
    /* Stripping drops the signature: then signing again works (the
     * re-sign path the header documents). */
    assert_int_equal(build_strip_debug(mod, NULL, NULL, &err), 0);
    assert_int_equal(build_verify_module_signature(mod, cert_of("p384", "der"), &err), KF_ENOENT);
    assert_int_equal(
        build_sign_module(mod, NULL, key_of("p384"), cert_of("p384", "der"), NULL, &err), 0);
    assert_int_equal(build_verify_module_signature(mod, cert_of("p384", "der"), &err), 0);

    mod = module_copy("r2.ko");
    assert_int_equal(
        build_sign_module(mod, NULL, key_of("p384"), cert_of("p384", "der"), "md5", &err),
        KF_EINVAL);
    /* Key and certificate that do not belong together. */
    assert_int_equal(
        build_sign_module(mod, NULL, key_of("p384"), cert_of("rsa2048", "der"), NULL, &err),
        KF_EINVAL);
    assert_non_null(strstr(err.msg, "not for this key"));
    /* No certificate in the key file. */
    assert_int_equal(build_sign_module(mod, NULL, key_of("p384"), NULL, NULL, &err), KF_EPARSE);
    /* Not a module. */
    kft_write_all(kft_tmp("notko.ko"), "hello", 5);
    assert_int_equal(build_sign_module(kft_tmp("notko.ko"), NULL, key_of("p384"),
                                       cert_of("p384", "der"), NULL, &err),
                     KF_EPARSE);

    /* Ed25519, made with OpenSSL here since kfleet refuses to make one. */
    {
        EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
        X509 *x = X509_new();
        FILE *f;
        assert_non_null(k);
        assert_non_null(x);
        X509_set_version(x, X509_VERSION_3);
        ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
        X509_gmtime_adj(X509_getm_notBefore(x), 0);
        X509_gmtime_adj(X509_getm_notAfter(x), 3600);
        X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                                   (const unsigned char *)"ed", -1, -1, 0);
        X509_set_issuer_name(x, X509_get_subject_name(x));
        X509_set_pubkey(x, k);
        assert_true(X509_sign(x, k, NULL) > 0);
        snprintf(ed_key, sizeof(ed_key), "%s/ed.pem", kft_tmpdir);
        snprintf(ed_cert, sizeof(ed_cert), "%s/ed.crt", kft_tmpdir);
        f = fopen(ed_key, "w");
        assert_non_null(f);
        PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
        fclose(f);
        f = fopen(ed_cert, "w");
        assert_non_null(f);
        PEM_write_X509(f, x);
        fclose(f);
        X509_free(x);
        EVP_PKEY_free(k);
    }
    assert_int_equal(build_sign_module(mod, NULL, ed_key, ed_cert, NULL, &err), KF_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "Ed25519 keys cannot sign kernel modules"));
    /* P-256 and small RSA: refused too. */
    assert_int_equal(kft_sh("openssl ecparam -name prime256v1 -genkey -noout -out '%s' 2>/dev/null",
                            kft_tmp("p256.pem")),
                     0);
    assert_int_equal(
        build_sign_module(mod, NULL, kft_tmp("p256.pem"), cert_of("p384", "der"), NULL, &err),
        KF_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "prime256v1"));
    assert_int_equal(
        kft_sh("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out '%s' "
               "2>/dev/null",
               kft_tmp("rsa1024.pem")),
        0);
    assert_int_equal(
        build_sign_module(mod, NULL, kft_tmp("rsa1024.pem"), cert_of("p384", "der"), NULL, &err),
        KF_EUNSUPPORTED);
    /* An encrypted key is refused, never prompted for. */
    assert_int_equal(
        kft_sh("openssl pkey -in '%s' -aes256 -passout pass:secret -out '%s' 2>/dev/null",
               key_of("p384"), kft_tmp("enc.pem")),
        0);
    assert_int_equal(
        build_sign_module(mod, NULL, kft_tmp("enc.pem"), cert_of("p384", "der"), NULL, &err),
        KF_EPARSE);
    assert_non_null(strstr(err.msg, "encrypted"));
    /* Nothing of all this touched the module. */
    assert_int_equal(build_verify_module_signature(mod, cert_of("p384", "der"), &err), KF_ENOENT);
}

/* The kernel's signing_key.pem holds key and certificate in one file. */
static void test_combined_key_file(void **state)
{
    const char *mod = module_copy("c.ko");
    struct kf_err err;

    (void)state;
    assert_int_equal(kft_sh("cat '%s' '%s' >'%s'", key_of("rsa2048"), cert_of("rsa2048", "pem"),
                            kft_tmp("combined.pem")),
                     0);
    assert_int_equal(build_sign_module(mod, kft_tmp("c-signed.ko"), kft_tmp("combined.pem"), NULL,
                                       "sha256", &err),
                     0);
    assert_int_equal(
        build_verify_module_signature(kft_tmp("c-signed.ko"), cert_of("rsa2048", "der"), &err), 0);
}

/* Against the kernel's own tool, when a headers package ships it (or
 * KF_SIGN_FILE names one): sign with sign-file, verify with kfleet; and
 * the two signatures over the same bytes with the same RSA key must be
 * identical, since PKCS#1 v1.5 signing is deterministic. */
static void test_sign_file_cross_check(void **state)
{
    const char *pats[] = {"/usr/src/linux-headers-*/scripts/sign-file",
                          "/usr/lib/linux-kbuild-*/scripts/sign-file",
                          "/lib/modules/*/build/scripts/sign-file"};
    const char *tool = getenv("KF_SIGN_FILE");
    char found[1024];
    glob_t g;
    size_t i, n1, n2;
    unsigned char *a, *b;
    struct kf_err err;
    const char *mod;

    (void)state;
    for (i = 0; i < 3 && (tool == NULL || tool[0] == '\0'); i++) {
        memset(&g, 0, sizeof(g));
        if (glob(pats[i], 0, NULL, &g) == 0 && g.gl_pathc > 0 && access(g.gl_pathv[0], X_OK) == 0) {
            snprintf(found, sizeof(found), "%s", g.gl_pathv[0]);
            tool = found;
        }
        globfree(&g);
    }
    if (tool == NULL || tool[0] == '\0') {
        print_message("scripts/sign-file not found: checked by layout and openssl cms instead\n");
        skip();
    }
    mod = module_copy("k.ko");
    assert_int_equal(kft_sh("'%s' sha256 '%s' '%s' '%s' '%s'", tool, key_of("rsa2048"),
                            cert_of("rsa2048", "der"), mod, kft_tmp("k-kernel.ko")),
                     0);
    assert_int_equal(
        build_verify_module_signature(kft_tmp("k-kernel.ko"), cert_of("rsa2048", "der"), &err), 0);
    assert_int_equal(build_sign_module(mod, kft_tmp("k-kfleet.ko"), key_of("rsa2048"),
                                       cert_of("rsa2048", "der"), "sha256", &err),
                     0);
    a = kft_read_all(kft_tmp("k-kernel.ko"), &n1);
    b = kft_read_all(kft_tmp("k-kfleet.ko"), &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1);
    free(a);
    free(b);
    /* P-384 signatures are randomized: verify sign-file's with kfleet. */
    assert_int_equal(kft_sh("'%s' sha384 '%s' '%s' '%s' '%s'", tool, key_of("p384"),
                            cert_of("p384", "pem"), mod, kft_tmp("k-kernel-ec.ko")),
                     0);
    assert_int_equal(
        build_verify_module_signature(kft_tmp("k-kernel-ec.ko"), cert_of("p384", "der"), &err), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys_new),
        cmocka_unit_test(test_sign_rsa),
        cmocka_unit_test(test_sign_p384),
        cmocka_unit_test(test_tamper),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_combined_key_file),
        cmocka_unit_test(test_sign_file_cross_check),
    };
    return cmocka_run_group_tests(tests, kft_setup_tmpdir, kft_teardown_tmpdir);
}
