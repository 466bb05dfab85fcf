/*
 * The no-Python ceiling of scripts/bench/run: a FastCGI responder in C on libfcgi
 * (fcgiapp.h, FCGX_Accept_r), answering the same bytes as bench/apps.py.
 *
 *   responder SCENARIO SOCKET [THREADS]
 *
 * SCENARIO is hello (13 bytes), kib16 (16 KiB), echo (the request body back) or stream
 * (100 chunks of 1 KiB, each flushed, no Content-Length). SOCKET is a Unix socket path.
 * THREADS workers (default 1) share the listening socket, as libfcgi's examples/threaded.c
 * does: accept under a mutex, then serve that connection. libfcgi keeps a connection when the
 * client sets FCGI_KEEP_CONN and reads its next request from it, so a worker serves one
 * connection at a time; the benchmark therefore gives it a new connection per request.
 *
 * Build: gcc -O2 -o responder responder.c -lfcgi -lpthread
 */
#include <fcgiapp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char HELLO[] = "Hello, World!";
static const char PATTERN[] = "0123456789abcdef"; /* KIB16 and STREAM_CHUNK repeat it */
#define KIB16_LEN (16 * 1024)
#define STREAM_CHUNK_LEN 1024
#define STREAM_CHUNKS 100
#define ECHO_MAX (64 * 1024 * 1024)

typedef enum { HELLO_WORLD, KIB16, ECHO, STREAM } Scenario;

static Scenario scenario;
static int listen_fd;
static char kib16[KIB16_LEN];
static char chunk[STREAM_CHUNK_LEN];
static pthread_mutex_t accept_lock = PTHREAD_MUTEX_INITIALIZER;

static void fill_pattern(char *buf, size_t len) {
    for (size_t i = 0; i < len; i++) buf[i] = PATTERN[i % 16];
}

static void serve(FCGX_Request *req, char **echo_buf, size_t *echo_cap) {
    switch (scenario) {
    case HELLO_WORLD:
        FCGX_FPrintF(req->out, "Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n",
                     (int)(sizeof HELLO - 1));
        FCGX_PutStr(HELLO, sizeof HELLO - 1, req->out);
        break;
    case KIB16:
        FCGX_FPrintF(req->out,
                     "Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n",
                     KIB16_LEN);
        FCGX_PutStr(kib16, KIB16_LEN, req->out);
        break;
    case ECHO: {
        const char *cl = FCGX_GetParam("CONTENT_LENGTH", req->envp);
        long want = cl ? strtol(cl, NULL, 10) : 0;
        if (want < 0 || want > ECHO_MAX) {
            FCGX_FPrintF(req->out, "Status: 413 Payload Too Large\r\n\r\n");
            break;
        }
        if ((size_t)want > *echo_cap) {
            char *grown = realloc(*echo_buf, (size_t)want);
            if (!grown) {
                FCGX_FPrintF(req->out, "Status: 500 Internal Server Error\r\n\r\n");
                break;
            }
            *echo_buf = grown;
            *echo_cap = (size_t)want;
        }
        int got = 0;
        while (got < want) {
            int n = FCGX_GetStr(*echo_buf + got, (int)(want - got), req->in);
            if (n <= 0) break;
            got += n;
        }
        FCGX_FPrintF(req->out,
                     "Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", got);
        FCGX_PutStr(*echo_buf, got, req->out);
        break;
    }
    case STREAM:
        FCGX_FPrintF(req->out, "Content-Type: application/octet-stream\r\n\r\n");
        /* Flush every chunk, as a WSGI server sends each item of the iterable. */
        for (int i = 0; i < STREAM_CHUNKS; i++) {
            FCGX_PutStr(chunk, STREAM_CHUNK_LEN, req->out);
            FCGX_FFlush(req->out);
        }
        break;
    }
}

static void *worker(void *unused) {
    (void)unused;
    FCGX_Request req;
    char *echo_buf = NULL;
    size_t echo_cap = 0;
    if (FCGX_InitRequest(&req, listen_fd, 0) != 0) return NULL;
    for (;;) {
        pthread_mutex_lock(&accept_lock);
        int rc = FCGX_Accept_r(&req);
        pthread_mutex_unlock(&accept_lock);
        if (rc < 0) break;
        serve(&req, &echo_buf, &echo_cap);
        /* Without FCGI_KEEP_CONN libfcgi closes with a "lingering close": shutdown, then wait
         * up to 2 s for the client's EOF, a guard against TCP resets. On a Unix socket it
         * only stalls this worker until the client gets round to closing; a detached request
         * is closed at once, as uWSGI and pyfcgi close. */
        if (!req.keepConnection) FCGX_Detach(&req);
        FCGX_Finish_r(&req);
    }
    free(echo_buf);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s hello|kib16|echo|stream SOCKET [THREADS]\n", argv[0]);
        return 2;
    }
    if (!strcmp(argv[1], "hello")) scenario = HELLO_WORLD;
    else if (!strcmp(argv[1], "kib16")) scenario = KIB16;
    else if (!strcmp(argv[1], "echo")) scenario = ECHO;
    else if (!strcmp(argv[1], "stream")) scenario = STREAM;
    else {
        fprintf(stderr, "responder: unknown scenario '%s' (hello, kib16, echo, stream)\n", argv[1]);
        return 2;
    }
    int threads = argc == 4 ? atoi(argv[3]) : 1;
    if (threads < 1 || threads > 256) {
        fprintf(stderr, "responder: THREADS must be 1..256, not '%s'\n", argv[3]);
        return 2;
    }
    fill_pattern(kib16, KIB16_LEN);
    fill_pattern(chunk, STREAM_CHUNK_LEN);
    if (FCGX_Init() != 0) {
        fprintf(stderr, "responder: FCGX_Init failed\n");
        return 1;
    }
    /* A path without ':' is a Unix socket to libfcgi. */
    listen_fd = FCGX_OpenSocket(argv[2], 1024);
    if (listen_fd < 0) {
        fprintf(stderr, "responder: cannot listen on %s\n", argv[2]);
        return 1;
    }
    pthread_t ids[256];
    for (int i = 1; i < threads; i++) pthread_create(&ids[i], NULL, worker, NULL);
    worker(NULL);
    for (int i = 1; i < threads; i++) pthread_join(ids[i], NULL);
    return 0;
}
