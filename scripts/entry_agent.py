"""PyInstaller entry point of the single-file `reverse_websockify_agent_service_side` (see specs/)."""

from reverse_websockify.cli.agent import main

if __name__ == "__main__":
    main()
