/* libFuzzer target for the webhook receiver's pure parts.
 *
 * Input: "<signature header>\n<raw body>" (no '\n': all header, empty body). Runs
 * webhook_verify and webhook_parse on them, counts and renders the parsed type in
 * the metrics, and checks a few properties (abort() = finding):
 *   - a result is one of the enum values, the scheme one of the three names;
 *   - "sha256=<HMAC of the body>" computed here always verifies, a flipped one never;
 *   - a parsed event has a non-empty id and type that fit their buffers;
 *   - the metrics text ends with a newline and every line is a comment or a sample.
 * Built and run by tests/fuzz/build_and_run.sh. */
#include <openssl/hmac.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "webhook.h"

#define SECRET "whsec_test_secret"
#define NOW 1767225600.0   /* the seeds' timestamp */

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "property violated: %s\n", what);
        abort();
    }
}

static void check_metrics_text(void)
{
    char *text = metrics_render();
    check(text != NULL, "metrics_render returned NULL");
    size_t n = strlen(text);
    check(n > 0 && text[n - 1] == '\n', "metrics text ends with a newline");
    for (char *line = text; *line;) {
        char *nl = strchr(line, '\n');
        check(line[0] == '#' || strncmp(line, "sendry_sync_", 12) == 0, "metrics line prefix");
        line = nl + 1;
    }
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned runs;
    const char *nl = memchr(data, '\n', size);
    size_t hlen = nl ? (size_t)(nl - (const char *)data) : size;
    char *header = malloc(hlen + 1);
    if (!header)
        return 0;
    memcpy(header, data, hlen);
    header[hlen] = '\0';   /* a NUL inside simply ends the header, as in a C string */
    const char *body = nl ? nl + 1 : "";
    size_t blen = nl ? size - hlen - 1 : 0;

    /* The body in a buffer of its own, so ASan sees any read past len. */
    char *b = malloc(blen ? blen : 1);
    if (!b) {
        free(header);
        return 0;
    }
    memcpy(b, body, blen);

    const char *scheme = NULL;
    enum sig_result r = webhook_verify(SECRET, header, b, blen, NOW, &scheme);
    check(r >= SIG_OK && r <= SIG_STALE, "sig_result in range");
    check(scheme && (!strcmp(scheme, "none") || !strcmp(scheme, "body") || !strcmp(scheme, "timestamped")),
          "scheme name");
    check(r != SIG_OK || strcmp(scheme, "none") != 0, "OK has a scheme");
    (void)webhook_verify(SECRET, NULL, b, blen, NOW, NULL);
    (void)webhook_sig_str(r);

    /* Oracle: our own body MAC verifies, a flipped one does not. */
    unsigned char mac[32];
    unsigned int maclen = 0;
    if (HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (const unsigned char *)b, blen, mac, &maclen)) {
        char sig[7 + 64 + 1] = "sha256=";
        for (unsigned i = 0; i < 32; i++)
            snprintf(sig + 7 + 2 * i, 3, "%02X", mac[i]);
        check(webhook_verify(SECRET, sig, b, blen, NOW, NULL) == SIG_OK, "own MAC verifies");
        sig[7] = sig[7] == '0' ? '1' : '0';
        check(webhook_verify(SECRET, sig, b, blen, NOW, NULL) == SIG_MISMATCH, "flipped MAC fails");
    }

    char id[WEBHOOK_ID_SIZE], type[WEBHOOK_TYPE_SIZE], small_id[16], small_type[8];
    bool ok = webhook_parse(b, blen, id, sizeof id, type, sizeof type);
    if (ok) {
        check(id[0] && strlen(id) < sizeof id, "id set");
        check(type[0] && strlen(type) < sizeof type, "type set");
    } else {
        check(id[0] == '\0' && type[0] == '\0', "outputs cleared on failure");
    }
    if (webhook_parse(b, blen, small_id, sizeof small_id, small_type, sizeof small_type))
        check(ok && !strcmp(small_id, id) && !strcmp(small_type, type), "small buffers agree");

    static const char *const results[] = {"applied", "duplicate", "ignored", "unauthorized",
                                          "bad_request", "too_large", "error"};
    metrics_webhook(ok ? type : "invalid", results[(size + hlen) % 7]);
    metrics_webhook(header, header);   /* hostile labels */
    metrics_http((long)(size % 700));
    metrics_claim((int)(size % 1500) - 10);
    if (++runs % 5000 == 0)
        metrics_reset();
    if (runs % 16 == 0 || size % 61 == 0)
        check_metrics_text();

    free(b);
    free(header);
    return 0;
}
