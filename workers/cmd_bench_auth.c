/*
 * cmd_bench_auth.c: `cinematch bench auth`, the per-request costs of the
 * security layer, each beside a baseline measured in the same run:
 *
 *   JWT verify (whole pipeline)  vs  one bare HMAC-SHA256 of the token
 *   API key verify (SHA-256)     vs  the same
 *   token bucket take (C)        (absolute)
 *   argon2id hash at several cost settings, the default marked
 *
 * Numbers go to docs/BENCHMARKS.md with the command and the machine.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "cinematch/common.h"
#include "cinematch/authkeys.h"
#include "cinematch/jwt.h"
#include "cinematch/ratelimit.h"
#include "cmd.h"

static int cm_bench_auth_main(int argc, char **argv);

CM_COMMAND("bench auth", "benchmark JWT verify, key hashing, argon2id costs",
           cm_bench_auth_main);


static double
cm_secs(uint64_t t0)
{
    return (double) (cm_now_mono_ns() - t0) / 1e9;
}


static int
cm_bench_auth_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "iterations", required_argument, NULL, 'n' },
        { "help",       no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    static const cm_pwhash_params_t  costs[] = {
        { 2, (size_t) 19 * 1024 * 1024 },      /* OWASP minimum */
        { 2, (size_t) 64 * 1024 * 1024 },      /* our default (libsodium INTERACTIVE) */
        { 3, (size_t) 64 * 1024 * 1024 },      /* RFC 9106 second recommendation */
    };
    const char          *secret = "bench-secret-0123456789abcdef-0123456789";
    long                 iters = 200000;
    int                  c, rc, i;
    long                 k, nsign;
    char                 tok[CM_JWT_MAX_TOKEN + 1], hash[CM_PWHASH_STRLEN];
    size_t               toklen;
    cm_jwt_key_t         key;
    cm_jwt_keyring_t     ring;
    cm_jwt_claims_t      cl, out;
    cm_apikey_t          ak;
    cm_ratelimit_t       rl;
    cm_tbucket_t         b;
    cm_ratelimit_result_t r;
    uint8_t              mac[32];
    unsigned int         maclen;
    uint64_t             t0;
    double               base, t, per, best;
    volatile unsigned    sink = 0;

    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'n':
            iters = strtol(optarg, NULL, 10);
            if (iters < 1000 || iters > 100000000) {
                fprintf(stderr, "cinematch bench auth: --iterations wants"
                        " 1000..100000000\n");
                return 2;
            }
            break;
        case 'h':
            printf("usage: cinematch bench auth [--iterations N]"
                   " (default 200000)\n");
            return 0;
        default:
            fprintf(stderr, "cinematch bench auth: unknown or incomplete"
                    " option '%s' (see --help)\n", argv[optind - 1]);
            return 2;
        }
    }

    if (cm_jwt_key_init(&key, secret, strlen(secret), NULL, 0) != 0
        || cm_jwt_keyring_init(&ring, &key, NULL, "cinematch",
                               "cinematch-api", 30, NULL, 0) != 0)
    {
        return 1;
    }
    memset(&cl, 0, sizeof(cl));
    strcpy(cl.sub, "10000042");
    strcpy(cl.jti, "0b6c9d0e-6a4f-4b7e-9d55-2c1f3f3f0a11");
    strcpy(cl.role, "user");
    cl.iat = 1767225600;
    cl.exp = cl.iat + 900;
    if (cm_jwt_sign(&ring, &cl, tok, sizeof(tok), &toklen) != 0) {
        return 1;
    }

    printf("cinematch bench auth: %ld iterations, token %zu bytes\n",
           iters, toklen);

    t0 = cm_now_mono_ns();
    for (k = 0; k < iters; k++) {
        HMAC(EVP_sha256(), key.secret, (int) key.len, (uint8_t *) tok,
             toklen, mac, &maclen);
        sink += mac[0];
    }
    base = cm_secs(t0);
    printf("  %-34s %8.2f us/op %10.0f op/s  (baseline)\n",
           "HMAC-SHA256 of the token", base / iters * 1e6, iters / base);

    t0 = cm_now_mono_ns();
    for (k = 0; k < iters; k++) {
        rc = cm_jwt_verify(&ring, tok, toklen, cl.iat + 10, &out);
        sink += (unsigned) rc;
    }
    t = cm_secs(t0);
    printf("  %-34s %8.2f us/op %10.0f op/s  %.2fx baseline\n",
           "JWT verify (full)", t / iters * 1e6, iters / t, t / base);

    nsign = iters / 10;        /* whole signs; the division is meant */
    t0 = cm_now_mono_ns();
    for (k = 0; k < nsign; k++) {
        rc = cm_jwt_sign(&ring, &cl, tok, sizeof(tok), &toklen);
        sink += (unsigned) rc;
    }
    t = cm_secs(t0);
    printf("  %-34s %8.2f us/op %10.0f op/s  %.2fx baseline\n",
           "JWT sign", t / (double) nsign * 1e6, (double) nsign / t,
           (t / (double) nsign) / (base / (double) iters));

    cm_apikey_generate(&ak);
    t0 = cm_now_mono_ns();
    for (k = 0; k < iters; k++) {
        rc = cm_apikey_verify(ak.key, CM_APIKEY_LEN, ak.sha256);
        sink += (unsigned) rc;
    }
    t = cm_secs(t0);
    printf("  %-34s %8.2f us/op %10.0f op/s  %.2fx baseline\n",
           "API key verify (SHA-256)", t / iters * 1e6, iters / t, t / base);

    cm_ratelimit_parse(&rl, "100r/m burst=20", 15, NULL, 0);
    memset(&b, 0, sizeof(b));
    t0 = cm_now_mono_ns();
    for (k = 0; k < iters; k++) {
        cm_tbucket_take(&rl, &b, (uint64_t) k, &r);
        sink += (unsigned) r.allowed;
    }
    t = cm_secs(t0);
    printf("  %-34s %8.3f us/op %10.0f op/s\n", "token bucket take (C)",
           t / iters * 1e6, iters / t);

    printf("  argon2id (p=1), best of 3 hashes each:\n");
    for (i = 0; i < (int) CM_ARRAY_SIZE(costs); i++) {
        int j;

        best = 1e9;
        for (j = 0; j < 3; j++) {
            t0 = cm_now_mono_ns();
            if (cm_password_hash(hash, "correct horse battery", 21,
                                 &costs[i]) != 0)
            {
                printf("    hash failed (memory?)\n");
                return 1;
            }
            per = cm_secs(t0);
            best = per < best ? per : best;
        }
        printf("    t=%llu m=%3zu MiB  %7.1f ms/hash%s\n",
               costs[i].opslimit, costs[i].memlimit >> 20, best * 1e3,
               costs[i].opslimit == cm_pwhash_default.opslimit
               && costs[i].memlimit == cm_pwhash_default.memlimit
               ? "  (default)" : "");
    }
    t0 = cm_now_mono_ns();
    rc = cm_password_verify(hash, "correct horse battery", 21);
    printf("    verify at t=3 m=64 MiB: %.1f ms (%s)\n", cm_secs(t0) * 1e3,
           rc == 0 ? "match" : "MISMATCH");
    t0 = cm_now_mono_ns();
    cm_password_verify_dummy("x", 1, NULL);
    printf("    dummy verify at default: %.1f ms\n", cm_secs(t0) * 1e3);
    (void) sink;
    return 0;
}
