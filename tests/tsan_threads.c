/* For ThreadSanitizer builds only: C11 threads made of POSIX threads.
 *
 * Debian's librdkafka starts its threads and takes its locks through C11
 * <threads.h>.  glibc implements those without calling the pthread
 * functions that clang 14's ThreadSanitizer intercepts, so TSan never sees
 * librdkafka's threads start (it crashes in them) nor its locks (it would
 * report races its locks prevent).  Linked into a test program, these
 * definitions take the place of glibc's for librdkafka, and each goes
 * through the pthread call TSan knows.  glibc's C11 types are laid out as
 * the pthread ones (thrd_t is a pthread_t, mtx_t a pthread_mutex_t, cnd_t
 * a pthread_cond_t, once_flag a pthread_once_t). */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <threads.h>

/* Seen by the dynamic linker, though the project builds with hidden
 * visibility. */
#pragma GCC visibility push(default)

_Static_assert(sizeof(mtx_t) == sizeof(pthread_mutex_t), "mtx_t layout");
_Static_assert(sizeof(cnd_t) == sizeof(pthread_cond_t), "cnd_t layout");
_Static_assert(sizeof(thrd_t) == sizeof(pthread_t), "thrd_t layout");
_Static_assert(sizeof(once_flag) == sizeof(pthread_once_t), "once layout");

struct start {
    thrd_start_t fn;
    void *arg;
};

static void *run_start(void *p)
{
    struct start s = *(struct start *)p;
    free(p);
    return (void *)(intptr_t)s.fn(s.arg);
}

static int result(int rc)
{
    return rc == 0                        ? thrd_success
           : rc == ETIMEDOUT              ? thrd_timedout
           : rc == EBUSY                  ? thrd_busy
           : rc == ENOMEM || rc == EAGAIN ? thrd_nomem
                                          : thrd_error;
}

int thrd_create(thrd_t *t, thrd_start_t fn, void *arg)
{
    struct start *s = malloc(sizeof *s);
    if (!s)
        return thrd_nomem;
    s->fn = fn;
    s->arg = arg;
    int rc = pthread_create((pthread_t *)t, NULL, run_start, s);
    if (rc)
        free(s);
    return result(rc);
}

int thrd_join(thrd_t t, int *res)
{
    void *r = NULL;
    int rc = pthread_join((pthread_t)t, &r);
    if (!rc && res)
        *res = (int)(intptr_t)r;
    return result(rc);
}

int thrd_detach(thrd_t t)
{
    return result(pthread_detach((pthread_t)t));
}

int mtx_init(mtx_t *m, int type)
{
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    if (type & mtx_recursive)
        pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    int rc = pthread_mutex_init((pthread_mutex_t *)m, &a);
    pthread_mutexattr_destroy(&a);
    return result(rc);
}

int mtx_lock(mtx_t *m)
{
    return result(pthread_mutex_lock((pthread_mutex_t *)m));
}

int mtx_trylock(mtx_t *m)
{
    return result(pthread_mutex_trylock((pthread_mutex_t *)m));
}

int mtx_timedlock(mtx_t *restrict m, const struct timespec *restrict ts)
{
    return result(pthread_mutex_timedlock((pthread_mutex_t *)m, ts));
}

int mtx_unlock(mtx_t *m)
{
    return result(pthread_mutex_unlock((pthread_mutex_t *)m));
}

void mtx_destroy(mtx_t *m)
{
    pthread_mutex_destroy((pthread_mutex_t *)m);
}

int cnd_init(cnd_t *c)
{
    return result(pthread_cond_init((pthread_cond_t *)c, NULL));
}

int cnd_signal(cnd_t *c)
{
    return result(pthread_cond_signal((pthread_cond_t *)c));
}

int cnd_broadcast(cnd_t *c)
{
    return result(pthread_cond_broadcast((pthread_cond_t *)c));
}

int cnd_wait(cnd_t *c, mtx_t *m)
{
    return result(pthread_cond_wait((pthread_cond_t *)c, (pthread_mutex_t *)m));
}

int cnd_timedwait(cnd_t *restrict c, mtx_t *restrict m,
                  const struct timespec *restrict ts)
{
    return result(
        pthread_cond_timedwait((pthread_cond_t *)c, (pthread_mutex_t *)m, ts));
}

void cnd_destroy(cnd_t *c)
{
    pthread_cond_destroy((pthread_cond_t *)c);
}

void call_once(once_flag *f, void (*fn)(void))
{
    pthread_once((pthread_once_t *)f, fn);
}

#pragma GCC visibility pop
