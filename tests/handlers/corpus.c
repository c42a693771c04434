/* The differential corpus of the wasm engines (tests/wasm_engines.rs): one handler whose
 * paths end in each way a handler can end. Built by scripts/build-examples into
 * examples/wasm/target/corpus.wasm. Nothing here prints what differs between VMs or
 * engines (random bytes, VM ids, memory limits), so both engines must answer alike. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int arg(int argc, char **argv, int dflt) { return argc > 1 ? atoi(argv[1]) : dflt; }

static int one(int x) { return x + 1; }

static __attribute__((noinline)) int depth(volatile int n) {
    if (n <= 0)
        return 0;
    volatile int pad[4] = {n, n, n, n};
    return depth(n - 1) + 1 + (pad[0] - n);
}

int main(int argc, char **argv) {
    const char *p = getenv("PATH_INFO");
    volatile int zero = 0, seven = 7, min = INT_MIN, minus = -1;
    if (!p)
        p = "";
    if (!strcmp(p, "/unreachable"))
        __builtin_trap();
    if (!strcmp(p, "/oob"))
        *(volatile int *)(uintptr_t)0xfffffff0u = 1;
    /* A load whose value is dropped must trap too (the compiled code keeps the check, not
     * the load). */
    if (!strcmp(p, "/oob-load"))
        (void)*(volatile int *)(uintptr_t)0xfffffff0u;
    if (!strcmp(p, "/div0"))
        printf("%d", seven / zero);
    if (!strcmp(p, "/overflow"))
        printf("%d", min / minus);
    if (!strcmp(p, "/indirect")) {
        void *volatile f = (void *)one;
        printf("%d", ((int (*)(int, int))f)(1, 2));
    }
    if (!strcmp(p, "/null")) {
        int (*volatile f)(int) = 0;
        printf("%d", f(1));
    }
    if (!strcmp(p, "/exit"))
        exit(arg(argc, argv, 3));
    if (!strcmp(p, "/loop"))
        for (volatile unsigned i = 0;; i++) {
        }
    if (!strcmp(p, "/recurse")) {
        int n = arg(argc, argv, 100);
        printf("Content-Type: text/plain\n\ndepth %d\n", depth(n));
        return 0;
    }
    if (!strcmp(p, "/grow")) {
        /* memory.grow one page at a time until it fails: the limit is the VM's. */
        while (__builtin_wasm_memory_grow(0, 1) != (size_t)-1) {
        }
        printf("Content-Type: text/plain\n\nmemory.grow failed at the limit\n");
        return 0;
    }
    if (!strcmp(p, "/out")) {
        /* A body of N bytes (default 1 MiB less the header). */
        static const char head[] = "Content-Type: text/plain\n\n";
        static char chunk[65536];
        int n = arg(argc, argv, (1 << 20) - (int)sizeof head + 1);
        memset(chunk, 'a', sizeof chunk);
        fputs(head, stdout);
        for (int k; n > 0; n -= k) {
            k = n < (int)sizeof chunk ? n : (int)sizeof chunk;
            if (fwrite(chunk, 1, (size_t)k, stdout) != (size_t)k)
                return 1;
        }
        return 0;
    }
    if (!strcmp(p, "/widths")) {
        /* Stores of every width into the same bytes, at offsets the compiler cannot see,
         * each read back in every width: an engine that reorders overlapping accesses of
         * different widths answers differently. */
        static unsigned char buf[64];
        unsigned long long h = 1469598103934665603ull;
        volatile int a = 3, b = 5;
        for (int i = 0; i < 40; i++) {
            unsigned long long q = 0x0102030405060708ull * (unsigned)(i + 1);
            unsigned int d = 0xa0b0c0d0u ^ (unsigned)i;
            unsigned short w = (unsigned short)(0x1234 + i);
            int o = (i * a) % 48, o2 = (i * b) % 48;
            memcpy(buf + o, &q, 8);
            memcpy(buf + o2, &d, 4);
            memcpy(buf + o + 1, &w, 2);
            buf[o2 + 2] ^= (unsigned char)i;
            memcpy(&q, buf + o2, 8);
            memcpy(&d, buf + o, 4);
            memcpy(&w, buf + o2 + 1, 2);
            h = (h ^ q ^ d ^ w) * 1099511628211ull;
        }
        for (int i = 0; i < 64; i++)
            h = (h ^ buf[i]) * 1099511628211ull;
        printf("Content-Type: text/plain\n\nwidths: %llx\n", h);
        return 0;
    }
    printf("Content-Type: text/plain\n\ncorpus: %s\n", p);
    return 0;
}
