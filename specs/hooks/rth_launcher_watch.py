# PyInstaller run-time hook (POSIX one-file builds): stop when the launcher is gone.
#
# A one-file executable is two processes: the launcher (the PID you started, which unpacked the
# archive into $TMPDIR/_MEIxxxxxx) and its child, the Python program. SIGTERM/SIGINT sent to the
# launcher are forwarded to the child, but SIGKILL cannot be: without this hook a `kill -9` of
# the launcher would leave the real server or agent running as an orphan, holding its ports or
# its tunnel. Here the child watches its launcher (a pidfd on Linux >= 5.3, else a 1 s getppid()
# poll) and, when it dies, sends itself SIGTERM: the program shuts down cleanly (tunnels closed
# with 1001, ports released). The launcher's unpacked folder is then left behind: clean $TMPDIR
# (the systemd units' ExecStartPre, a tmpfs in compose).
import os


def _pyi_watch_launcher():
    import signal
    import threading

    launcher = os.getppid()
    if launcher <= 1:
        return

    def wait_for_launcher():
        # Never take a process-directed signal for the main thread (it would only be handled
        # later, when the main thread next runs Python code).
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            fd = os.pidfd_open(launcher)
        except (AttributeError, OSError):
            fd = None
        if fd is not None:
            import select

            while True:
                try:
                    if select.select([fd], [], [])[0]:  # readable once the launcher has exited
                        break
                except InterruptedError:
                    continue
        else:
            import time

            while os.getppid() == launcher:
                time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait_for_launcher, name="pyi-launcher-watch", daemon=True).start()


if os.name == "posix":
    _pyi_watch_launcher()
del _pyi_watch_launcher
