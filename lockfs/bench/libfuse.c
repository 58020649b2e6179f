/*
 * The floor of lockfs-bench: a minimal FUSE server in C on libfuse3's low-level API.
 *
 * It answers the requests of a lock cycle with the same mount options and cache timeouts as
 * lockfs (and as lockfs.bench.minimal) and nothing else: no reclaim (entries live until
 * unmount), no lookup counting, one thread (fuse_session_loop), like lockfs's one worker task.
 * What it costs per cycle is what the kernel and libfuse cost; what pyfuse3 + trio add on top
 * shows in the minimal Python server, and what lockfs adds in lockfs.
 *
 * Requests are counted by type in a small file the bench maps (COUNTS_PATH), so the bench
 * reads them without asking the server. lockfs-bench compiles this file itself when gcc and
 * libfuse3's headers are there:
 *
 *   gcc -O2 -o bench-libfuse libfuse.c $(pkg-config --cflags --libs fuse3)
 *   bench-libfuse MOUNTPOINT DIR_ENTRY_TIMEOUT COUNTS_PATH
 *
 * SIGTERM or SIGINT ends the loop and unmounts.
 */
#define FUSE_USE_VERSION 34
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CACHE_TIMEOUT 3600.0
#define BLOCK_SIZE 4096
#define DIRENT_SIZE 20

/* Request counters, in the order lockfs.bench.reference.LIBFUSE_COUNTERS names them. */
enum { C_LOOKUP, C_FORGET, C_GETATTR, C_SETATTR, C_MKDIR, C_CREATE, C_OPEN, C_FLUSH,
       C_RELEASE, C_RENAME, C_UNLINK, C_RMDIR, C_OTHER, C_COUNT };
static volatile uint64_t *counts;

struct node {
	mode_t mode;
	uid_t uid;
	gid_t gid;
	nlink_t nlink;
	uint64_t entries; /* directories: names in it */
	struct timespec atime, mtime, ctime;
};

/* Nodes by inode number (1 is the root); inode numbers are never reused. */
static struct node *nodes;
static uint64_t nodes_used, nodes_cap;

/* Directory entries: one open-addressing table keyed by (parent inode, name). */
struct entry {
	uint64_t parent; /* 0: free slot */
	uint64_t ino;    /* 0 with parent != 0: removed (tombstone) */
	char *name;
};
static struct entry *table;
static uint64_t table_cap, table_filled;
static double dir_entry_timeout;

static uint64_t hash(uint64_t parent, const char *name)
{
	uint64_t h = 1469598103934665603ULL ^ parent;
	for (; *name; name++)
		h = (h ^ (unsigned char)*name) * 1099511628211ULL;
	return h;
}

static struct entry *slot(uint64_t parent, const char *name, int for_insert)
{
	uint64_t i = hash(parent, name) & (table_cap - 1);
	struct entry *free_slot = NULL;
	for (;; i = (i + 1) & (table_cap - 1)) {
		struct entry *e = &table[i];
		if (e->parent == 0)
			return for_insert && free_slot ? free_slot : e;
		if (e->ino == 0) {
			if (!free_slot)
				free_slot = e;
		} else if (e->parent == parent && strcmp(e->name, name) == 0) {
			return e;
		}
	}
}

static uint64_t find(uint64_t parent, const char *name)
{
	struct entry *e = slot(parent, name, 0);
	return e->parent ? e->ino : 0;
}

static void insert(uint64_t parent, const char *name, uint64_t ino);

static void grow(void)
{
	struct entry *old = table;
	uint64_t old_cap = table_cap;
	table_cap = old_cap ? old_cap * 2 : 1024;
	table = calloc(table_cap, sizeof(*table));
	if (!table)
		abort();
	table_filled = 0;
	for (uint64_t i = 0; i < old_cap; i++) {
		if (old[i].parent && old[i].ino)
			insert(old[i].parent, old[i].name, old[i].ino);
		else
			free(old[i].name);
	}
	free(old);
}

static void insert(uint64_t parent, const char *name, uint64_t ino)
{
	if ((table_filled + 1) * 2 > table_cap)
		grow();
	struct entry *e = slot(parent, name, 1);
	if (e->parent == 0)
		table_filled++;
	else
		free(e->name);
	e->parent = parent;
	e->ino = ino;
	e->name = strdup(name);
}

static void remove_entry(uint64_t parent, const char *name)
{
	struct entry *e = slot(parent, name, 0);
	if (e->parent)
		e->ino = 0; /* tombstone; the name is freed on reuse or growth */
}

static uint64_t new_node(mode_t mode, uid_t uid, gid_t gid)
{
	if (nodes_used == nodes_cap) {
		nodes_cap = nodes_cap ? nodes_cap * 2 : 1024;
		nodes = realloc(nodes, nodes_cap * sizeof(*nodes));
		if (!nodes)
			abort();
	}
	uint64_t ino = nodes_used++;
	struct node *n = &nodes[ino];
	memset(n, 0, sizeof(*n));
	n->mode = mode;
	n->uid = uid;
	n->gid = gid;
	n->nlink = S_ISDIR(mode) ? 2 : 1;
	clock_gettime(CLOCK_REALTIME, &n->mtime);
	n->atime = n->ctime = n->mtime;
	return ino;
}

static void fill_stat(uint64_t ino, struct stat *st)
{
	struct node *n = &nodes[ino];
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = n->mode;
	st->st_nlink = n->nlink;
	st->st_uid = n->uid;
	st->st_gid = n->gid;
	st->st_blksize = BLOCK_SIZE;
	st->st_size = S_ISDIR(n->mode) ? DIRENT_SIZE * (n->entries + 2) : 0;
	st->st_atim = n->atime;
	st->st_mtim = n->mtime;
	st->st_ctim = n->ctime;
}

static void reply_entry(fuse_req_t req, uint64_t ino)
{
	struct fuse_entry_param e;
	memset(&e, 0, sizeof(e));
	e.ino = ino;
	e.attr_timeout = CACHE_TIMEOUT;
	e.entry_timeout = S_ISDIR(nodes[ino].mode) ? dir_entry_timeout : CACHE_TIMEOUT;
	fill_stat(ino, &e.attr);
	fuse_reply_entry(req, &e);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO; /* as pyfuse3 does */
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	counts[C_LOOKUP]++;
	uint64_t ino = find(parent, name);
	if (ino)
		reply_entry(req, ino);
	else
		fuse_reply_err(req, ENOENT);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	(void)ino;
	(void)nlookup;
	counts[C_FORGET]++;
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	(void)count;
	(void)forgets;
	counts[C_FORGET]++;
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	counts[C_GETATTR]++;
	struct stat st;
	if (ino >= nodes_used) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	fill_stat(ino, &st);
	fuse_reply_attr(req, &st, CACHE_TIMEOUT);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	(void)fi;
	counts[C_SETATTR]++;
	struct node *n = &nodes[ino];
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	if (to_set & FUSE_SET_ATTR_MODE)
		n->mode = (n->mode & S_IFMT) | (attr->st_mode & 07777);
	if (to_set & FUSE_SET_ATTR_UID)
		n->uid = attr->st_uid;
	if (to_set & FUSE_SET_ATTR_GID)
		n->gid = attr->st_gid;
	if (to_set & FUSE_SET_ATTR_ATIME)
		n->atime = (to_set & FUSE_SET_ATTR_ATIME_NOW) ? now : attr->st_atim;
	if (to_set & FUSE_SET_ATTR_MTIME)
		n->mtime = (to_set & FUSE_SET_ATTR_MTIME_NOW) ? now : attr->st_mtim;
	n->ctime = now;
	struct stat st;
	fill_stat(ino, &st);
	fuse_reply_attr(req, &st, CACHE_TIMEOUT);
}

static uint64_t add(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	if (find(parent, name)) {
		fuse_reply_err(req, EEXIST);
		return 0;
	}
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	uint64_t ino = new_node(mode, ctx->uid, ctx->gid);
	insert(parent, name, ino);
	struct node *dir = &nodes[parent];
	dir->entries++;
	if (S_ISDIR(mode))
		dir->nlink++;
	clock_gettime(CLOCK_REALTIME, &dir->mtime);
	dir->ctime = dir->mtime;
	return ino;
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	counts[C_MKDIR]++;
	uint64_t ino = add(req, parent, name, S_IFDIR | (mode & 07777));
	if (ino)
		reply_entry(req, ino);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	counts[C_CREATE]++;
	uint64_t ino = add(req, parent, name, S_IFREG | (mode & 07777));
	if (!ino)
		return;
	struct fuse_entry_param e;
	memset(&e, 0, sizeof(e));
	e.ino = ino;
	e.attr_timeout = e.entry_timeout = CACHE_TIMEOUT;
	fill_stat(ino, &e.attr);
	fi->fh = ino;
	fi->keep_cache = 1;
	fuse_reply_create(req, &e, fi);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	counts[C_OPEN]++;
	fi->fh = ino;
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	counts[C_FLUSH]++;
	fuse_reply_err(req, ENOSYS);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	counts[C_RELEASE]++;
	fuse_reply_err(req, 0);
}

static void unlinked(fuse_ino_t parent, uint64_t ino)
{
	struct node *dir = &nodes[parent];
	dir->entries--;
	if (S_ISDIR(nodes[ino].mode))
		dir->nlink--;
	nodes[ino].nlink = 0;
	clock_gettime(CLOCK_REALTIME, &dir->mtime);
	dir->ctime = nodes[ino].ctime = dir->mtime;
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	counts[C_RENAME]++;
	uint64_t ino = find(parent, name);
	uint64_t target = find(newparent, newname);
	if (!ino || (flags & ~RENAME_NOREPLACE)) {
		fuse_reply_err(req, ino ? EINVAL : ENOENT);
		return;
	}
	if (target && (flags & RENAME_NOREPLACE)) {
		fuse_reply_err(req, EEXIST);
		return;
	}
	if (target) {
		remove_entry(newparent, newname);
		unlinked(newparent, target);
	}
	remove_entry(parent, name);
	nodes[parent].entries--;
	nodes[newparent].entries++;
	if (S_ISDIR(nodes[ino].mode)) {
		nodes[parent].nlink--;
		nodes[newparent].nlink++;
	}
	insert(newparent, newname, ino);
	clock_gettime(CLOCK_REALTIME, &nodes[ino].ctime);
	nodes[parent].mtime = nodes[parent].ctime = nodes[ino].ctime;
	nodes[newparent].mtime = nodes[newparent].ctime = nodes[ino].ctime;
	fuse_reply_err(req, 0);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	counts[C_UNLINK]++;
	uint64_t ino = find(parent, name);
	if (!ino) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	remove_entry(parent, name);
	unlinked(parent, ino);
	fuse_reply_err(req, 0);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	counts[C_RMDIR]++;
	uint64_t ino = find(parent, name);
	if (!ino || !S_ISDIR(nodes[ino].mode) || nodes[ino].entries) {
		fuse_reply_err(req, !ino ? ENOENT : !S_ISDIR(nodes[ino].mode) ? ENOTDIR : ENOTEMPTY);
		return;
	}
	remove_entry(parent, name);
	unlinked(parent, ino);
	fuse_reply_err(req, 0);
}

static const struct fuse_lowlevel_ops ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.mkdir = op_mkdir,
	.create = op_create,
	.open = op_open,
	.flush = op_flush,
	.release = op_release,
	.rename = op_rename,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
};

int main(int argc, char *argv[])
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s MOUNTPOINT DIR_ENTRY_TIMEOUT COUNTS_PATH\n", argv[0]);
		return 2;
	}
	dir_entry_timeout = atof(argv[2]);
	int fd = open(argv[3], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || ftruncate(fd, C_COUNT * sizeof(uint64_t)) != 0) {
		perror(argv[3]);
		return 1;
	}
	counts = mmap(NULL, C_COUNT * sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (counts == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	close(fd);
	new_node(0, 0, 0);                   /* inode 0 is never used */
	new_node(S_IFDIR | 0755, 0, 0);      /* the root, inode 1 */
	grow();

	char *args_argv[] = {argv[0], "-o", "default_permissions,allow_other,fsname=lockfs-bench,"
				      "subtype=lockfs-libfuse"};
	struct fuse_args args = FUSE_ARGS_INIT(3, args_argv);
	struct fuse_session *se = fuse_session_new(&args, &ops, sizeof(ops), NULL);
	if (!se)
		return 1;
	int ret = 1;
	if (fuse_set_signal_handlers(se) == 0) {
		if (fuse_session_mount(se, argv[1]) == 0) {
			ret = fuse_session_loop(se) != 0;
			fuse_session_unmount(se);
		}
		fuse_remove_signal_handlers(se);
	}
	fuse_session_destroy(se);
	return ret;
}
