/* Signing keys: a new key pair with a certificate for MOK enrolment, and the
 * description of a certificate for metadata.json.
 *
 * The certificate follows the kernel's own certs/default_x509.genkey
 * (CA:FALSE, digitalSignature, key identifiers) plus extendedKeyUsage
 * codeSigning, which some distributions' kernels require of keys in the
 * machine keyring (and which shim's MokManager shows). */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY_FILE "signing_key.pem"
#define CERT_DER "signing_cert.der"
#define CERT_PEM "signing_cert.pem"

/* The key types of build_keys_new(): RSA bits, or 0 for P-384. -1 when
 * unknown. */
static int key_type_bits(const char *type)
{
    if (strcmp(type, "rsa") == 0 || strcmp(type, "rsa4096") == 0)
        return 4096;
    if (strcmp(type, "rsa2048") == 0)
        return 2048;
    if (strcmp(type, "rsa3072") == 0)
        return 3072;
    if (strcmp(type, "p384") == 0)
        return 0;
    return -1;
}

static EVP_PKEY *generate_key(int bits, const EVP_MD **sig_md)
{
    if (bits > 0) {
        *sig_md = EVP_sha256();
        return EVP_RSA_gen((unsigned)bits);
    }
    *sig_md = EVP_sha384(); /* a digest as strong as the curve */
    return EVP_EC_gen("P-384");
}

static int add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ext;
    int ok;

    /* Self-signed: the certificate is its own issuer, which the key
     * identifier extensions read. */
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (ext == NULL)
        return 0;
    ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok;
}

static X509 *make_cert(EVP_PKEY *key, const EVP_MD *md, const char *cn, unsigned days)
{
    unsigned char serial[16];
    X509_NAME *name = NULL;
    BIGNUM *bn = NULL;
    X509 *x = X509_new();
    int ok = 0;

    if (x == NULL)
        goto out;
    /* A random positive 127-bit serial: issuer and serial identify the key
     * to the kernel, so two kfleet keys with one CN must still differ. */
    if (RAND_bytes(serial, sizeof(serial)) != 1)
        goto out;
    serial[0] &= 0x7f;
    serial[0] |= 0x40;
    bn = BN_bin2bn(serial, sizeof(serial), NULL);
    name = X509_NAME_new();
    if (bn == NULL || name == NULL || X509_set_version(x, X509_VERSION_3) != 1 ||
        BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) == NULL ||
        X509_gmtime_adj(X509_getm_notBefore(x), 0) == NULL ||
        X509_time_adj_ex(X509_getm_notAfter(x), (int)days, 0, NULL) == NULL ||
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1,
                                   0) != 1 ||
        X509_set_subject_name(x, name) != 1 || X509_set_issuer_name(x, name) != 1 ||
        X509_set_pubkey(x, key) != 1)
        goto out;
    if (!add_ext(x, NID_basic_constraints, "critical,CA:FALSE") ||
        !add_ext(x, NID_key_usage, "critical,digitalSignature") ||
        !add_ext(x, NID_ext_key_usage, "codeSigning") ||
        !add_ext(x, NID_subject_key_identifier, "hash") ||
        !add_ext(x, NID_authority_key_identifier, "keyid:always"))
        goto out;
    if (X509_sign(x, key, md) <= 0)
        goto out;
    ok = 1;
out:
    X509_NAME_free(name);
    BN_free(bn);
    if (!ok) {
        X509_free(x);
        x = NULL;
    }
    return x;
}

/* Serializes into a memory BIO and returns its bytes (owned by the BIO). */
static int bio_bytes(BIO *b, const char **p, size_t *n)
{
    char *data = NULL;
    long len = BIO_get_mem_data(b, &data);

    if (len <= 0)
        return -1;
    *p = data;
    *n = (size_t)len;
    return 0;
}

static int valid_cn(const char *cn)
{
    size_t i, n;

    if (cn == NULL)
        return 0;
    n = strnlen(cn, 65);
    if (n == 0 || n > 64) /* ub-common-name, RFC 5280 */
        return 0;
    for (i = 0; i < n; i++)
        if ((unsigned char)cn[i] < 0x20 || (unsigned char)cn[i] >= 0x7f)
            return 0;
    return 1;
}

int build_keys_new(const char *dir, const char *type, const char *cn, unsigned days,
                   struct buf *mokutil_cmd, struct kf_err *err)
{
    static const char *const names[3] = {KEY_FILE, CERT_DER, CERT_PEM};
    static const mode_t modes[3] = {0600, 0644, 0644};
    struct build_tmp tmp[3] = {{-1, NULL, NULL}, {-1, NULL, NULL}, {-1, NULL, NULL}};
    char *paths[3] = {NULL, NULL, NULL};
    int linked[3] = {0, 0, 0};
    BIO *bio[3] = {NULL, NULL, NULL};
    const EVP_MD *md = NULL;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    const char *data;
    size_t n;
    int i, bits, rc = 0;

    ERR_clear_error();
    if (dir == NULL || dir[0] == '\0' || type == NULL) {
        rc = kf_err_set(err, KF_EINVAL, "keys: a directory and a key type are needed");
        goto out;
    }
    bits = key_type_bits(type);
    if (bits < 0) {
        rc = kf_err_set(err, KF_EINVAL,
                        "keys: key type '%s': use rsa (4096 bits), rsa2048, rsa3072, rsa4096 or "
                        "p384 (the kernel cannot verify Ed25519)",
                        type);
        goto out;
    }
    if (!valid_cn(cn)) {
        rc = kf_err_set(err, KF_EINVAL,
                        "keys: the common name must be 1 to 64 printable ASCII characters");
        goto out;
    }
    if (days < 1 || days > 36500) {
        rc = kf_err_set(err, KF_EINVAL, "keys: validity of %u days: use 1 to 36500", days);
        goto out;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        rc = kf_err_set(err, KF_EIO, "%s: mkdir: %s", dir, strerror(errno));
        goto out;
    }
    for (i = 0; i < 3; i++) {
        if (asprintf(&paths[i], "%s/%s", dir, names[i]) < 0) {
            paths[i] = NULL;
            rc = kf_err_set(err, KF_ENOMEM, "out of memory");
            goto out;
        }
        /* Checked now so a refusal costs no key generation; link() below
         * makes the final no-clobber decision. */
        if (access(paths[i], F_OK) == 0) {
            rc = kf_err_set(err, KF_EEXIST, "%s already exists: kfleet never replaces a key",
                            paths[i]);
            goto out;
        }
    }
    key = generate_key(bits, &md);
    if (key == NULL) {
        rc = build_ssl_err(err, KF_EIO, "keys: generating a %s key failed", type);
        goto out;
    }
    cert = make_cert(key, md, cn, days);
    for (i = 0; i < 3; i++)
        bio[i] = BIO_new(BIO_s_mem());
    if (cert == NULL || bio[0] == NULL || bio[1] == NULL || bio[2] == NULL ||
        PEM_write_bio_PrivateKey(bio[0], key, NULL, NULL, 0, NULL, NULL) != 1 ||
        i2d_X509_bio(bio[1], cert) != 1 || PEM_write_bio_X509(bio[2], cert) != 1) {
        rc = build_ssl_err(err, KF_EIO, "keys: making the certificate failed");
        goto out;
    }
    /* Each file is written and synced under a temporary name, then linked
     * to its final name: link() fails rather than replace a file that
     * appeared meanwhile, and the key is never readable by others, not
     * even for a moment. */
    for (i = 0; i < 3; i++) {
        rc = build_tmp_open(&tmp[i], paths[i], modes[i], err);
        if (rc != 0)
            goto out;
        if (bio_bytes(bio[i], &data, &n) != 0) {
            rc = kf_err_set(err, KF_EIO, "%s: nothing to write", paths[i]);
            goto out;
        }
        rc = build_tmp_write(&tmp[i], data, n, err);
        if (rc != 0)
            goto out;
        if (fsync(tmp[i].fd) != 0) {
            rc = kf_err_set(err, KF_EIO, "%s: fsync: %s", paths[i], strerror(errno));
            goto out;
        }
    }
    for (i = 0; i < 3; i++) {
        if (link(tmp[i].tmp_path, paths[i]) != 0) {
            rc = kf_err_set(err, errno == EEXIST ? KF_EEXIST : KF_EIO, "%s: %s", paths[i],
                            strerror(errno));
            goto out;
        }
        linked[i] = 1;
    }
    rc = build_fsync_parent(paths[0], err);
    if (rc != 0)
        goto out;
    if (mokutil_cmd != NULL) {
        if (buf_puts(mokutil_cmd, "mokutil --import ") != 0 ||
            kf_shquote(mokutil_cmd, paths[1]) != 0) {
            rc = kf_err_set(err, KF_ENOMEM, "out of memory");
            goto out;
        }
    }
out:
    for (i = 0; i < 3; i++) {
        /* A failure after some links leaves no half set behind. */
        if (rc != 0 && linked[i])
            unlink(paths[i]);
        if (tmp[i].final_path != NULL)
            build_tmp_abort(&tmp[i]); /* removes the temporary name */
        BIO_free(bio[i]);
        free(paths[i]);
    }
    X509_free(cert);
    EVP_PKEY_free(key);
    ERR_clear_error();
    return rc;
}

int build_cert_describe(const char *cert_path, char *subject, size_t subject_size, char *key_id,
                        size_t key_id_size, struct kf_err *err)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    const ASN1_OCTET_STRING *ski;
    const unsigned char *idp;
    struct build_map m = {NULL, 0, 0};
    const unsigned char *p;
    unsigned mdlen = 0;
    size_t idlen;
    X509 *x = NULL;
    BIO *b = NULL;
    const char *data;
    size_t n;
    int rc = 0;

    ERR_clear_error();
    if (subject_size > 0)
        subject[0] = '\0';
    if (key_id_size > 0)
        key_id[0] = '\0';
    rc = build_map_open(&m, cert_path, err);
    if (rc != 0)
        goto out;
    if (m.len == 0 || m.len > INT32_MAX) {
        rc = kf_err_set(err, KF_EPARSE, "%s: not a certificate", cert_path);
        goto out;
    }
    if (memmem(m.data, m.len, "-----BEGIN", 10) != NULL) {
        b = BIO_new_mem_buf(m.data, (int)m.len);
        x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
        BIO_free(b);
        b = NULL;
    } else {
        p = m.data;
        x = d2i_X509(NULL, &p, (long)m.len);
    }
    if (x == NULL) {
        rc = build_ssl_err(err, KF_EPARSE, "%s: cannot read the X.509 certificate", cert_path);
        goto out;
    }
    b = BIO_new(BIO_s_mem());
    if (b == NULL || X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253) < 0 ||
        bio_bytes(b, &data, &n) != 0) {
        rc = build_ssl_err(err, KF_EPARSE, "%s: cannot print the subject", cert_path);
        goto out;
    }
    if (n + 1 > subject_size) {
        rc = kf_err_set(err, KF_ETRUNC, "%s: subject longer than %zu bytes", cert_path,
                        subject_size);
        goto out;
    }
    memcpy(subject, data, n);
    subject[n] = '\0';
    ski = X509_get0_subject_key_id(x);
    if (ski != NULL) {
        idp = ASN1_STRING_get0_data(ski);
        idlen = (size_t)ASN1_STRING_length(ski);
    } else {
        if (X509_pubkey_digest(x, EVP_sha1(), md, &mdlen) != 1) {
            rc = build_ssl_err(err, KF_EPARSE, "%s: cannot hash the public key", cert_path);
            goto out;
        }
        idp = md;
        idlen = mdlen;
    }
    if (2 * idlen + 1 > key_id_size) {
        rc = kf_err_set(err, KF_ETRUNC, "%s: key id longer than %zu bytes", cert_path, key_id_size);
        goto out;
    }
    build_hex(key_id, idp, idlen);
out:
    BIO_free(b);
    X509_free(x);
    build_map_close(&m);
    ERR_clear_error();
    return rc;
}
