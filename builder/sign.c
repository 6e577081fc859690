/* Module signing in the kernel's appended-signature format, with OpenSSL.
 *
 * What the kernel's scripts/sign-file writes and kernel/module/signing.c
 * reads:
 *
 *   module bytes | DER CMS SignedData, detached | struct module_signature
 *   (12 bytes: algo 0, hash 0, id_type 2, signer_len 0, key_id_len 0,
 *   pad[3], __be32 sig_len) | "~Module signature appended~\n"
 *
 * The CMS carries no certificates (the kernel finds the key in its keyring
 * by issuer and serial) and no signed attributes (the kernel's PKCS#7
 * parser checks the digest of the content directly). */
#include "internal.h"

#include <errno.h>
#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Refuses to prompt: a signing key on a build host is a file, and a
 * password prompt on the coordinator's terminal from a worker thread would
 * hang the build. */
static int no_password(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

/* Reads a certificate in PEM or DER (told apart by the PEM armour). */
static int load_cert(const char *path, X509 **out, struct kf_err *err)
{
    struct build_map m = {NULL, 0, 0};
    const unsigned char *p;
    BIO *bio = NULL;
    int rc;

    *out = NULL;
    rc = build_map_open(&m, path, err);
    if (rc != 0)
        return rc;
    if (m.len == 0 || m.len > INT32_MAX) {
        rc = kf_err_set(err, KF_EPARSE, "%s: not a certificate (%zu bytes)", path, m.len);
        goto out;
    }
    if (memmem(m.data, m.len, "-----BEGIN", 10) != NULL) {
        bio = BIO_new_mem_buf(m.data, (int)m.len);
        if (bio != NULL)
            *out = PEM_read_bio_X509(bio, NULL, no_password, NULL);
    } else {
        p = m.data;
        *out = d2i_X509(NULL, &p, (long)m.len);
    }
    if (*out == NULL)
        rc = build_ssl_err(err, KF_EPARSE, "%s: cannot read the X.509 certificate", path);
out:
    BIO_free(bio);
    build_map_close(&m);
    return rc;
}

static int load_key(const char *path, EVP_PKEY **key, X509 **cert_in_file, struct kf_err *err)
{
    BIO *bio = NULL;
    int rc = 0;

    *key = NULL;
    if (cert_in_file != NULL)
        *cert_in_file = NULL;
    bio = BIO_new_file(path, "r");
    if (bio == NULL) {
        rc = build_ssl_err(err, errno == ENOENT ? KF_ENOENT : KF_EIO, "%s: cannot open", path);
        goto out;
    }
    *key = PEM_read_bio_PrivateKey(bio, NULL, no_password, NULL);
    if (*key == NULL) {
        rc = build_ssl_err(err, KF_EPARSE,
                           "%s: cannot read an unencrypted PEM private key "
                           "(encrypted keys are not supported)",
                           path);
        goto out;
    }
    /* The kernel's signing_key.pem holds the key and then its certificate. */
    if (cert_in_file != NULL) {
        if (BIO_reset(bio) != 0 ||
            (*cert_in_file = PEM_read_bio_X509(bio, NULL, no_password, NULL)) == NULL) {
            rc = build_ssl_err(err, KF_EPARSE,
                               "%s: no certificate in the key file (give the certificate)", path);
            goto out;
        }
    }
out:
    BIO_free(bio);
    if (rc != 0) {
        EVP_PKEY_free(*key);
        *key = NULL;
    }
    return rc;
}

/* The kernel verifies module signatures made with RSA or ECDSA; of the
 * curves, kfleet accepts P-384, the one the kernel's own ECDSA signing
 * option generates. */
static int check_key_type(EVP_PKEY *key, const char *path, struct kf_err *err)
{
    char group[64];
    size_t glen = 0;
    int id = EVP_PKEY_get_base_id(key);

    switch (id) {
    case EVP_PKEY_RSA:
        if (EVP_PKEY_get_bits(key) < 2048)
            return kf_err_set(err, KF_EUNSUPPORTED,
                              "%s: RSA key of %d bits is too weak to sign modules (2048 or more)",
                              path, EVP_PKEY_get_bits(key));
        return 0;
    case EVP_PKEY_EC:
        if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                           &glen) != 1)
            group[0] = '\0';
        if (strcmp(group, "secp384r1") == 0 || strcmp(group, "P-384") == 0)
            return 0;
        return kf_err_set(err, KF_EUNSUPPORTED,
                          "%s: ECDSA key on curve '%s': kfleet signs modules with P-384 only", path,
                          group[0] ? group : "unknown");
    case EVP_PKEY_ED25519:
    case EVP_PKEY_ED448:
        return kf_err_set(err, KF_EUNSUPPORTED,
                          "%s: %s keys cannot sign kernel modules: the kernel's module signature "
                          "check accepts RSA and ECDSA only (make one with `kfleet keys new`)",
                          path, id == EVP_PKEY_ED25519 ? "Ed25519" : "Ed448");
    default:
        return kf_err_set(err, KF_EUNSUPPORTED,
                          "%s: key type %s cannot sign kernel modules (RSA or ECDSA P-384)", path,
                          OBJ_nid2sn(id));
    }
}

static const EVP_MD *pick_hash(const char *hash)
{
    if (hash == NULL || strcmp(hash, "sha256") == 0)
        return EVP_sha256();
    if (strcmp(hash, "sha384") == 0)
        return EVP_sha384();
    if (strcmp(hash, "sha512") == 0)
        return EVP_sha512();
    return NULL;
}

int build_sign_module(const char *in, const char *out, const char *key_path, const char *cert_path,
                      const char *hash, struct kf_err *err)
{
    const unsigned flags = CMS_NOCERTS | CMS_NOATTR | CMS_BINARY | CMS_NOSMIMECAP | CMS_DETACHED;
    unsigned char trailer[12 + BUILD_SIG_MARKER_LEN];
    struct build_tmp tmp = {-1, NULL, NULL};
    struct build_map m = {NULL, 0, 0};
    struct build_modinfo mi;
    const EVP_MD *md = pick_hash(hash);
    unsigned char *der = NULL, *p;
    CMS_ContentInfo *cms = NULL;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    BIO *content = NULL;
    int tmp_open = 0, rc = 0, derlen;

    ERR_clear_error();
    if (out == NULL)
        out = in;
    if (md == NULL) {
        rc = kf_err_set(err, KF_EINVAL, "signature hash '%s': use sha256, sha384 or sha512", hash);
        goto out;
    }
    rc = load_key(key_path, &key, cert_path ? NULL : &cert, err);
    if (rc != 0)
        goto out;
    rc = check_key_type(key, key_path, err);
    if (rc != 0)
        goto out;
    if (cert_path != NULL) {
        rc = load_cert(cert_path, &cert, err);
        if (rc != 0)
            goto out;
    }
    if (X509_check_private_key(cert, key) != 1) {
        rc = build_ssl_err(err, KF_EINVAL, "%s: the certificate %s is not for this key", key_path,
                           cert_path ? cert_path : "in the key file");
        goto out;
    }

    rc = build_map_open(&m, in, err);
    if (rc != 0)
        goto out;
    /* Any trailing marker, even a malformed one, means the kernel would
     * read this file as signed: never sign on top of it. */
    if (m.len >= BUILD_SIG_MARKER_LEN && memcmp(m.data + m.len - BUILD_SIG_MARKER_LEN,
                                                BUILD_SIG_MARKER, BUILD_SIG_MARKER_LEN) == 0) {
        rc = kf_err_set(err, KF_EEXIST,
                        "%s: already signed (strip it to drop the old signature, then sign)", in);
        goto out;
    }
    /* Only a module is signed: a wrong path must not produce a "signed"
     * file that the kernel would refuse anyway. */
    rc = build_modinfo_parse(m.data, m.len, in, &mi, err);
    if (rc != 0)
        goto out;
    if (m.len > INT32_MAX) {
        rc = kf_err_set(err, KF_EINVAL, "%s: too large to sign (%zu bytes)", in, m.len);
        goto out;
    }
    content = BIO_new_mem_buf(m.data, (int)m.len);
    if (content == NULL) {
        rc = build_ssl_err(err, KF_ENOMEM, "%s: out of memory", in);
        goto out;
    }
    /* As sign-file: a partial SignedData, one signer with the chosen
     * digest, then the digest of the content. */
    cms = CMS_sign(NULL, NULL, NULL, NULL, flags | CMS_PARTIAL);
    if (cms == NULL || CMS_add1_signer(cms, cert, key, md, flags) == NULL ||
        CMS_final(cms, content, NULL, flags) != 1) {
        rc = build_ssl_err(err, KF_EIO, "%s: CMS signing failed", in);
        goto out;
    }
    derlen = i2d_CMS_ContentInfo(cms, NULL);
    if (derlen <= 0 || (der = malloc((size_t)derlen)) == NULL) {
        rc = build_ssl_err(err, KF_ENOMEM, "%s: cannot encode the signature", in);
        goto out;
    }
    p = der;
    if (i2d_CMS_ContentInfo(cms, &p) != derlen) {
        rc = build_ssl_err(err, KF_EIO, "%s: cannot encode the signature", in);
        goto out;
    }

    memset(trailer, 0, 12);
    trailer[2] = 2; /* PKEY_ID_PKCS7 */
    trailer[8] = (unsigned char)((unsigned)derlen >> 24);
    trailer[9] = (unsigned char)((unsigned)derlen >> 16);
    trailer[10] = (unsigned char)((unsigned)derlen >> 8);
    trailer[11] = (unsigned char)derlen;
    memcpy(trailer + 12, BUILD_SIG_MARKER, BUILD_SIG_MARKER_LEN);

    /* Written beside out and renamed, so out is either the old file or the
     * whole signed module, even when out is in. */
    rc = build_tmp_open(&tmp, out, m.mode ? m.mode : 0644, err);
    if (rc != 0)
        goto out;
    tmp_open = 1;
    if ((rc = build_tmp_write(&tmp, m.data, m.len, err)) != 0 ||
        (rc = build_tmp_write(&tmp, der, (size_t)derlen, err)) != 0 ||
        (rc = build_tmp_write(&tmp, trailer, sizeof(trailer), err)) != 0)
        goto out;
    tmp_open = 0;
    rc = build_tmp_commit(&tmp, 1, err);
out:
    if (tmp_open)
        build_tmp_abort(&tmp);
    free(der);
    CMS_ContentInfo_free(cms);
    BIO_free(content);
    build_map_close(&m);
    X509_free(cert);
    EVP_PKEY_free(key);
    ERR_clear_error();
    return rc;
}

int build_verify_module_signature(const char *path, const char *cert_path, struct kf_err *err)
{
    const unsigned verify_flags = CMS_NO_SIGNER_CERT_VERIFY | CMS_BINARY | CMS_DETACHED;
    struct build_map m = {NULL, 0, 0};
    STACK_OF(X509) *certs = NULL;
    CMS_ContentInfo *cms = NULL;
    size_t module_len, sig_len;
    const unsigned char *p;
    BIO *content = NULL;
    X509 *cert = NULL;
    int rc;

    ERR_clear_error();
    rc = load_cert(cert_path, &cert, err);
    if (rc != 0)
        goto out;
    rc = build_map_open(&m, path, err);
    if (rc != 0)
        goto out;
    rc = build_sig_trailer_parse(m.data, m.len, path, &module_len, &sig_len, err);
    if (rc != 0)
        goto out;
    if (module_len > INT32_MAX || sig_len > INT32_MAX) {
        rc = kf_err_set(err, KF_EINVAL, "%s: too large to verify", path);
        goto out;
    }
    p = m.data + module_len;
    cms = d2i_CMS_ContentInfo(NULL, &p, (long)sig_len);
    /* The kernel's ASN.1 parser wants the signature to fill its space
     * exactly; so do we. */
    if (cms == NULL || p != m.data + module_len + sig_len) {
        rc = build_ssl_err(err, KF_EPARSE, "%s: the appended signature is not one DER CMS", path);
        goto out;
    }
    /* With content inside the CMS, CMS_verify would check that content and
     * not the module: the kernel only takes detached signatures. */
    if (CMS_is_detached(cms) != 1) {
        rc = kf_err_set(err, KF_EPARSE, "%s: the signature is not detached", path);
        goto out;
    }
    content = BIO_new_mem_buf(module_len ? (const void *)m.data : "", (int)module_len);
    certs = sk_X509_new_null();
    if (content == NULL || certs == NULL || !sk_X509_push(certs, cert)) {
        rc = build_ssl_err(err, KF_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    if (CMS_verify(cms, certs, NULL, content, NULL, verify_flags) != 1) {
        rc = build_ssl_err(err, KF_EAUTH, "%s: signature does not verify with %s", path, cert_path);
        goto out;
    }
out:
    sk_X509_free(certs); /* the stack only; cert is freed below */
    BIO_free(content);
    CMS_ContentInfo_free(cms);
    build_map_close(&m);
    X509_free(cert);
    ERR_clear_error();
    return rc;
}
