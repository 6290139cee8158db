from rackfire.entry import main

main()
