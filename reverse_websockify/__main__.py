from .cli.server import main

main()
