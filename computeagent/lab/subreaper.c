/*
 * subreaper: run a command as a child and reap every process that is orphaned below it.
 *
 * Why: PID 1 on the lab machines reaps zombies only every ~1.4 s, and libvirt waits for a
 * QEMU to die by polling kill(pid, 0), which succeeds on a zombie.  With
 * PR_SET_CHILD_SUBREAPER the (double-forked) QEMUs of a libvirtd started below us are
 * re-parented to us instead of PID 1, and we reap them at once.
 *
 * Usage: subreaper [-k] [--] command [args...]
 *
 *   Without -k: exit with the command's status when it exits (signals it died of are
 *   reported as 128 + signo).
 *   With -k ("keep"): stay alive after the command exited, keep reaping orphans, and
 *   start the command again on SIGUSR1.  This is the init of a lab host: its PID holds
 *   the host's mount and UTS namespaces, and libvirtd can be restarted below it.
 *
 *   SIGTERM / SIGINT / SIGHUP are forwarded to the command; on SIGTERM or SIGINT the
 *   subreaper exits as soon as the command is gone (also with -k).
 *
 * Compiled by computeagent.lab at `up` time: gcc -O2 -o subreaper subreaper.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static pid_t start_child(char **argv, const sigset_t *origmask)
{
    pid_t pid = fork();
    if (pid < 0) {
        perror("subreaper: fork");
        return -1;
    }
    if (pid == 0) {
        /* Child: default dispositions and the original signal mask, then exec. */
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        signal(SIGUSR1, SIG_DFL);
        signal(SIGCHLD, SIG_DFL);
        sigprocmask(SIG_SETMASK, origmask, NULL);
        execvp(argv[0], argv);
        fprintf(stderr, "subreaper: exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    fprintf(stderr, "subreaper[%d]: started %s as pid %d\n", (int)getpid(), argv[0], (int)pid);
    return pid;
}

int main(int argc, char **argv)
{
    int keep = 0;
    int i = 1;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "-k") == 0)
            keep = 1;
        else if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else
            break;
    }
    if (i >= argc) {
        fprintf(stderr, "usage: subreaper [-k] [--] command [args...]\n");
        return 2;
    }
    char **cmd = &argv[i];

    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
        perror("subreaper: prctl(PR_SET_CHILD_SUBREAPER)");
        return 1;
    }

    sigset_t mask, origmask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigaddset(&mask, SIGUSR1);
    sigprocmask(SIG_BLOCK, &mask, &origmask);

    pid_t child = start_child(cmd, &origmask);
    if (child < 0)
        return 1;
    int terminating = 0;
    int status_code = 0;

    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&mask, &si);
        if (sig < 0) {
            if (errno == EINTR)
                continue;
            perror("subreaper: sigwaitinfo");
            return 1;
        }
        /* Reap first, whatever the signal: Linux delivers pending standard signals
         * lowest number first, so a SIGUSR1 (respawn) sent right after the command
         * died is seen before the SIGCHLD that tells us so. */
        for (;;) {
            int st;
            pid_t p = waitpid(-1, &st, WNOHANG);
            if (p <= 0)
                break;
            if (p == child) {
                child = -1;
                if (WIFEXITED(st))
                    status_code = WEXITSTATUS(st);
                else if (WIFSIGNALED(st))
                    status_code = 128 + WTERMSIG(st);
                fprintf(stderr, "subreaper[%d]: %s (pid %d) ended, status %d\n",
                        (int)getpid(), cmd[0], (int)p, status_code);
            }
        }
        if (child < 0 && (!keep || terminating))
            return status_code;
        switch (sig) {
        case SIGCHLD:
            break;
        case SIGUSR1:
            if (child < 0 && !terminating)
                child = start_child(cmd, &origmask);
            break;
        case SIGTERM:
        case SIGINT:
            terminating = 1;
            if (child < 0)
                return status_code;
            /* fall through */
        case SIGHUP:
            if (child > 0)
                kill(child, sig);
            break;
        }
    }
}
