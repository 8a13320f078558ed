from ldp.cli.main import main

main()
