/*
 * The fsGroup walk of mount_utils/ownership.py, in C: the same rules, without the interpreter
 * between the syscalls and without the GIL, so that it runs on every core.
 *
 * Why it exists: the Python walk costs ~1 us of interpreter per file on top of its three syscalls
 * (fstatat, fchownat, fchmodat2), and Python threads do not help (the GIL), so it took 2.3-3.7x
 * `chgrp -R` on a tree that needs every inode changed (bench/fsgroup.py). Here the per-file loop is
 * only the syscalls, and several pthreads share a LIFO of work items (a batch of entries of one
 * listed directory), so the walk is bound by the kernel, not by Python.
 *
 * The rules are ownership.py's, which stays the reference (and the fallback when this module does
 * not build): group via fchownat(AT_SYMLINK_NOFOLLOW); modes | 0660 (| 0440 read-only), dirs also
 * setgid | 0110; setuid/setgid put back after a chown; only what is wrong is changed; directories
 * entered with openat(O_DIRECTORY|O_NOFOLLOW) and fixed through their fd; file modes set with
 * fchmodat2(AT_SYMLINK_NOFOLLOW) (syscall 452) or, on kernels without it, an O_PATH fd and its
 * /proc link (never a symlink's target); one filesystem only and never a mount point the caller
 * lists; failures collected with path and errno; a deadline. The root itself is not touched here:
 * the caller fixes it last, and only after a complete walk.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SYS_FCHMODAT2_NR 452
#define BATCH 2048
/* A subdirectory is walked inline (depth first, its fd the only one added) while no worker is
 * idle; this deep at most, then it is queued like any other. */
#define MAX_INLINE_DEPTH 64
#define DEADLINE_EVERY 64
/* How often (entries) a batch looks for an idle worker, and the least it hands over. */
#define SPLIT_EVERY 8
#define SPLIT_MIN 32
#define O_DIR_FLAGS (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)

struct linux_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* An open, listed directory: shared by its queued batches, freed by the last one. */
typedef struct dirref {
    int fd;
    int refs;
    char *path;
    size_t path_len;
    char *names;      /* NUL-terminated names, back to back */
    uint32_t *offs;   /* offset of each name in `names` */
    unsigned char *types;
    uint32_t count;
} dirref;

typedef struct {
    dirref *d;
    uint32_t start, end;
} item;

typedef struct {
    int err;
    char *path;
} failure;

typedef struct {
    /* inputs */
    dev_t root_dev;
    gid_t gid;
    int read_only;
    int workers;
    int has_deadline;
    double deadline;
    char **mount_points; /* sorted, for bsearch */
    Py_ssize_t n_mount_points;
    int max_errors;
    /* shared state */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    item *stack;
    size_t stack_len, stack_cap;
    int active;
    int waiting;
    int stopped;
    int timed_out;
    int chmod2; /* fchmodat2 works: -1 not tried yet, 0 no, 1 yes (atomic) */
    /* results */
    long long files, dirs, changed, failed;
    failure *errors;
    int n_errors;
    int oom;
} walk;

static double now_monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static char *join(const char *parent, size_t plen, const char *name, size_t *out_len) {
    size_t nlen = strlen(name);
    int sep = !(plen > 0 && parent[plen - 1] == '/');
    char *p = malloc(plen + sep + nlen + 1);
    if (!p)
        return NULL;
    memcpy(p, parent, plen);
    if (sep)
        p[plen] = '/';
    memcpy(p + plen + sep, name, nlen + 1);
    if (out_len)
        *out_len = plen + sep + nlen;
    return p;
}

static void fail(walk *w, int err, const dirref *parent, const char *name) {
    char *path = name ? join(parent->path, parent->path_len, name, NULL) : strdup(parent->path);
    pthread_mutex_lock(&w->mu);
    w->failed++;
    if (w->n_errors < w->max_errors && path) {
        w->errors[w->n_errors].err = err;
        w->errors[w->n_errors].path = path;
        w->n_errors++;
        path = NULL;
    }
    pthread_mutex_unlock(&w->mu);
    free(path);
}

static void release(walk *w, dirref *d) {
    int last;
    pthread_mutex_lock(&w->mu);
    last = --d->refs == 0;
    pthread_mutex_unlock(&w->mu);
    if (last) {
        close(d->fd);
        free(d->path);
        free(d->names);
        free(d->offs);
        free(d->types);
        free(d);
    }
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int is_mount_point(walk *w, const char *path) {
    if (w->n_mount_points == 0)
        return 0;
    return bsearch(&path, w->mount_points, (size_t)w->n_mount_points, sizeof(char *), cmp_str) != NULL;
}

static int deadline_passed(walk *w) {
    if (!w->has_deadline || now_monotonic() <= w->deadline)
        return 0;
    pthread_mutex_lock(&w->mu);
    w->timed_out = 1;
    w->stopped = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 1;
}

/* Read every entry of d->fd (but . and ..) into d's arrays. Returns 0 or an errno. */
static int list_dir(dirref *d) {
    char buf[32768];
    size_t names_cap = 4096, names_len = 0, cap = 64;
    d->names = malloc(names_cap);
    d->offs = malloc(cap * sizeof(uint32_t));
    d->types = malloc(cap);
    d->count = 0;
    if (!d->names || !d->offs || !d->types)
        return ENOMEM;
    for (;;) {
        long n = syscall(SYS_getdents64, d->fd, buf, sizeof(buf));
        if (n < 0)
            return errno;
        if (n == 0)
            return 0;
        for (long pos = 0; pos < n;) {
            struct linux_dirent64 *e = (struct linux_dirent64 *)(buf + pos);
            pos += e->d_reclen;
            const char *nm = e->d_name;
            if (nm[0] == '.' && (nm[1] == '\0' || (nm[1] == '.' && nm[2] == '\0')))
                continue;
            size_t len = strlen(nm) + 1;
            if (names_len + len > names_cap) {
                while (names_len + len > names_cap)
                    names_cap *= 2;
                char *nn = realloc(d->names, names_cap);
                if (!nn)
                    return ENOMEM;
                d->names = nn;
            }
            if (d->count == cap) {
                cap *= 2;
                uint32_t *no = realloc(d->offs, cap * sizeof(uint32_t));
                if (!no)
                    return ENOMEM;
                d->offs = no;
                unsigned char *nt = realloc(d->types, cap);
                if (!nt)
                    return ENOMEM;
                d->types = nt;
            }
            memcpy(d->names + names_len, nm, len);
            d->offs[d->count] = (uint32_t)names_len;
            d->types[d->count] = e->d_type;
            d->count++;
            names_len += len;
        }
    }
}

static mode_t wanted_mode(mode_t mode, int is_dir, int read_only) {
    mode_t want = (mode & 07777) | (read_only ? 0440 : 0660);
    if (is_dir)
        want |= S_ISGID | 0110;
    return want;
}

/* Kernel older than 6.6: what glibc's lchmod does, an O_PATH fd and its /proc link. */
static int chmod_proc_fd(int dir_fd, const char *name, mode_t mode) {
    int fd = openat(dir_fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno;
    struct stat st;
    int err = 0;
    if (fstat(fd, &st) != 0) {
        err = errno;
    } else if (!S_ISLNK(st.st_mode)) { /* swapped for a symlink since our stat: never its target */
        char link[64];
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        if (chmod(link, mode) != 0)
            err = errno;
    }
    close(fd);
    return err;
}

/* ownership.py's _chmod_nofollow, with the same fchmodat2 probing. Returns 0 or an errno. */
static int chmod_nofollow(walk *w, int dir_fd, const char *name, mode_t mode) {
    int works = __atomic_load_n(&w->chmod2, __ATOMIC_RELAXED);
    if (works != 0) {
        if (syscall(SYS_FCHMODAT2_NR, dir_fd, name, (unsigned)mode, AT_SYMLINK_NOFOLLOW) == 0) {
            __atomic_store_n(&w->chmod2, 1, __ATOMIC_RELAXED);
            return 0;
        }
        int err = errno;
        if ((err != ENOSYS && err != EPERM) || works == 1)
            return err;
        if (err == ENOSYS) {
            __atomic_store_n(&w->chmod2, 0, __ATOMIC_RELAXED);
        } else {
            /* EPERM before fchmodat2 ever worked: a seccomp filter, or just an immutable file.
             * Only a fallback that succeeds tells them apart. */
            int r = chmod_proc_fd(dir_fd, name, mode);
            if (r == 0)
                __atomic_store_n(&w->chmod2, 0, __ATOMIC_RELAXED);
            return r;
        }
    }
    return chmod_proc_fd(dir_fd, name, mode);
}

static void push_batches(walk *w, dirref *d);
static void push_range(walk *w, dirref *d, uint32_t start, uint32_t end);
static void do_batch(walk *w, dirref *d, uint32_t start, uint32_t end, int depth,
                     long long *files, long long *dirs, long long *changed);

/* Open a subdirectory, fix it through its fd and walk (or queue) its entries.
 * Adds 1 to *dirs if entered, 1 to *changed if changed; a mount below is not entered. */
static void do_dir(walk *w, dirref *parent, const char *name, int depth,
                   long long *files, long long *dirs, long long *changed) {
    int fd = openat(parent->fd, name, O_DIR_FLAGS);
    if (fd < 0) {
        int err = errno;
        /* deleted by the pod meanwhile, or swapped for a symlink/file: the next walk sees it */
        if (err != ENOENT && err != ELOOP && err != ENOTDIR)
            fail(w, err, parent, name);
        return;
    }
    size_t plen;
    char *path = join(parent->path, parent->path_len, name, &plen);
    if (!path) {
        close(fd);
        fail(w, ENOMEM, parent, name);
        return;
    }
    struct stat st;
    int did = 0, err = 0;
    if (fstat(fd, &st) != 0) {
        err = errno;
    } else if (st.st_dev != w->root_dev || is_mount_point(w, path)) {
        close(fd); /* a mount below the volume: not ours */
        free(path);
        return;
    } else {
        if (st.st_gid != w->gid) {
            if (fchown(fd, (uid_t)-1, w->gid) != 0)
                err = errno;
            else
                did = 1;
        }
        mode_t want = wanted_mode(st.st_mode, 1, w->read_only);
        if (!err && want != (st.st_mode & 07777)) {
            if (fchmod(fd, want) != 0)
                err = errno;
            else
                did = 1;
        }
    }
    if (err) {
        close(fd);
        fail(w, err, parent, name);
        free(path);
        return;
    }
    *dirs += 1;
    *changed += did;
    dirref *d = calloc(1, sizeof(dirref));
    if (!d) {
        close(fd);
        free(path);
        fail(w, ENOMEM, parent, name);
        return;
    }
    d->fd = fd;
    d->refs = 1;
    d->path = path;
    d->path_len = plen;
    int lerr = list_dir(d);
    if (lerr) {
        fail(w, lerr, d, NULL);
        release(w, d);
        return;
    }
    int inline_ok;
    pthread_mutex_lock(&w->mu);
    /* Inline while nobody waits for work: depth first, few fds open, no queue traffic. */
    inline_ok = depth < MAX_INLINE_DEPTH && d->count <= BATCH && w->waiting == 0 && !w->stopped;
    pthread_mutex_unlock(&w->mu);
    if (inline_ok)
        do_batch(w, d, 0, d->count, depth + 1, files, dirs, changed);
    else
        push_batches(w, d);
    release(w, d);
}

static void do_batch(walk *w, dirref *d, uint32_t start, uint32_t end, int depth,
                     long long *files, long long *dirs, long long *changed) {
    int dir_fd = d->fd;
    gid_t gid = w->gid;
    for (uint32_t i = start; i < end; i++) {
        if ((i - start) % DEADLINE_EVERY == DEADLINE_EVERY - 1) {
            if (__atomic_load_n(&w->stopped, __ATOMIC_RELAXED) || deadline_passed(w))
                return;
        }
        /* A worker waits for work: hand it the rest of this directory and go back up (the
         * caller's entries go on). Without this, an idle worker waited until this one
         * finished a whole directory walked inline. */
        if (i != start && i % SPLIT_EVERY == 0 && end - i > SPLIT_MIN && __atomic_load_n(&w->waiting, __ATOMIC_RELAXED)) {
            push_range(w, d, i, end);
            return;
        }
        const char *name = d->names + d->offs[i];
        if (d->types[i] == DT_DIR) {
            do_dir(w, d, name, depth, files, dirs, changed);
            continue;
        }
        *files += 1;
        struct stat st;
        if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno != ENOENT) /* deleted by the pod while we walk: fine */
                fail(w, errno, d, name);
            continue;
        }
        if (S_ISDIR(st.st_mode)) { /* d_type was DT_UNKNOWN, or it changed */
            *files -= 1;
            do_dir(w, d, name, depth, files, dirs, changed);
            continue;
        }
        int did = 0;
        if (st.st_gid != gid) {
            if (fchownat(dir_fd, name, (uid_t)-1, gid, AT_SYMLINK_NOFOLLOW) != 0) {
                if (errno != ENOENT)
                    fail(w, errno, d, name);
                continue;
            }
            did = 1;
        }
        if (!S_ISLNK(st.st_mode)) {
            mode_t want = wanted_mode(st.st_mode, 0, w->read_only);
            /* chown drops setuid (and setgid with g+x) of a regular file: put them back, as the
             * kubelet does by chmodding with the mode read before. */
            if (want != (st.st_mode & 07777) || (did && (st.st_mode & (S_ISUID | S_ISGID)))) {
                int err = chmod_nofollow(w, dir_fd, name, want);
                if (err) {
                    if (err != ENOENT)
                        fail(w, err, d, name);
                    continue;
                }
                did = 1;
            }
        }
        *changed += did;
    }
}

/* Queue entries [start, end) of d (holding a reference) for any worker to take. */
static void push_range(walk *w, dirref *d, uint32_t start, uint32_t end) {
    pthread_mutex_lock(&w->mu);
    if (!w->stopped) {
        if (w->stack_len == w->stack_cap) {
            size_t cap = w->stack_cap ? w->stack_cap * 2 : 64;
            item *ns = realloc(w->stack, cap * sizeof(item));
            if (!ns) {
                w->oom = 1;
                pthread_mutex_unlock(&w->mu);
                return;
            }
            w->stack = ns;
            w->stack_cap = cap;
        }
        d->refs++;
        w->stack[w->stack_len].d = d;
        w->stack[w->stack_len].start = start;
        w->stack[w->stack_len].end = end;
        w->stack_len++;
        if (w->waiting)
            pthread_cond_signal(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
}

/* Queue d's entries in batches (each holds a reference) for any worker to take. */
static void push_batches(walk *w, dirref *d) {
    pthread_mutex_lock(&w->mu);
    if (!w->stopped) {
        for (uint32_t s = 0; s < d->count; s += BATCH) {
            if (w->stack_len == w->stack_cap) {
                size_t cap = w->stack_cap ? w->stack_cap * 2 : 64;
                item *ns = realloc(w->stack, cap * sizeof(item));
                if (!ns) {
                    w->oom = 1;
                    break;
                }
                w->stack = ns;
                w->stack_cap = cap;
            }
            d->refs++;
            w->stack[w->stack_len].d = d;
            w->stack[w->stack_len].start = s;
            w->stack[w->stack_len].end = s + BATCH < d->count ? s + BATCH : d->count;
            w->stack_len++;
            if (w->waiting)
                pthread_cond_signal(&w->cv); /* one item, one waiter: no thundering herd */
        }
    }
    pthread_mutex_unlock(&w->mu);
}

static void *worker(void *arg) {
    walk *w = arg;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (!w->stack_len && w->active && !w->stopped) {
            __atomic_add_fetch(&w->waiting, 1, __ATOMIC_RELAXED);
            pthread_cond_wait(&w->cv, &w->mu);
            __atomic_sub_fetch(&w->waiting, 1, __ATOMIC_RELAXED);
        }
        if (w->stopped || !w->stack_len) {
            w->stopped = 1;
            pthread_cond_broadcast(&w->cv);
            pthread_mutex_unlock(&w->mu);
            return NULL;
        }
        item it = w->stack[--w->stack_len];
        w->active++;
        pthread_mutex_unlock(&w->mu);

        long long files = 0, dirs = 0, changed = 0;
        if (!deadline_passed(w))
            do_batch(w, it.d, it.start, it.end, 0, &files, &dirs, &changed);
        release(w, it.d);

        pthread_mutex_lock(&w->mu);
        w->files += files;
        w->dirs += dirs;
        w->changed += changed;
        w->active--;
        if (!w->active && !w->stack_len) /* the end: every waiter must see it */
            pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
    }
}

/* Everything still queued (after a deadline) holds a reference: drop them all. */
static void drain(walk *w) {
    pthread_mutex_lock(&w->mu);
    size_t n = w->stack_len;
    item *items = w->stack;
    w->stack = NULL;
    w->stack_len = w->stack_cap = 0;
    pthread_mutex_unlock(&w->mu);
    for (size_t i = 0; i < n; i++)
        release(w, items[i].d);
    free(items);
}

static void run(walk *w, int root_fd, const char *root_path) {
    /* A fresh open file description: the listing's offset is not the caller's fd's. */
    int fd = openat(root_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    dirref *root = calloc(1, sizeof(dirref));
    if (fd < 0 || !root || !(root->path = strdup(root_path))) {
        int err = fd < 0 ? errno : ENOMEM;
        dirref tmp = {.path = (char *)root_path, .path_len = strlen(root_path)};
        fail(w, err, &tmp, NULL);
        if (fd >= 0)
            close(fd);
        free(root);
        return;
    }
    root->fd = fd;
    root->refs = 1;
    root->path_len = strlen(root_path);
    int lerr = list_dir(root);
    if (lerr)
        fail(w, lerr, root, NULL);
    else
        push_batches(w, root);
    release(w, root);

    int n = w->workers > 1 ? w->workers - 1 : 0;
    pthread_t *threads = n ? calloc((size_t)n, sizeof(pthread_t)) : NULL;
    int started = 0;
    for (int i = 0; threads && i < n; i++) {
        if (pthread_create(&threads[i], NULL, worker, w) != 0)
            break; /* fewer threads, same walk */
        started++;
    }
    worker(w);
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    free(threads);
    drain(w);
}

PyDoc_STRVAR(walk_doc,
"walk(root_fd, root_path, root_dev, gid, read_only, workers, deadline, mount_points, max_errors,\n"
"     fchmodat2_state) -> (files, dirs, changed, failed, timed_out, errors, fchmodat2_state)\n\n"
"Walk the tree below the open directory root_fd (not the root itself) with ownership.py's rules.\n"
"root_path and mount_points are bytes; deadline is a time.monotonic() value or None;\n"
"errors is a list of (errno, path bytes); fchmodat2_state is -1 (unknown), 0 or 1.");

static PyObject *py_walk(PyObject *self, PyObject *args) {
    (void)self;
    int root_fd, read_only, workers, max_errors, chmod2;
    const char *root_path;
    Py_ssize_t root_path_len;
    unsigned long long root_dev;
    unsigned long gid;
    PyObject *deadline_obj, *mps;
    if (!PyArg_ParseTuple(args, "iy#KkpiOOii", &root_fd, &root_path, &root_path_len, &root_dev, &gid,
                          &read_only, &workers, &deadline_obj, &mps, &max_errors, &chmod2))
        return NULL;
    if (gid >= 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_ValueError, "gid out of range");
        return NULL;
    }
    walk w;
    memset(&w, 0, sizeof(w));
    w.root_dev = (dev_t)root_dev;
    w.gid = (gid_t)gid;
    w.read_only = read_only;
    w.workers = workers < 1 ? 1 : (workers > 64 ? 64 : workers);
    w.max_errors = max_errors < 0 ? 0 : max_errors;
    w.chmod2 = chmod2 < 0 ? -1 : (chmod2 ? 1 : 0);
    if (deadline_obj != Py_None) {
        w.deadline = PyFloat_AsDouble(deadline_obj);
        if (w.deadline == -1.0 && PyErr_Occurred())
            return NULL;
        w.has_deadline = 1;
    }
    PyObject *seq = PySequence_Fast(mps, "mount_points must be a sequence of bytes");
    if (!seq)
        return NULL;
    w.n_mount_points = PySequence_Fast_GET_SIZE(seq);
    w.mount_points = calloc((size_t)w.n_mount_points + 1, sizeof(char *));
    w.errors = calloc((size_t)w.max_errors + 1, sizeof(failure));
    if (!w.mount_points || !w.errors) {
        Py_DECREF(seq);
        free(w.mount_points);
        free(w.errors);
        return PyErr_NoMemory();
    }
    PyObject *result = NULL;
    Py_ssize_t copied = 0;
    for (; copied < w.n_mount_points; copied++) {
        PyObject *o = PySequence_Fast_GET_ITEM(seq, copied);
        if (!PyBytes_Check(o)) {
            PyErr_SetString(PyExc_TypeError, "mount_points must be a sequence of bytes");
            goto out;
        }
        if (!(w.mount_points[copied] = strdup(PyBytes_AS_STRING(o)))) {
            PyErr_NoMemory();
            goto out;
        }
    }
    qsort(w.mount_points, (size_t)w.n_mount_points, sizeof(char *), cmp_str);
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);

    Py_BEGIN_ALLOW_THREADS
    run(&w, root_fd, root_path);
    Py_END_ALLOW_THREADS

    pthread_mutex_destroy(&w.mu);
    pthread_cond_destroy(&w.cv);
    if (w.oom) {
        /* the queue could not grow: the walk is incomplete, say so as a failure */
        w.failed++;
    }
    PyObject *errs = PyList_New(0);
    if (!errs)
        goto out;
    for (int i = 0; i < w.n_errors; i++) {
        PyObject *t = Py_BuildValue("(iy)", w.errors[i].err, w.errors[i].path);
        if (!t || PyList_Append(errs, t) != 0) {
            Py_XDECREF(t);
            Py_DECREF(errs);
            goto out;
        }
        Py_DECREF(t);
    }
    result = Py_BuildValue("(LLLLONi)", w.files, w.dirs, w.changed, w.failed,
                           w.timed_out ? Py_True : Py_False, errs, w.chmod2);
out:
    Py_DECREF(seq);
    for (Py_ssize_t i = 0; i < copied; i++)
        free(w.mount_points[i]);
    free(w.mount_points);
    for (int i = 0; i < w.n_errors; i++)
        free(w.errors[i].path);
    free(w.errors);
    return result;
}

static PyMethodDef methods[] = {
    {"walk", py_walk, METH_VARARGS, walk_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "mount_utils._ownership",
    "Native fsGroup walk for mount_utils.ownership (same rules, no GIL, pthreads).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__ownership(void) {
    return PyModule_Create(&module);
}
