/*
 * The pod sandbox process (the kubelet's "pause" image): it holds the pod's namespaces, reaps
 * orphaned children as pid 1, and exits on SIGTERM or SIGINT. No registry can be reached on the
 * machines that build tierplace's images, so scripts/build-images.sh compiles this (static)
 * into docker.io/tierplace/pause, the sandbox image of the real-node test cluster.
 */
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
  (void)sig;
  _exit(0);
}

static void on_child(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction stop = {.sa_handler = on_stop};
  struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
  if (getpid() != 1) {
    fprintf(stderr, "pause: not pid 1, orphans will not be reaped here\n");
  }
  sigaction(SIGINT, &stop, NULL);
  sigaction(SIGTERM, &stop, NULL);
  sigaction(SIGCHLD, &child, NULL);
  for (;;) {
    pause();
  }
}
