from rackfire.cli.main import main

main()
