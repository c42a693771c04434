/* A dust WebAssembly handler in C (WAGI: the request in the environment and on stdin, the
 * response on stdout). Build with Debian's clang, lld and wasi-libc:
 *   clang --target=wasm32-wasi --sysroot=/usr -O2 -o hello-c.wasm hello.c
 * Paths: /missing (404 and a header), /log (a stderr line), /sqrt?2 (floats), /trap
 * (a wasm trap: 502), /loop (never ends: 504); anything else echoes the request. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static unsigned requests; /* always 1: every request gets a fresh instance */

static const char *var(const char *name) {
    const char *v = getenv(name);
    return v ? v : "";
}

int main(int argc, char **argv) {
    const char *method = var("REQUEST_METHOD"), *path = var("PATH_INFO");
    unsigned n = ++requests;
    unsigned long len = 0;
    unsigned sum = 0;
    int c;
    while ((c = getchar()) != EOF) {
        sum = sum * 31u + (unsigned char)c;
        len++;
    }
    if (strcmp(path, "/missing") == 0) {
        printf("Status: 404 Not Found\nContent-Type: text/plain\nX-Handler: hello-c\n\n"
               "no such page: %s\n", path);
        return 0;
    }
    if (strcmp(path, "/log") == 0)
        fprintf(stderr, "hello-c: logging for %s %s\n", method, path);
    if (strcmp(path, "/trap") == 0)
        __builtin_trap();
    if (strcmp(path, "/loop") == 0)
        for (volatile unsigned i = 0;; i++) {}
    if (strcmp(path, "/sqrt") == 0) {
        double x = argc > 1 ? atof(argv[1]) : 2.0;
        printf("Content-Type: text/plain\n\nsqrt(%g) = %.17g\n", x, sqrt(x));
        return 0;
    }
    printf("Content-Type: text/plain\nX-Handler: hello-c\n\n"
           "hello from c: method=%s path=%s query=%s args=", method, path, var("QUERY_STRING"));
    for (int i = 1; i < argc; i++)
        printf("%s%s", i > 1 ? "," : "", argv[i]);
    unsigned char r[8] = {0};
    int errno_ = getentropy(r, sizeof r); /* WASI random_get */
    printf(" body=%lu sum=%u requests=%u random=", len, sum, n);
    for (int i = 0; i < 8; i++)
        printf("%02x", r[i]);
    printf(" errno=%d vm=%s\n", errno_, var("X_DUST_VM"));
    return 0;
}
