/* The chaos suite's slow-fsync fault: an LD_PRELOAD shim that sleeps before fsync,
 * fdatasync and sync_file_range (what sled and the CAS use to make writes durable) for
 * as many milliseconds as the file named by CHAOS_FSYNC_DELAY_FILE says, read on every
 * call so the delay can be turned on and off while the process runs. Built by the suite
 * with `cc -shared -fPIC` (this machine's kernel has no device-mapper delay target). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <fcntl.h>

static void slow(void) {
    const char *path = getenv("CHAOS_FSYNC_DELAY_FILE");
    long ms = 0;
    FILE *f;
    if (!path || !(f = fopen(path, "r")))
        return;
    if (fscanf(f, "%ld", &ms) != 1)
        ms = 0;
    fclose(f);
    if (ms > 0) {
        struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&t, NULL);
    }
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow();
    return real(fd);
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags) {
    static int (*real)(int, off_t, off_t, unsigned int);
    if (!real)
        real = (int (*)(int, off_t, off_t, unsigned int))dlsym(RTLD_NEXT, "sync_file_range");
    slow();
    return real(fd, offset, nbytes, flags);
}
