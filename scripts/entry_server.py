"""PyInstaller entry point of the single-file `reverse_websockify_server` (see specs/)."""

from reverse_websockify.cli.server import main

if __name__ == "__main__":
    main()
