/*
 * An LD_PRELOAD shim for the fsync benchmark (bench/phase_fsync.py): every fsync() and
 * fdatasync() of the process sleeps FSYNC_DELAY_MS milliseconds first, then makes the real call.
 * It stands in for storage whose flushes take that long (an SD card, a busy network disk): the
 * daemon waits exactly as it would there, in the thread that called. The first call says once,
 * on standard error, that the shim is active, so the benchmark can check that it was.
 *
 *     cc -shared -fPIC -O2 -o fsync_delay.so fsync_delay.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long delay_ms(void)
{
    static long value = -1;
    if (value < 0) {
        const char *text = getenv("FSYNC_DELAY_MS");
        value = text ? atol(text) : 0;
        fprintf(stderr, "fsync-delay: %ld ms before every fsync\n", value);
    }
    return value;
}

static void wait_a_flush(void)
{
    long ms = delay_ms();
    struct timespec pause = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&pause, &pause) != 0) {
    }
}

int fsync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    wait_a_flush();
    return real(fd);
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    wait_a_flush();
    return real(fd);
}
