from .operator.cli import main

main()
