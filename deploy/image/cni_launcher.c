/*
 * The flannel CNI plugin's launcher for nodes without a usable Python (Flatcar, Talos, Bottlerocket, COS).
 *
 * Built statically (gcc -static -Os), so it needs nothing from the node's userland: no shell, no libc, no
 * Python. install-cni-plugin copies it to <bin dir>/flannel and writes the installed version's id into
 * PACKAGE_ID below (the bytes after the marker), so one rename switches launcher and version together. It
 * then runs the interpreter that came with the plugin, through the dynamic loader that came with it:
 *
 *   <bin dir>/.flannel/<id>/runtime/lib/ld.so --library-path <...>/runtime/lib
 *       <...>/runtime/bin/python3 -I -S <bin dir>/.flannel/<id>/run.pyc ARGS...
 *
 * run.pyc is run.py as the installer compiled it for this interpreter's byte code (same minor version): a
 * script given as source is compiled on every call, and that was 0.6-0.9 ms of each (docs/performance.md,
 * session 5).
 *
 * Calling the loader by path is what makes the tree relocatable: the interpreter's own PT_INTERP names the
 * build machine's loader, which a node may lack. When the tree is missing, the runtime gets a CNI error object
 * on stdout (code 999; 50 for STATUS, as the spec asks) instead of a bare exit status.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MARKER "FLANNEL-PACKAGE-ID:"
/* The marker, then the id, NUL-terminated; the installer refuses an id that does not fit. */
static volatile char PACKAGE_ID[160] = MARKER;

static void cni_error(const char *what, const char *path) {
    const char *command = getenv("CNI_COMMAND");
    int code = (command != NULL && strcmp(command, "STATUS") == 0) ? 50 : 999;
    fprintf(stderr, "flannel: %s: %s: %s\n", what, path, strerror(errno));
    /* Paths come from readlink and our own id: no quote or backslash can appear in them. */
    printf("{\"cniVersion\":\"1.1.0\",\"code\":%d,\"msg\":\"%s\",\"details\":\"%s: %s\"}\n", code, what, path,
           strerror(errno));
    fflush(stdout);
    exit(1);
}

int main(int argc, char **argv) {
    char self[PATH_MAX], base[PATH_MAX], loader[PATH_MAX], libdir[PATH_MAX], python[PATH_MAX], run[PATH_MAX];
    char id[sizeof PACKAGE_ID];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) cni_error("the flannel CNI plugin cannot find its own path", "/proc/self/exe");
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (slash == NULL) cni_error("the flannel CNI plugin cannot find its own directory", self);
    *slash = '\0';
    for (size_t i = 0; i < sizeof id; i++) id[i] = PACKAGE_ID[i];
    id[sizeof id - 1] = '\0';
    const char *pkg = id + strlen(MARKER);
    if (*pkg == '\0') {
        errno = ENOENT;
        cni_error("the flannel CNI plugin launcher was not set up by install-cni-plugin", self);
    }
    if (snprintf(base, sizeof base, "%s/.flannel/%s", self, pkg) >= (int)sizeof base ||
        snprintf(loader, sizeof loader, "%s/runtime/lib/ld.so", base) >= (int)sizeof loader ||
        snprintf(libdir, sizeof libdir, "%s/runtime/lib", base) >= (int)sizeof libdir ||
        snprintf(python, sizeof python, "%s/runtime/bin/python3", base) >= (int)sizeof python ||
        snprintf(run, sizeof run, "%s/run.pyc", base) >= (int)sizeof run) {
        errno = ENAMETOOLONG;
        cni_error("the flannel CNI plugin's path is too long", self);
    }
    char **args = calloc((size_t)argc + 8, sizeof *args);
    if (args == NULL) cni_error("the flannel CNI plugin is out of memory", self);
    int k = 0;
    args[k++] = loader;
    args[k++] = "--library-path";
    args[k++] = libdir;
    args[k++] = python;
    args[k++] = "-I";
    args[k++] = "-S";
    args[k++] = run;
    for (int i = 1; i < argc; i++) args[k++] = argv[i];
    args[k] = NULL;
    execv(loader, args);
    cni_error("the flannel CNI plugin's bundled Python is missing; run install-cni-plugin again", loader);
    return 1;
}
